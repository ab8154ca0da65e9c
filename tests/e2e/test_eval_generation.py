"""The tunelab provider honours a task's generation settings in real inspect-ai runs on the random tiny
model (random enough that sampling visibly differs from greedy and between seeds): temperature and seed,
greedy by default, stop sequences, several choices, epochs, refusals; and a model-graded task graded by
a local model directory named in the spec. Expectations are recomputed from the .eval logs or with
transformers directly."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from evalkit import WORDS, make_cfg
from inspect_ai.log import read_eval_log

from tunelab.errors import TunelabError
from tunelab.evaluate import evaluate_run
from tunelab.spec import TaskSpec

pytestmark = pytest.mark.slow

TASKS = f'''
from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.model import GenerateConfig
from inspect_ai.scorer import includes
from inspect_ai.solver import generate

WORDS = {WORDS!r}


def _task(n, epochs=1, **config):
    return Task(dataset=[Sample(input=w, target=w.capitalize(), id=i) for i, w in enumerate(WORDS[:n])],
                solver=generate(), scorer=includes(), epochs=epochs, config=GenerateConfig(max_tokens=12, **config))


@task
def sampled(seed: int | None = None, temperature: float | None = None, n: int = 6, epochs: int = 1,
            num_choices: int | None = None, stop: str | None = None):
    return _task(n, epochs, seed=seed, temperature=temperature, num_choices=num_choices,
                 stop_seqs=[stop] if stop else None)


@task
def penalised():
    return _task(2, frequency_penalty=0.5)


@task
def penalised_at_generate():
    t = _task(2)
    t.solver = generate(presence_penalty=0.3)
    return t
'''


@pytest.fixture(scope="module")
def task_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gentasks") / "gen_tasks.py"
    path.write_text(textwrap.dedent(TASKS))
    return path


def _run(root: Path, model: Path, task_file: Path, name: str, batch_size: int | None = None, **args):
    """Evaluate the untouched tiny model (a control) on the `sampled` task; (scores, log samples by id, epoch)."""
    tasks = [TaskSpec(name="gen", file=str(task_file), task="sampled", prompt="{input}",
                      args={k: v for k, v in args.items() if v is not None})]
    cfg = make_cfg(root, model, kind="control", name=name, eval={"tasks": tasks})
    [scores] = evaluate_run(cfg, batch_size=batch_size)
    log = read_eval_log(str(cfg.run_dir / "eval" / "base" / "gen" / scores.log))
    assert log.eval.metadata["decoding"] == scores.decoding
    return scores, sorted(log.samples, key=lambda s: (s.id, s.epoch))


def _texts(samples) -> list[str]:
    return [s.output.completion for s in samples]


def test_same_seed_same_answers_other_seed_other_answers(tmp_path, tiny_model, task_file):
    s1, a = _run(tmp_path, tiny_model, task_file, "seed7a", temperature=1.0, seed=7)
    _, b = _run(tmp_path, tiny_model, task_file, "seed7b", batch_size=1, temperature=1.0, seed=7)
    _, c = _run(tmp_path, tiny_model, task_file, "seed8", temperature=1.0, seed=8)
    _, greedy = _run(tmp_path, tiny_model, task_file, "greedy")
    assert _texts(a) == _texts(b)  # two runs, batched 16 and unbatched: the same answers
    assert sum(x != y for x, y in zip(_texts(a), _texts(c))) >= len(a) // 2  # another seed: other answers
    assert _texts(a) != _texts(greedy)
    assert s1.decoding == "sampling, temperature=1, seed=7"
    for s in a:
        assert s.output.metadata["decoding"] == s1.decoding and s.output.metadata["seed"] == 7
        assert len(s.output.metadata["choice_seeds"]) == 1


def test_greedy_unless_asked(tmp_path, tiny_model, task_file):
    unset, a = _run(tmp_path, tiny_model, task_file, "unset")
    zero, b = _run(tmp_path, tiny_model, task_file, "zero", temperature=0.0, seed=3)
    assert _texts(a) == _texts(b) and len(set(_texts(a))) > 1
    assert unset.decoding == zero.decoding == "greedy"
    assert all(s.output.metadata["decoding"] == "greedy" and "seed" not in s.output.metadata for s in a + b)
    # the built-in tasks stay greedy, and say so
    cfg = make_cfg(tmp_path, tiny_model, kind="control", name="builtin")
    [scores] = evaluate_run(cfg)
    assert scores.decoding == "greedy"
    log = read_eval_log(str(cfg.run_dir / "eval" / "base" / "exact_match" / scores.log))
    assert {s.output.metadata["decoding"] for s in log.samples} == {"greedy"}


def test_stop_sequences_cut_the_text(tmp_path, tiny_model, task_file):
    _, free = _run(tmp_path, tiny_model, task_file, "free")
    # a character the free answers contain somewhere after their start: the cut must show
    counts: dict[str, int] = {}
    for text in _texts(free):
        for ch in set(text[1:]):
            counts[ch] = counts.get(ch, 0) + 1
    stop = max(sorted(counts), key=lambda ch: counts[ch])
    _, cut = _run(tmp_path, tiny_model, task_file, "cut", stop=stop)
    assert _texts(cut) == [t.split(stop)[0] for t in _texts(free)]
    for f, c in zip(free, cut):
        assert c.output.stop_reason == ("stop" if stop in f.output.completion else f.output.stop_reason)
    assert sum(stop in t for t in _texts(free)) >= 2


def test_several_choices_and_epochs_draw_independently(tmp_path, tiny_model, task_file):
    _, samples = _run(tmp_path, tiny_model, task_file, "choices", temperature=1.0, seed=5, n=3, epochs=2,
                      num_choices=3)
    assert len(samples) == 6
    for s in samples:
        texts = [c.message.text for c in s.output.choices]
        assert len(texts) == 3 and len(set(texts)) == 3
        assert len(set(s.output.metadata["choice_seeds"])) == 3
    for first, second in zip(samples[::2], samples[1::2]):  # the same sample, epochs 1 and 2
        assert (first.id, first.epoch, second.epoch) == (second.id, 1, 2)
        assert first.output.completion != second.output.completion
    # the same choices again in a second run
    _, again = _run(tmp_path, tiny_model, task_file, "choices2", temperature=1.0, seed=5, n=3, epochs=2,
                    num_choices=3)
    assert [[c.message.text for c in s.output.choices] for s in again] == \
        [[c.message.text for c in s.output.choices] for s in samples]


@pytest.mark.parametrize("task, setting", [("penalised", "frequency_penalty=0.5"),
                                           ("penalised_at_generate", "presence_penalty=0.3")])
def test_settings_it_cannot_honour_are_refused(tmp_path, tiny_model, task_file, task, setting):
    cfg = make_cfg(tmp_path, tiny_model, kind="control", name=task, eval={"tasks": [
        TaskSpec(name="pen", file=str(task_file), task=task, prompt="{input}")]})
    with pytest.raises(TunelabError, match=rf"cannot honour GenerateConfig {setting} ") as err:
        evaluate_run(cfg)
    assert str(err.value).startswith(f"{task_file}: task 'pen' (@task {task})")
    assert not list((cfg.run_dir / "eval").rglob("scores.json"))


GRADED = f'''
from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.model import GenerateConfig
from inspect_ai.scorer import model_graded_fact
from inspect_ai.solver import generate


@task
def graded(n: int = 3):
    return Task(dataset=[Sample(input=f"Capitalize {{w}}", target=w.capitalize(), id=i)
                         for i, w in enumerate({WORDS!r}[:n])],
                solver=generate(), scorer=model_graded_fact(), config=GenerateConfig(max_tokens=6))
'''


def build_answering_model(base: Path, out: Path, answer: str) -> Path:
    """A real HF model dir (the tiny model's architecture) that answers `answer` to any prompt: its layers
    add nothing to the residual stream, so the next token depends on the current one only, and the
    embeddings and lm_head chain the prompt's last token (the generation prompt) through the answer's
    tokens to the end of turn."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.data.conversation import Message
    from tunelab.data.formatting import PromptFormat

    tok = AutoTokenizer.from_pretrained(base)
    fmt = PromptFormat(chat_template="auto")
    chain = [fmt.encode_prompt((Message("user", "x"),), tok)[-1], *tok.encode(answer, add_special_tokens=False),
             fmt.stop_token_ids(tok)[0]]
    assert len(set(chain[:-1])) == len(chain) - 1  # each token has one successor
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for i, (cur, nxt) in enumerate(zip(chain, chain[1:])):
            model.model.embed_tokens.weight[cur, i] = 1.0
            model.lm_head.weight[nxt, i] = 50.0
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _role_events(sample, role):
    return [e for e in sample.events if e.event == "model" and e.role == role]


def test_a_model_graded_task_is_graded_by_the_local_grader_the_spec_names(write_spec, tiny_model):
    """plan → scaffold → eval of the control through the CLI; the grader, named by a path relative to the
    spec, is a model dir that answers 'GRADE: C' to anything, so every sample is graded correct; the
    model under evaluation (random) could not have produced one such grade."""
    from typer.testing import CliRunner

    from tunelab.cli import app
    from tunelab.evaluate.scores import read_task_scores

    spec = write_spec(factors={"lora_rank": [4]}, eval={"tasks": [
        {"name": "graded", "file": "tasks/graded.py", "prompt": "{input}",
         "grader": {"path": "grader", "max_tokens": 12}}]})
    exp = spec.parent
    grader_dir = build_answering_model(tiny_model, exp / "grader", "GRADE: C")
    (exp / "tasks").mkdir()
    (exp / "tasks" / "graded.py").write_text(textwrap.dedent(GRADED))
    cli = CliRunner()
    for args in (["plan", spec], ["scaffold", spec], ["eval", exp, "--run", "tiny_base"]):
        res = cli.invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, res.output
    assert "graded by `grader`" in (exp / "plan.md").read_text()  # as the spec names it
    [scores_file] = exp.glob("controls/tiny_base/eval/base/graded/scores.json")
    scores = read_task_scores(scores_file)
    name = f"tunelab/{grader_dir.resolve()}"
    assert scores.grader == name and scores.decoding == "greedy"
    assert (scores.samples, scores.metrics["accuracy"]) == (3, 1.0)
    log = read_eval_log(str(scores_file.parent / scores.log))
    assert log.eval.model_roles["grader"].model == name and log.eval.metadata["grader"] == name
    for s in log.samples:
        [graded] = _role_events(s, "grader")
        [answered] = _role_events(s, None)
        assert graded.model == name and answered.model == "tunelab/tiny_base/base"
        assert s.output.completion in graded.output.metadata["prompt"]  # it graded this answer
        assert graded.output.completion == "GRADE: C" and "GRADE: C" not in s.output.completion
        assert [(x.value, x.explanation) for x in s.scores.values()] == [("C", "GRADE: C")]


def test_without_a_grader_the_model_grades_itself_and_any_inspect_model_can_grade(tmp_path, tiny_model):
    """No grader: the random model under evaluation grades its own answers (never a valid grade). A model
    string: here `tunelab/<control dir>` (by hand's provider form) of a model that always grades C."""
    from tunelab.rundir.config import save_run_config

    task_file = tmp_path / "graded.py"
    task_file.write_text(textwrap.dedent(GRADED))
    answering = make_cfg(tmp_path, build_answering_model(tiny_model, tmp_path / "answering", "GRADE: C"),
                         kind="control", name="answering")
    save_run_config(answering)
    for grader, name, accuracy in ((None, "self", None), (f"tunelab/{answering.run_dir}", "other", 1.0)):
        cfg = make_cfg(tmp_path, tiny_model, kind="control", name=name, eval={"tasks": [
            TaskSpec(name="graded", file=str(task_file), prompt="{input}", grader=grader)]})
        [scores] = evaluate_run(cfg)
        assert (scores.grader, scores.metrics["accuracy"]) == (grader, accuracy)
        log = read_eval_log(str(cfg.run_dir / "eval" / "base" / "graded" / scores.log))
        for s in log.samples:
            models = [e.model for e in s.events if e.event == "model"]
            assert models == [f"tunelab/{name}/base", grader or f"tunelab/{name}/base"]
