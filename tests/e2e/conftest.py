"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

# The one trained sweep the e2e files that read a finished experiment share (base_spec of tests/conftest.py
# with these overrides): two ranks, 4 epochs of the 320-row capitalization set (enough for the fine-tuned runs to
# clearly beat their base-model control), every epoch evaluated, plus the control tiny_base.
SWEEP = {"factors": {"lora_rank": [4, 16]},
         "training": {"epochs": 4, "validation_every_steps": 40, "logging_steps": 10},
         "eval": {"max_tokens": 8, "epochs": "all"}}


TRAINED = {"finished_sweep", "trained_adapter"}  # session fixtures that train


def pytest_collection_modifyitems(config, items):
    """A test that reads a trained fixture trains it (or waits for it): it must be marked slow, so that
    `make test-fast` (-m "not slow") never trains."""
    unmarked = [i.nodeid for i in items
                if TRAINED & set(getattr(i, "fixturenames", ())) and not i.get_closest_marker("slow")]
    if unmarked:
        raise pytest.UsageError(f"mark these @pytest.mark.slow (they use {sorted(TRAINED)}): {', '.join(unmarked)}")


@dataclass(frozen=True)
class FinishedSweep:
    """An experiment planned, scaffolded, run, evaluated and reported through the CLI, and what each step
    printed. Shared by the whole session: read it, or shutil.copytree it before changing anything."""

    spec: Path
    exp: Path
    output: dict[str, str]  # CLI command (plan, scaffold, run, eval, report) -> its output
    runs: tuple[str, ...] = ("tiny_r4", "tiny_r16")  # what SWEEP designs: fine-tuned runs in design order,
    control: str = "tiny_base"  # the base-model control,
    epochs: int = 4  # each run's epochs (all evaluated)


@pytest.fixture(scope="session")
def finished_sweep(tmp_path_factory, spec_in) -> FinishedSweep:
    """Trained once per session: training and evaluating a sweep is most of what an e2e file costs."""
    from typer.testing import CliRunner

    from tunelab.cli import app

    spec = spec_in(tmp_path_factory.mktemp("sweep") / "exp", **SWEEP)
    exp = spec.parent
    output = {}
    for command, target in (("plan", spec), ("scaffold", spec), ("run", exp), ("eval", exp), ("report", exp)):
        res = CliRunner().invoke(app, [command, str(target)])
        assert res.exit_code == 0, f"tunelab {command} {target}: {res.output}"
        output[command] = res.output
    return FinishedSweep(spec, exp, output)


@pytest.fixture(scope="session")
def trained_adapter(tmp_path_factory, tiny_model) -> tuple[Path, Path]:
    """(experiment dir, adapter dir): one LoRA adapter overfit on evalkit.WORDS (capitalization)."""
    from evalkit import make_cfg, train_adapter

    root = tmp_path_factory.mktemp("evalexp")
    return root, train_adapter(make_cfg(root, tiny_model), root / "adapter")
