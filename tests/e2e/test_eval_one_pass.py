"""A sweep evaluated in one pass gives exactly the answers of one target at a time.

On a copy of the shared finished sweep (two runs × epochs 1 and 3, and the control: five targets) and two tasks
(the built-in exact_match, greedy; a task file that samples at a fixed seed, with its own max_tokens, a stop
sequence and log-probabilities), every target × task is evaluated one at a time (evaluate/runner.py, the
reference), then in one pass (the base loaded once, four adapters beside it, mixed batches), and every
sample's output is compared: text, stop reason, token count, per-token log-probabilities, score. Then one
adapter's weights are changed (contamination: only its own target's answers may move) while another's file
is broken (its target fails alone, named) and a DoRA adapter is added as an eval-only run (one at a time,
with the reason said), in a pass whose adapters are forced into two chunks.
"""

from __future__ import annotations

import io
import re
import shutil
import textwrap
from pathlib import Path

import pytest
from inspect_ai.log import read_eval_log
from rich.console import Console

from tunelab.errors import TunelabError
from tunelab.evaluate.hf import WEIGHT_LOADS
from tunelab.evaluate.passes import evaluate_runs
from tunelab.evaluate.scores import read_task_scores
from tunelab.evaluate.shared import adapter_bytes
from tunelab.rundir.config import RunConfig, save_run_config
from tunelab.rundir.experiment import load_runs
from tunelab.spec import TaskSpec

pytestmark = pytest.mark.slow

EPOCHS = [1, 3]
SAMPLED = '''
from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.model import GenerateConfig
from inspect_ai.scorer import includes
from inspect_ai.solver import generate

WORDS = ["apple", "banana", "cherry", "delta", "echo", "forest", "guitar", "harbor", "island", "jungle"]


@task
def sampled():
    return Task(dataset=[Sample(input=w, target=w.capitalize(), id=i) for i, w in enumerate(WORDS)],
                solver=generate(), scorer=includes(),
                config=GenerateConfig(max_tokens=5, temperature=1.0, seed=7, stop_seqs=["e"], top_logprobs=2,
                                      logprobs=True))
'''


@pytest.fixture(scope="module")
def sweep(finished_sweep, tmp_path_factory) -> tuple[Path, list[RunConfig]]:
    """A copy of the finished sweep whose runs evaluate both tasks (exact_match on 24 test rows)."""
    exp = tmp_path_factory.mktemp("onepass") / "exp"
    shutil.copytree(finished_sweep.exp, exp, ignore=shutil.ignore_patterns("trainer_state", "eval", "report"))
    (exp / "sampled.py").write_text(textwrap.dedent(SAMPLED))
    tasks = [TaskSpec(name="exact_match", builtin="exact_match", limit=24),
             TaskSpec(name="sampled", file=str(exp / "sampled.py"), prompt="{input}")]
    cfgs = [cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"tasks": tasks})}) for cfg in load_runs(exp)]
    return exp, cfgs


def outputs(cfgs: list[RunConfig]) -> dict[tuple[str, str, str], list[tuple]]:
    """Every target × task's samples as their logs have them: (id, text, stop reason, output tokens,
    [(token, logprob)], score)."""
    out = {}
    for cfg in cfgs:
        for path in sorted(cfg.run_dir.glob("eval/*/*/scores.json")):
            scores = read_task_scores(path)
            log = read_eval_log(str(path.parent / scores.log))
            assert log.status == "success" and log.eval.metadata["label"] == scores.label
            out[(cfg.name, scores.label, scores.task)] = [
                (s.id, s.output.completion, s.output.stop_reason, s.output.usage.output_tokens,
                 [(t.token, t.logprob) for t in (s.output.choices[0].logprobs.content if s.output.choices[0].logprobs
                                                 else [])],
                 next(iter(s.scores.values())).value)
                for s in sorted(log.samples, key=lambda s: s.id)]
    return out


def same(a: list[tuple], b: list[tuple]) -> bool:
    """The same samples: equal but for log-probabilities, equal to 1e-4 (batch-mates move the last bits)."""
    return len(a) == len(b) and all(
        x[:4] + x[5:] == y[:4] + y[5:] and [t for t, _ in x[4]] == [t for t, _ in y[4]]
        and all(abs(p - q) < 1e-4 for (_, p), (_, q) in zip(x[4], y[4])) for x, y in zip(a, b))


def run(cfgs: list[RunConfig], **kwargs) -> tuple[dict, dict[str, int], str]:
    """evaluate_runs, forced, and the weights it loaded and what it printed."""
    before, text = dict(WEIGHT_LOADS), io.StringIO()
    error = None
    try:
        evaluate_runs(cfgs, EPOCHS, force=True, console=Console(file=text, width=200), **kwargs)
    except TunelabError as exc:
        error = exc
    loads = {k: WEIGHT_LOADS[k] - before.get(k, 0) for k in ("base", "adapter")}
    return {"error": error}, loads, text.getvalue()


@pytest.fixture(scope="module")
def both_ways(sweep) -> dict[str, tuple]:
    """The sweep evaluated one target at a time, then in one pass: (outputs, weights loaded, printed) of each."""
    _, cfgs = sweep
    out = {}
    for way, one_pass in (("one at a time", False), ("one pass", True)):
        # fill_batches: every short batch filled with other adapters' rows, as on a GPU (a CPU mixes none unless
        # asked), so that batches mix adapters here
        result, loads, printed = run(cfgs, one_pass=one_pass, fill_batches=True)
        assert result["error"] is None, result["error"]
        out[way] = (outputs(cfgs), loads, printed)
    return out


def test_one_pass_gives_the_answers_of_one_target_at_a_time(sweep, both_ways):
    exp, _ = sweep
    reference, loads, _ = both_ways["one at a time"]
    assert loads == {"base": 5, "adapter": 4} and len(reference) == 10  # 5 targets × 2 tasks
    sampled = [x for k, v in reference.items() if k[2] == "sampled" for x in v]
    assert any(x[2] == "stop" for x in sampled) and any(x[2] == "max_tokens" for x in sampled)
    assert len({x[1] for x in sampled}) > len(sampled) // 2  # sampling: mostly different answers
    passed, loads, printed = both_ways["one pass"]
    assert loads == {"base": 1, "adapter": 4}
    assert "one pass over 5 targets of tiny (float32): the base model loaded once, 4 adapters beside it" in printed
    assert int(re.search(r"\d+ batches, (\d+) of them mixing adapters", printed).group(1)) >= 1
    assert passed.keys() == reference.keys()
    for key in reference:
        assert same(passed[key], reference[key]), key
    for key, samples in passed.items():  # each target × task's own scores.json, beside its log
        kind = "controls" if key[1] == "base" else "runs"
        scores = read_task_scores(exp / kind / key[0] / "eval" / key[1] / key[2] / "scores.json")
        assert scores.samples == len(samples) and (scores.run, scores.label, scores.task) == key


def test_an_adapter_changes_only_its_own_target_and_a_broken_one_fails_alone(sweep, both_ways, tmp_path):
    """After the pass of both_ways (the reference here): tiny_r4 epoch_1's weights change, tiny_r16 epoch_3's
    file breaks, and a DoRA eval-only run joins; the adapters go in chunks (the room forced small)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    exp, cfgs = sweep
    reference = both_ways["one pass"][0]
    changed = exp / "runs" / "tiny_r4" / "checkpoints" / "epoch_1" / "adapter_model.safetensors"
    weights = load_file(changed)
    torch.manual_seed(0)
    save_file({k: v + 0.5 * torch.randn_like(v) if "lora_B" in k else v for k, v in weights.items()}, changed)
    broken = exp / "runs" / "tiny_r16" / "checkpoints" / "epoch_3" / "adapter_model.safetensors"
    broken.write_bytes(b"not a safetensors file")
    base = Path(cfgs[0].model.path)
    dora = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                          LoraConfig(r=4, target_modules=["q_proj"], use_dora=True, task_type="CAUSAL_LM"))
    dora.save_pretrained(tmp_path / "dora")
    eval_only = cfgs[-1].model_copy(update={"name": "dora", "kind": "eval_only", "checkpoint": str(tmp_path / "dora")})
    save_run_config(eval_only)
    room = 2 * max(adapter_bytes(c.run_dir / "checkpoints" / f"epoch_{e}") for c in cfgs[:2] for e in EPOCHS)

    result, loads, printed = run([*cfgs, eval_only], adapter_room=room, fill_batches=True)
    error = str(result["error"])
    assert "tiny_r16 epoch_3" in error and "cannot load the adapter" in error and "tiny_r4" not in error
    assert "one at a time: dora checkpoint: a LoRA variant (use_dora=True)" in printed
    assert loads["base"] == 2  # the pass's, and the DoRA target's own
    assert int(re.search(r"adapters in (\d+) chunks", printed).group(1)) >= 2
    now = outputs(cfgs)
    assert ("tiny_r16", "epoch_3", "exact_match") not in now  # failed: no scores.json
    assert not same(now[("tiny_r4", "epoch_1", "sampled")], reference[("tiny_r4", "epoch_1", "sampled")]) or \
        not same(now[("tiny_r4", "epoch_1", "exact_match")], reference[("tiny_r4", "epoch_1", "exact_match")])
    for key in now.keys() - {("tiny_r4", "epoch_1", "sampled"), ("tiny_r4", "epoch_1", "exact_match")}:
        assert same(now[key], reference[key]), key
    assert read_task_scores(exp / "eval_only" / "dora" / "eval" / "checkpoint" / "exact_match" / "scores.json")
