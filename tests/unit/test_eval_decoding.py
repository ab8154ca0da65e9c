"""Generation settings the tunelab provider honours (decoding.py), and those it refuses; seeded sampling
on the real tiny model; the grader of a task in the spec."""

from __future__ import annotations

import textwrap

import anyio
import pytest
from inspect_ai.model import GenerateConfig

from tunelab.errors import TunelabError
from tunelab.evaluate.decoding import (
    DEFAULT_SEED,
    HONOURED,
    INSPECT_HANDLES,
    Sampling,
    check_generate_config,
    cut_at_stop,
    describe,
    row_seed,
    sampling_of,
    unsupported_settings,
)
from tunelab.spec import TaskSpec, load_spec


def test_every_setting_is_honoured_handled_or_refused():
    fields = set(GenerateConfig.model_fields)
    assert HONOURED | INSPECT_HANDLES < fields
    for name in sorted(fields - HONOURED - INSPECT_HANDLES):  # also any field a later inspect-ai adds
        config = GenerateConfig.model_construct(**{name: "x"})
        assert unsupported_settings(config) == [f"{name}='x'"]
        with pytest.raises(TunelabError, match=rf"cannot honour GenerateConfig {name}='x' "):
            check_generate_config(config)
    check_generate_config(GenerateConfig(
        max_tokens=5, temperature=0.5, top_p=0.9, top_k=4, seed=1, stop_seqs=["\n"], num_choices=2, logprobs=True,
        top_logprobs=3, max_retries=1, timeout=9, max_connections=3, system_message="s", cache=False, batch=False))


def test_settings_set_to_no_effect_are_not_refused():
    check_generate_config(GenerateConfig(frequency_penalty=0, presence_penalty=0.0, best_of=1))
    with pytest.raises(TunelabError, match=r"task 'x': the tunelab model provider cannot honour GenerateConfig "
                                           r"best_of=2, frequency_penalty=0\.5 \(.*remove them"):
        check_generate_config(GenerateConfig(frequency_penalty=0.5, best_of=2), "task 'x'")


@pytest.mark.parametrize("config, message", [
    (GenerateConfig(temperature=-0.1), r"temperature=-0\.1 must be 0 or more"),
    (GenerateConfig(top_p=0.0), r"top_p=0\.0 must be in \(0, 1\]"),
    (GenerateConfig(top_k=0), "top_k=0 must be 1 or more"),
    (GenerateConfig(num_choices=0), "num_choices=0 must be 1 or more"),
    (GenerateConfig(stop_seqs=["a", ""]), "empty stop sequence"),
])
def test_out_of_range_values(config, message):
    with pytest.raises(TunelabError, match=message):
        check_generate_config(config)


def test_greedy_unless_temperature_or_nucleus():
    assert sampling_of(GenerateConfig()) is None and sampling_of(GenerateConfig(temperature=0, seed=3)) is None
    assert sampling_of(GenerateConfig(temperature=0.7)) == Sampling(0.7, seed=DEFAULT_SEED)
    assert sampling_of(GenerateConfig(top_p=0.9, seed=4)) == Sampling(1.0, top_p=0.9, seed=4)
    assert sampling_of(GenerateConfig(top_k=5)) == Sampling(1.0, top_k=5)
    assert describe(None) == "greedy"
    assert describe(Sampling(0.7, 0.9, 5, 2)) == "sampling, temperature=0.7, top_p=0.9, top_k=5, seed=2"


def test_row_seeds_depend_on_every_part_and_only_on_them():
    base = row_seed(1, [5, 6], 0, ["3", 1])
    assert base == row_seed(1, [5, 6], 0, ["3", 1]) and 0 <= base < 2 ** 63
    others = [row_seed(2, [5, 6], 0, ["3", 1]), row_seed(1, [5, 7], 0, ["3", 1]), row_seed(1, [5, 6], 1, ["3", 1]),
              row_seed(1, [5, 6], 0, ["4", 1]), row_seed(1, [5, 6], 0, ["3", 2]), row_seed(1, [5, 6], 0, None)]
    assert len({base, *others}) == 7


def test_stop_sequences_cut_text_and_tokens(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)

    def decode(ids):
        return tok.decode(ids, skip_special_tokens=True)

    ids = tok.encode("ab˽cd. ef", add_special_tokens=False)
    assert cut_at_stop(ids, decode, ("zz",)) == (ids, "ab˽cd. ef", False)
    kept, text, hit = cut_at_stop(ids, decode, (". ", "d"))
    assert (text, hit, decode(kept)) == ("ab˽c", True, "ab˽cd")  # the first stop sequence in the text
    # '˽' is two byte tokens: its first alone decodes to '�', which is not in the text
    kept, text, hit = cut_at_stop(ids, decode, ("\ufffd", "f"))
    assert (text, hit, kept) == ("ab˽cd. e", True, ids)


@pytest.fixture(scope="module")
def lm(tiny_model):
    import torch

    from tunelab.evaluate.hf import LocalLM, load_model

    return LocalLM(*load_model(tiny_model, None, torch.float32, "cpu"), "cpu")


def test_seeded_sampling_is_per_row(lm):
    prompts = [lm.tokenizer.encode(w) for w in ("apple", "banana split", "cherry")]
    stop = [lm.tokenizer.eos_token_id]
    hot = Sampling(1.0)

    def texts(rows, seeds, sampling=hot):
        return [g.text for g in lm.generate_batch(rows, 10, stop, sampling=sampling, seeds=seeds)]

    together = texts(prompts, [1, 2, 3])
    assert together == texts(prompts, [1, 2, 3])
    assert [texts([p], [s])[0] for p, s in zip(prompts, [1, 2, 3])] == together  # alone: the same answer
    assert texts(prompts[::-1], [3, 2, 1]) == together[::-1]
    assert sum(a != b for a, b in zip(together, texts(prompts, [4, 5, 6]))) >= 2
    greedy = [g.text for g in lm.generate_batch(prompts, 10, stop)]
    assert together != greedy and texts(prompts, [1, 2, 3], Sampling(1.0, top_k=1)) == greedy  # top-1 = greedy
    with pytest.raises(TunelabError, match="one seed per row"):
        lm.generate_batch(prompts, 10, stop, sampling=hot)


def test_the_batcher_never_mixes_settings():
    from tunelab.evaluate.hf import Batcher, BatchSettings, Generation

    batches = []

    def run(prompts, seeds, settings):
        batches.append((settings, seeds, prompts))
        return [Generation(p, "", True) for p in prompts]

    batcher = Batcher(run, 8)
    greedy, hot = BatchSettings(4), BatchSettings(4, sampling=Sampling(1.0, seed=2))

    async def main():
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(batcher.submit, [i], hot if i % 2 else greedy, i if i % 2 else None)

    anyio.run(main)
    assert sorted((s.sampling is not None, seeds, p) for s, seeds, p in batches) == [
        (False, None, [[0], [2], [4]]), (True, [1, 3, 5], [[1], [3], [5]])]


def test_a_grader_belongs_to_a_task_file_and_is_a_dir_or_a_model_string(write_spec):
    assert TaskSpec(name="t", file="f.py", grader={"path": "g"}).grader.max_tokens == 256
    assert TaskSpec(name="t", file="f.py", grader="openai/gpt-4o").grader == "openai/gpt-4o"
    with pytest.raises(ValueError, match="grader: belong to a task file"):
        TaskSpec(name="exact_match", grader="openai/gpt-4o")
    with pytest.raises(ValueError, match="give an inspect model string 'provider/model'"):
        TaskSpec(name="t", file="f.py", grader="gpt-4o")


def test_the_grader_dir_is_relative_to_the_spec_and_checked_before_jobs(write_spec, tiny_model):
    from tunelab.evaluate.usertasks import check_tasks
    from tunelab.plan.design import expand_runs

    spec_path = write_spec(eval={"tasks": [{"name": "g", "file": "t.py", "grader": {"path": "models/grader"}}]})
    exp = spec_path.parent
    (exp / "t.py").write_text(textwrap.dedent("""
        from inspect_ai import Task, task
        from inspect_ai.scorer import model_graded_fact

        @task
        def t():
            return Task(dataset=[], scorer=model_graded_fact())
        """))
    spec = load_spec(spec_path)
    with pytest.raises(TunelabError, match="task 'g': the grader's model directory has no config.json") as err:
        check_tasks(spec, exp)
    assert str(err.value).startswith(f"{exp / 'models' / 'grader'}: eval.tasks.g.grader.path")
    (exp / "models").mkdir()
    (exp / "models" / "grader").symlink_to(tiny_model)
    check_tasks(spec, exp)
    runs = expand_runs(spec, exp, exp)
    assert {r.eval.tasks[0].grader.path for r in runs} == {str((exp / "models" / "grader").resolve())}
    check_tasks(runs[0])
