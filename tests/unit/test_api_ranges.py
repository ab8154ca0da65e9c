"""The library APIs a GPU run depends on, called as tunelab calls them, and pyproject's ranges tied to the releases
CI runs (issue 64: "the declared ranges mean tested"; the audit is docs/install.md's table).

`make test` runs this file on constraints.txt's torch and, through scripts/torch-ends, on the two ends of
pyproject's torch range. None of these APIs changed in a way tunelab's call sees between them (read in each
release's source: docs/install.md), so tunelab calls each one way; PyTorch's `varlen_attn`, which did change, is
adapted to each release's signature in models/varlen.py (tests/unit/test_varlen_releases.py)."""

from __future__ import annotations

import inspect
import re
import tomllib
import traceback
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
ML_LIBRARIES = ("transformers", "peft", "trl", "accelerate")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement(name: str, extra: str | None = None) -> Requirement:
    project = _pyproject()["project"]
    lines = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return next(r for r in map(Requirement, lines) if r.name == name)


def _bound(req: Requirement, operator: str) -> Version:
    found = [Version(s.version) for s in req.specifier if s.operator == operator]
    assert len(found) == 1, f"pyproject.toml: {req} needs exactly one {operator} bound"
    return found[0]


def _ci_pins() -> dict[str, Version]:
    """constraints.txt: the exact releases `make test` installs (an independent source from pyproject.toml)."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s#]+)", line.strip())
        if m:
            pins[m.group(1).lower()] = Version(m.group(2))
    return pins


def _next_minor(v: Version) -> Version:
    return Version(f"{v.major}.{v.minor + 1}")


@pytest.mark.parametrize("name", ML_LIBRARIES)
def test_each_hugging_face_range_is_the_minor_release_ci_runs(name):
    """From the release CI installs (no older one is run anywhere) to below the next minor (run nowhere)."""
    req, pin = _requirement(name), _ci_pins()[name]
    assert (_bound(req, ">="), _bound(req, "<")) == (pin, _next_minor(pin))


def test_both_ends_of_the_torch_range_are_tested_by_make_test():
    """The whole suite runs on constraints.txt's torch, inside the range; scripts/torch-ends runs the GPU-relevant
    tests on the floor and on the newest release below the top, a minor release (X.Y): `make test` calls it for
    both (the floor's own reason: tests/unit/test_torch_range.py)."""
    req = _requirement("torch")
    floor, top = _bound(req, ">="), _bound(req, "<")
    assert floor <= _ci_pins()["torch"] < top
    assert top == Version(f"{top.major}.{top.minor}") and top.minor > 0
    make_test = (ROOT / "Makefile").read_text().split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "scripts/torch-ends floor" in make_test and "scripts/torch-ends top" in make_test, make_test


def test_bitsandbytes_floor_is_the_one_transformers_loads_4bit_with():
    """Below it transformers refuses a 4-bit load; an upper bound, as for every library tunelab calls."""
    from transformers.utils.import_utils import BITSANDBYTES_MIN_VERSION

    req = _requirement("bitsandbytes", extra="qlora")
    assert _bound(req, ">=") == Version(BITSANDBYTES_MIN_VERSION)
    assert _bound(req, "<") > Version(BITSANDBYTES_MIN_VERSION)


def _keyword_only(fn, *names: str) -> bool:
    params = inspect.signature(fn).parameters
    return all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in names)


def _positional(fn) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]


def test_fsdp2_is_public_and_shards_over_a_mesh_given_by_keyword():
    """train/sharding.py: `fully_shard(unit, mesh=mesh)` on `init_device_mesh(device, (n,))`."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    assert _keyword_only(fully_shard, "mesh")
    # on CPU its all-gather records an event on torch.cpu's stream: 2.6's has no record_event
    assert callable(torch.cpu.Stream.record_event)
    assert _positional(init_device_mesh)[:2] == ["device_type", "mesh_shape"]
    assert isinstance(FSDPModule, type)


def test_distributed_checkpoint_takes_the_options_and_arguments_tunelab_passes():
    """train/sharding.py gathers whole state dicts (full, offloaded to CPU, frozen base weights left out) and
    puts one back into the shards."""
    from torch.distributed.checkpoint import state_dict as dcp

    options = dcp.StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    assert (options.full_state_dict, options.cpu_offload, options.ignore_frozen_params) == (True, True, True)
    assert _positional(dcp.get_optimizer_state_dict) == ["model", "optimizers"]
    assert _positional(dcp.set_optimizer_state_dict) == ["model", "optimizers", "optim_state_dict"]
    assert _positional(dcp.get_model_state_dict) == ["model"]
    for fn in (dcp.get_optimizer_state_dict, dcp.set_optimizer_state_dict, dcp.get_model_state_dict):
        assert _keyword_only(fn, "options")


def test_autocast_state_is_read_per_device_type():
    """The simulator's SDPA and the varlen path cast as autocast would: they ask for the CPU's state by name."""
    assert not torch.is_autocast_enabled("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_math_attention_takes_scale_and_grouped_query_heads_by_keyword():
    """The simulator's math SDPA (ATen's `_scaled_dot_product_attention_math`, scale= and enable_gqa=) against
    attention worked by hand: 4 query heads share 2 key/value heads, query head h reading key/value head h // 2."""
    from tunelab.estimate.simulator.attention import _math_sdpa

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 3, 2, generator=g) for h in (4, 2, 2))
    out = _math_sdpa(q, k, v, scale=0.5, enable_gqa=True)
    for h in range(4):
        scores = (q[0, h] @ k[0, h // 2].T) * 0.5
        expected = torch.softmax(scores, dim=-1) @ v[0, h // 2]
        torch.testing.assert_close(out[0, h], expected)


def test_fake_tensor_internals_the_simulator_relies_on():
    """estimate/simulator: real values computed inside a FakeTensorMode, data-dependent shapes refused, random
    ops recognised by their tag, (args, kwargs) flattened and rebuilt."""
    from torch._subclasses.fake_tensor import (
        DynamicOutputShapeException,
        FakeTensor,
        FakeTensorMode,
        unset_fake_temporarily,
    )
    from torch.utils._python_dispatch import _disable_current_modes
    from torch.utils._pytree import tree_flatten, tree_leaves, tree_unflatten

    with FakeTensorMode():
        fake = torch.ones(3)
        assert isinstance(fake, FakeTensor)
        with pytest.raises(DynamicOutputShapeException):
            torch.nonzero(fake)
        for escape in (unset_fake_temporarily, _disable_current_modes):
            with escape():
                real = torch.arange(4)
                assert not isinstance(real, FakeTensor) and int(real.sum()) == 6
    assert torch.Tag.nondeterministic_seeded in torch.ops.aten.randn.default.tags
    assert torch.Tag.nondeterministic_seeded not in torch.ops.aten.add.Tensor.tags
    flat, spec = tree_flatten(((1, "a"), {"k": 2}))
    assert flat == [1, "a", 2] and tree_unflatten(flat, spec) == ((1, "a"), {"k": 2})
    assert tree_leaves([1, (2, 3)]) == [1, 2, 3]


def test_gpu_out_of_memory_is_recognised_by_the_failure_classifier():
    """A job's traceback of torch's own OutOfMemoryError (what faults.py raises, what a GPU raises) reads as OOM."""
    from tunelab.execute.failures import GPU_OOM

    assert torch.OutOfMemoryError is torch.cuda.OutOfMemoryError
    try:
        raise torch.OutOfMemoryError("CUDA error: tried to allocate 2.00 GiB")
    except torch.OutOfMemoryError as exc:
        text = "".join(traceback.format_exception(exc))
    assert GPU_OOM.search(text)


def test_cuda_helpers_tunelab_reads_on_a_gpu_are_there():
    """Names only (no GPU here): device_memory.py maps cuda:0 to NVML's index through torch's private helper
    (a missing one leaves the NVML figures empty rather than failing: still, the range promises it)."""
    assert _positional(torch.cuda._get_nvml_device_index) == ["device"]
    assert _positional(torch.cuda.mem_get_info) == ["device"]


def test_accelerate_prepares_a_sharded_model_as_tunelab_asks():
    """train/sharding.py replaces `prepare_model` with one passing device_placement= and evaluation_mode=."""
    from accelerate import Accelerator

    assert _positional(Accelerator.prepare_model) == ["self", "model", "device_placement", "evaluation_mode"]


def test_activation_checkpointing_is_asked_for_by_transformers_5_names():
    """The job's SFTConfig arguments and the simulator's and k-bit preparation's call: the current names, which the
    range guarantees (the old gradient_checkpointing ones are deprecated aliases, warning on every use)."""
    from transformers import PreTrainedModel
    from trl import SFTConfig

    from tunelab.train.trainer import _checkpointing_args

    assert set(_checkpointing_args(True)) <= set(SFTConfig.__dataclass_fields__)
    assert "activation_checkpointing_kwargs" in inspect.signature(PreTrainedModel.activation_checkpointing_enable).parameters
