"""scores.json's per-sample values come from a log's sample summaries only where thinning kept them whole.

A real inspect-ai eval (the tiny model through the tunelab provider) whose scorer puts a number, a small dict and, for some samples,
a string of 2,000 characters into its score's metadata: with numbers and dicts the summaries are read (as they are:
`EvalSampleSummary`); with a string, which a summary would shorten, the samples are read in full and the string
comes back whole.
"""

from __future__ import annotations

import pytest
from inspect_ai import Task
from inspect_ai import eval as inspect_eval
from inspect_ai.dataset import Sample
from inspect_ai.log import EvalSample, EvalSampleSummary
from inspect_ai.model import get_model
from inspect_ai.scorer import CORRECT, Score, Target, accuracy, scorer
from inspect_ai.solver import TaskState, generate

from tunelab.evaluate.runner import INSPECT_OPTIONS
from tunelab.evaluate.scores import scored_samples

LONG = "a b  c " * 300  # 2,100 characters with runs of spaces: a summary shortens and collapses it


def _log(tmp_path, tiny_model, long: bool) -> str:
    @scorer(metrics=[accuracy()])
    def noted():
        async def score(state: TaskState, target: Target) -> Score:
            meta = {"prediction": 1.5, "probs": {"A": 0.25, "B": 0.75}}
            if long and state.sample_id == 2:
                meta["target"] = LONG
            return Score(value=CORRECT, answer=state.output.completion, metadata=meta)
        return score

    task = Task(dataset=[Sample(input=f"word {i}", target="x", id=i) for i in range(3)], solver=generate(),
                scorer=noted())
    import tunelab.evaluate.provider  # noqa: F401  (registers the provider)

    model = get_model("tunelab/tiny", memoize=False, base_path=str(tiny_model), prompt_template="{input}",
                      dtype="float32", max_tokens=2, cache_weights=False)
    try:
        [log] = inspect_eval(task, model=model, log_dir=str(tmp_path), **INSPECT_OPTIONS)
    finally:
        model.api.close()
    assert log.status == "success"
    return log.location


@pytest.mark.parametrize("long", [False, True])
def test_summaries_where_thinning_kept_what_scores_json_reads_else_the_samples(tmp_path, tiny_model, long):
    samples = scored_samples(_log(tmp_path, tiny_model, long))
    assert [s.id for s in samples] == [0, 1, 2]
    assert all(isinstance(s, EvalSample if long else EvalSampleSummary) for s in samples)
    meta = [next(iter(s.scores.values())).metadata for s in samples]
    assert all(m["prediction"] == 1.5 and m["probs"] == {"A": 0.25, "B": 0.75} for m in meta)
    assert ("target" in meta[2]) is long and (not long or meta[2]["target"] == LONG)
