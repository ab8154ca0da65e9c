"""A user's own inspect-ai task file (its dataset, solver and scorer) on a fine-tuned checkpoint and a
control, through tunelab and by hand with the `inspect` CLI; its logprobs; a scorer that raises.

Expected per-sample values are recomputed here from the completions in the .eval logs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from evalkit import WORDS, make_cfg, with_checkpoint
from inspect_ai.log import read_eval_log

from tunelab.data.conversation import Message
from tunelab.data.formatting import prompt_format_of
from tunelab.errors import TunelabError
from tunelab.evaluate import evaluate_run
from tunelab.spec import TaskSpec

pytestmark = pytest.mark.slow

TASK_FILE = f'''
from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.model import GenerateConfig
from inspect_ai.scorer import Score, Target, mean, scorer
from inspect_ai.solver import TaskState, generate

WORDS = {WORDS!r}


@scorer(metrics=[mean()])
def starts_upper():
    """1 when the completion starts with an upper-case letter; its length rides along."""
    async def score(state: TaskState, target: Target) -> Score:
        c = state.output.completion
        return Score(value=1.0 if c[:1].isupper() else 0.0, answer=c, metadata={{"length": len(c)}})
    return score


@scorer(metrics=[mean()])
def token_logprobs():
    async def score(state: TaskState, target: Target) -> Score:
        lp = state.output.choices[0].logprobs.content
        return Score(value=sum(t.logprob for t in lp), metadata={{
            "logprobs": [t.logprob for t in lp], "tops": [[x.logprob for x in t.top_logprobs] for t in lp]}})
    return score


@scorer(metrics=[mean()])
def exploding():
    async def score(state: TaskState, target: Target) -> Score:
        raise ValueError("scorer exploded")
    return score


def _samples(n):
    return [Sample(input=w, target=w.capitalize(), id=i) for i, w in enumerate(WORDS[:n])]


@task
def first_letter(n: int = 8):
    return Task(dataset=_samples(n), solver=generate(), scorer=starts_upper(), config=GenerateConfig(max_tokens=8))


@task
def with_logprobs(n: int = 3):
    return Task(dataset=_samples(n), solver=generate(), scorer=token_logprobs(),
                config=GenerateConfig(max_tokens=8, logprobs=True, top_logprobs=2))


@task
def broken():
    return Task(dataset=_samples(2), solver=generate(), scorer=exploding())
'''


@pytest.fixture(scope="module")
def setup(trained_adapter, tiny_model, tmp_path_factory):
    """(fine-tuned run config with the trained adapter as epoch_0, control config, task file)."""
    _, adapter = trained_adapter
    root = tmp_path_factory.mktemp("usertask")
    task_file = root / "tasks" / "my_task.py"
    task_file.parent.mkdir()
    task_file.write_text(textwrap.dedent(TASK_FILE))
    tasks = {"tasks": [{"name": "letters", "file": str(task_file), "task": "first_letter", "args": {"n": 6}}]}
    run = with_checkpoint(make_cfg(root, tiny_model, name="tuned", eval=tasks), adapter)
    control = make_cfg(root, tiny_model, kind="control", name="tiny_base", eval=tasks)
    for cfg in (run, control):
        from tunelab.rundir.config import save_run_config

        save_run_config(cfg)
    return run, control, task_file


def _samples(log_path: Path):
    return sorted(read_eval_log(str(log_path)).samples, key=lambda s: s.id)


def test_task_file_scores_a_checkpoint_and_a_control(setup, tiny_model):
    from transformers import AutoTokenizer

    run, control, task_file = setup
    tok = AutoTokenizer.from_pretrained(tiny_model)
    for cfg, label in ((run, "epoch_0"), (control, "base")):
        [s] = evaluate_run(cfg)
        assert (s.label, s.task, s.file, s.task_function, s.primary_metric) == (
            label, "letters", str(task_file), "first_letter", "mean")
        samples = _samples(cfg.run_dir / "eval" / label / "letters" / s.log)
        assert len(samples) == s.samples == 6
        expected = [1.0 if x.output.completion[:1].isupper() else 0.0 for x in samples]
        assert [x.scores["starts_upper"].value for x in samples] == expected
        assert [x.scores["starts_upper"].metadata["length"] for x in samples] == [len(x.output.completion)
                                                                                  for x in samples]
        assert s.score == pytest.approx(sum(expected) / len(expected))
        # tunelab supplied the model only: the run's prompt template wraps the task's raw input
        fmt = prompt_format_of(cfg)
        for x, w in zip(samples, WORDS):
            assert x.output.metadata["prompt_ids"] == fmt.encode_prompt((Message("user", f"Capitalize: {w}"),), tok)
        if cfg is run:  # the adapter learned exactly this prompt format
            assert [x.output.completion for x in samples] == [w.capitalize() for w in WORDS[:6]]


def test_logprobs_are_the_models_own(setup, tiny_model, trained_adapter):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, _, task_file = setup
    cfg = run.model_copy(update={"name": "tuned_lp", "eval": run.eval.model_copy(update={"tasks": [
        TaskSpec(name="lp", file=str(task_file), task="with_logprobs")]})})
    with_checkpoint(cfg, trained_adapter[1])
    [s] = evaluate_run(cfg)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                                      str(trained_adapter[1])).eval()
    for x in _samples(cfg.run_dir / "eval" / "epoch_0" / "lp" / s.log):
        meta = x.scores["token_logprobs"].metadata
        prompt = x.output.metadata["prompt_ids"]
        gen = model.generate(torch.tensor([prompt]), max_new_tokens=len(meta["logprobs"]), do_sample=False)[0].tolist()
        with torch.no_grad():
            logps = model(torch.tensor([gen])).logits[0].float().log_softmax(-1)
        direct = [float(logps[i - 1, gen[i]]) for i in range(len(prompt), len(gen))]
        assert meta["logprobs"] == pytest.approx(direct, abs=1e-4)
        assert all(len(t) == 2 and t[0] == pytest.approx(lp, abs=1e-5) for t, lp in zip(meta["tops"], direct))


def test_a_scorer_that_raises_names_the_file_and_writes_no_scores(setup):
    run, _, task_file = setup
    cfg = run.model_copy(update={"name": "tuned_broken", "eval": run.eval.model_copy(update={"tasks": [
        TaskSpec(name="boom", file=str(task_file), task="broken")]})})
    with_checkpoint(cfg, Path(run.run_dir / "checkpoints" / "epoch_0"))
    line = 1 + task_file.read_text().splitlines().index('        raise ValueError("scorer exploded")')
    with pytest.raises(TunelabError, match=rf"task 'boom' \(@task broken\) failed on tuned_broken epoch_0: "
                                           rf"ValueError\('scorer exploded'\) \(line {line}\); log: ") as err:
        evaluate_run(cfg)
    assert str(err.value).startswith(str(task_file))
    assert not list((cfg.run_dir / "eval").rglob("scores.json"))


def test_by_hand_with_the_inspect_cli(setup, tmp_path):
    """`inspect eval my_task.py --model tunelab/<dir>` (the entry point): run dir, checkpoint dir, control dir."""
    run, control, task_file = setup
    [scored] = evaluate_run(run)  # the same checkpoint through tunelab, for comparison
    ours = [x.output.completion for x in _samples(run.run_dir / "eval" / "epoch_0" / "letters" / scored.log)][:3]
    models = [run.run_dir, run.run_dir / "checkpoints" / "epoch_0", control.run_dir]
    inspect = Path(sys.executable).parent / "inspect"
    cmd = [str(inspect), "eval", f"{task_file}@first_letter", "-T", "n=3", "--display", "none",
           "--log-dir", str(tmp_path / "logs"), "--model", ",".join(f"tunelab/{m}" for m in models)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    logs = [read_eval_log(str(p)) for p in sorted((tmp_path / "logs").glob("*.eval"))]
    assert sorted(log.eval.model for log in logs) == sorted(f"tunelab/{m}" for m in models)
    for log in logs:
        assert log.status == "success" and len(log.samples) == 3
        completions = [x.output.completion for x in sorted(log.samples, key=lambda x: x.id)]
        if "tiny_base" not in log.eval.model:  # the run dir means its last epoch: the same answers as ours
            assert completions == ours
