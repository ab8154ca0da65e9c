"""tunelab's own loop for the built-ins (evaluate/batched.py) against inspect-ai's per-sample loop, on the same pass.

A copy of the shared finished sweep (five targets) evaluates the four built-ins — exact_match, includes and choice
on the words, numeric on an eval-only dataset of sums — twice in one pass: through inspect-ai's loop (`tunelab
eval --inspect-loop`), then through tunelab's (`tunelab eval`). Everything a reader of the results sees must be
the same: scores.json (metrics, their intervals, every sample's value, the tokens), and in each .eval log every
sample (input, target, messages, the output with its exact prompt, its stop reason and usage, each score with its
answer and metadata — choice's option probabilities), the metrics inspect computed, the reductions, the whole
header (model, arguments, metadata, dataset, scorers, the eval config) but its ids and time, the plan (the solver
steps with their parameters — choice's option scorer, not a generate() — and the generate config), and the
summaries `inspect view` lists. What tunelab's loop leaves out — each sample's event transcript — is checked too:
that is how the test knows which loop wrote which log.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from inspect_ai.log import read_eval_log, read_eval_log_sample_summaries
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.evaluate.scores import read_task_scores
from tunelab.rundir.config import RunConfig, save_run_config
from tunelab.rundir.experiment import load_runs
from tunelab.spec import DatasetSpec, TaskSpec

pytestmark = pytest.mark.slow

# when and how long (and the machine's load over that time): the only fields that differ
TIMES = {"duration_s", "inspect_duration_s", "evaluated_at", "log", "load"}
HEADER_IDS = {"eval_id", "run_id", "task_id", "created"}  # a log header's ids and time: new in every eval


@pytest.fixture(scope="module")
def sweep(finished_sweep, tmp_path_factory) -> tuple[Path, list[RunConfig]]:
    exp = tmp_path_factory.mktemp("batched") / "exp"
    shutil.copytree(finished_sweep.exp, exp, ignore=shutil.ignore_patterns("trainer_state", "eval", "report"))
    sums = exp / "sums.jsonl"  # answers the tiny model will mostly miss: the numeric metrics see both kinds
    sums.write_text("".join(json.dumps({"input": f"{a} + {b} =", "output": str(a + b)}) + "\n"
                            for a, b in ((i, 2 * i + 1) for i in range(12))))
    tasks = [TaskSpec(name="exact_match", builtin="exact_match", limit=16),
             TaskSpec(name="includes", builtin="includes", limit=16),
             TaskSpec(name="sums", builtin="numeric", dataset="sums", split="test", prompt="{input}", max_tokens=4),
             TaskSpec(name="choice", builtin="choice", limit=8)]  # options: every answer of the split
    extra = {"sums": DatasetSpec(name="sums", test=str(sums), eval_only=True)}
    cfgs = [cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"tasks": tasks}), "eval_datasets": extra})
            for cfg in load_runs(exp)]
    for cfg in cfgs:
        save_run_config(cfg)
    return exp, cfgs


def evaluated(cfgs: list[RunConfig]) -> dict[tuple[str, str, str], tuple[dict, object]]:
    """Every target × task's scores.json record (times aside) and its log."""
    out = {}
    for cfg in cfgs:
        for path in sorted(cfg.run_dir.glob("eval/*/*/scores.json")):
            scores = read_task_scores(path)
            out[(cfg.name, scores.label, scores.task)] = (
                scores.model_dump(exclude=TIMES), read_eval_log(str(path.parent / scores.log)))
    return out


def sample_view(sample) -> dict:
    return {"id": sample.id, "input": [(m.role, m.text) for m in sample.input], "target": sample.target,
            "messages": [(m.role, m.text, m.source) for m in sample.messages], "metadata": sample.metadata,
            "output": sample.output.model_dump(exclude={"time"}, exclude_none=True) | {
                "choices": [(c.message.text, c.stop_reason) for c in sample.output.choices]},
            "scores": {k: v.model_dump() for k, v in sample.scores.items()},
            "usage": {k: v.model_dump() for k, v in sample.model_usage.items()}}


@pytest.fixture(scope="module")
def both_loops(sweep) -> dict[str, dict]:
    """`tunelab eval --inspect-loop`, then `tunelab eval`, as a user runs them."""
    exp, cfgs = sweep
    out = {}
    for loop, flags in (("inspect", ["--inspect-loop"]), ("tunelab", [])):
        res = CliRunner().invoke(app, ["eval", str(exp), "--force", "--epochs", "1,3", "--no-ledger", *flags])
        assert res.exit_code == 0, res.output
        out[loop] = evaluated(cfgs)
        out[loop + " printed"] = res.output
    return out


def test_tunelabs_loop_writes_what_inspects_loop_writes_sample_for_sample(both_loops):
    inspect, ours = both_loops["inspect"], both_loops["tunelab"]
    assert len(ours) == 20 and ours.keys() == inspect.keys()  # 5 targets × 4 tasks, each once
    assert "one pass over 5 targets" in both_loops["tunelab printed"]
    answered = set()
    for key, (scores, log) in ours.items():
        their_scores, theirs = inspect[key]
        assert scores == their_scores, key  # metrics, intervals, per-sample values, tokens, batch, concurrency
        assert log.status == theirs.status == "success"
        assert len(log.samples) == len(theirs.samples), key
        for mine, their in zip(log.samples, theirs.samples):
            a, b = sample_view(mine), sample_view(their)
            assert a.keys() == b.keys() and all(a[k] == b[k] for k in a), (key, mine.id, {
                k: (a[k], b[k]) for k in a if a[k] != b[k]})
        assert log.results.model_dump() == theirs.results.model_dump(), key
        assert [r.model_dump() for r in log.reductions] == [r.model_dump() for r in theirs.reductions], key
        for field in ("task", "model", "model_args", "metadata", "dataset", "model_generate_config"):
            assert getattr(log.eval, field) == getattr(theirs.eval, field), (key, field)
        assert log.stats.model_usage == theirs.stats.model_usage, key
        summaries = read_eval_log_sample_summaries(log.location)  # what `inspect view` lists
        assert [(s.id, s.target, {k: v.value for k, v in s.scores.items()}) for s in summaries] == \
            [(s.id, s.target, {k: v.value for k, v in s.scores.items()}) for s in theirs.samples]
        # which loop wrote which: inspect's keeps each sample's event transcript, tunelab's does not
        assert all(not s.events for s in log.samples) and all(s.events for s in theirs.samples), key
        assert log.stats.completed_at > log.stats.started_at, key  # its duration is measured, not zero
        answered |= {s.output.completion for s in log.samples}
    assert len(answered) > 10  # the targets answer differently: the comparison is not of constants
    numeric = [scores for (_, _, task), (scores, _) in ours.items() if task == "sums"]
    assert {"mae", "rmse", "r2", "parse_rate"} <= set(numeric[0]["metrics"])
    choice = [log for (_, _, task), (_, log) in ours.items() if task == "choice"]
    assert {"accuracy", "balanced_accuracy", "macro_f1", "ece", "brier"} <= set(choice[0].results.scores[0].metrics)
    probs = choice[0].samples[0].scores["option_choice"].metadata["probs"]
    assert len(probs) > 2 and sum(probs.values()) == pytest.approx(1.0)  # every option's probability, normalised


def header(log) -> dict:
    """What a reader of the log's header and plan sees, its ids and time aside."""
    return {"eval": log.eval.model_dump(exclude=HEADER_IDS), "plan": log.plan.model_dump()}


def test_tunelabs_loop_writes_inspects_header_plan_and_config(both_loops):
    inspect, ours = both_loops["inspect"], both_loops["tunelab"]
    assert {task for (_, _, task) in ours} == {"exact_match", "includes", "sums", "choice"}
    differ = {}
    for key, (_, log) in ours.items():
        mine, theirs = header(log), header(inspect[key][1])
        for part in ("plan", "eval"):
            fields = {k for k in mine[part].keys() | theirs[part].keys()
                      if mine[part].get(k) != theirs[part].get(k)}
            differ |= {(key[2], part, k): (mine[part].get(k), theirs[part].get(k)) for k in fields}
    # every task: the plan (its solver steps, their parameters, its generate config), the eval config, the rest
    assert differ == {}, sorted(differ)
    for (_, _, task), (scores, log) in ours.items():  # what the plan says, against the task each ran
        [step] = log.plan.steps
        if task == "choice":  # the solver that scores the options, with them
            assert step.solver.endswith("option_probabilities")
            assert step.params["options"] == log.eval.metadata["options"] and len(step.params["options"]) > 2
        else:
            assert step.solver == "generate"
        # the spec's max_tokens: the sums task's own, the sweep's eval.max_tokens (8) for the others
        assert log.plan.config.max_tokens == scores["max_tokens"] == (4 if task == "sums" else 8)


# ---------------------------------------------------------------- a target alone: a pass of one
LONE_TASKS = [TaskSpec(name="exact_match", builtin="exact_match", limit=4),
              TaskSpec(name="includes", builtin="includes", limit=4),
              TaskSpec(name="choice", builtin="choice", limit=3)]


@pytest.fixture(scope="module")
def lone_loops(tiny_model, tmp_path_factory) -> dict[str, object]:
    """Two runs of one checkpoint each (a random LoRA; a random DoRA, which goes alone whatever else): each the
    only target of its pass, as `tunelab eval --run X` or a tune trial's evaluation has it. Evaluated through inspect-ai's loop (`inspect_loop`), then as it goes by
    default (a pass of one): (scores and logs, what was printed, weights loaded) of each."""
    import io

    import torch
    from evalkit import make_cfg, with_checkpoint
    from peft import LoraConfig, get_peft_model
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.evaluate.hf import WEIGHT_LOADS
    from tunelab.evaluate.passes import evaluate_runs

    root = tmp_path_factory.mktemp("lone")
    cfgs = []
    for name, dora in (("r1", False), ("dora", True)):  # DoRA: PEFT mixes it with nothing, alone it needs not
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), LoraConfig(
            r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, use_dora=dora, task_type="CAUSAL_LM"))
        model.save_pretrained(root / name)
        AutoTokenizer.from_pretrained(tiny_model).save_pretrained(root / name)
        cfg = make_cfg(root, tiny_model, name=name, eval={"max_tokens": 6, "tasks": [t.model_dump() for t in LONE_TASKS]})
        cfgs.append(with_checkpoint(cfg, root / name))
    out: dict[str, object] = {}
    for loop, inspect_loop in (("inspect", True), ("tunelab", False)):
        text, before = io.StringIO(), dict(WEIGHT_LOADS)
        evaluate_runs(cfgs, [0], force=True, inspect_loop=inspect_loop, console=Console(file=text, width=300))
        out[loop] = evaluated(cfgs)
        out[loop + " printed"] = text.getvalue()
        out[loop + " loads"] = {k: WEIGHT_LOADS[k] - before.get(k, 0) for k in ("base", "adapter")}
    return out


def test_a_target_alone_goes_through_tunelabs_loop_with_inspects_answers(lone_loops):
    inspect, ours = lone_loops["inspect"], lone_loops["tunelab"]
    assert isinstance(inspect, dict) and isinstance(ours, dict)
    assert ours.keys() == inspect.keys() == {(run, "epoch_0", t.name) for run in ("r1", "dora") for t in LONE_TASKS}
    printed = lone_loops["tunelab printed"]
    assert "one at a time: r1 epoch_0: nothing to share: the only target of its base model; a pass of one" in printed
    assert re.search(r"one at a time: dora epoch_0: a LoRA variant \(use_dora=True\)[^\n]*; a pass of one", printed)
    assert "; inspect-ai's loop asked for" in lone_loops["inspect printed"]
    assert lone_loops["tunelab loads"] == lone_loops["inspect loads"] == {"base": 2, "adapter": 2}
    answered = set()
    for key, (scores, log) in ours.items():
        their_scores, theirs = inspect[key]
        # a pass of one runs the target's tasks at once (concurrent: its wave's tasks); the rest is the same
        assert (scores.pop("concurrent"), their_scores.pop("concurrent")) == (len(LONE_TASKS), 1), key
        assert scores == their_scores, key
        assert [sample_view(s) for s in log.samples] == [sample_view(s) for s in theirs.samples], key
        assert log.results.model_dump() == theirs.results.model_dump(), key
        assert [r.model_dump() for r in log.reductions] == [r.model_dump() for r in theirs.reductions], key
        mine, their = header(log), header(theirs)
        # the options each loop is given: a wave's connections are its tasks' (waves.eval_options), alone a task's
        connections = (mine["plan"]["config"].pop("max_connections"), their["plan"]["config"].pop("max_connections"))
        assert connections == (2 * 16 * len(LONE_TASKS), 2 * 16), key
        assert mine["plan"] == their["plan"], key
        for field in ("task", "model", "model_args", "metadata", "dataset", "model_generate_config"):
            assert mine["eval"][field] == their["eval"][field], (key, field)
        # which loop wrote which: inspect's keeps each sample's event transcript, tunelab's does not
        assert all(not s.events for s in log.samples) and all(s.events for s in theirs.samples), key
        answered |= {s.output.completion for s in log.samples}
    assert len(answered) > 2  # the samples answer differently: the comparison is not of constants
