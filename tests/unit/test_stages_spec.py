"""`stages:` in the spec: what a stage may set, how runs resolve each stage's training and dataset, the
`STAGE.FIELD` factors and their run names, and carrying an optimizer's moments into a new stage."""

from __future__ import annotations

import pytest

from tunelab.errors import TunelabError
from tunelab.scaffold.write import scaffold

STAGES = [{"name": "easy", "epochs": 1, "order": "by_length"},
          {"name": "hard", "epochs": 2, "learning_rate": 0.0005, "optimizer": "carried"}]


def _error(write_spec, **spec) -> str:
    with pytest.raises(TunelabError) as err:
        scaffold(write_spec(**spec))
    return str(err.value)


@pytest.mark.parametrize("stages,expected", [
    ([{"name": "a", "lora_rank": 16}], "stages[0]: lora_rank: the adapter's shape"),
    ([{"name": "a", "epoch": 2}], "unknown stage field(s) ['epoch']"),
    ([{"name": "a"}, {"name": "a"}], "stages: duplicate name(s) ['a']"),
    ([{"name": "a.b"}], "stages[0].name"),
    ([{"name": "a", "dataset": "nope"}], "stages[0].dataset: 'nope' is not one of datasets ['caps']"),
    ([{"name": "a", "optimizer": "carried"}], "the first stage has no previous optimizer to carry"),
    ([{"name": "a", "epochs": 0}], "stages[0].epochs"),
    ([{"name": "a", "order": "by_length", "packing": True}], "a curriculum order needs packing: false"),
])
def test_bad_stages_are_refused_naming_the_stage_and_field(write_spec, stages, expected):
    assert expected in _error(write_spec, stages=stages)


def test_stage_factors_name_a_stage_and_a_field_that_may_vary(write_spec):
    assert "'mid' is not a stage" in _error(write_spec, stages=STAGES, factors={"mid.order": ["as_given"]})
    assert "sweep it as factors.lora_rank" in _error(write_spec, stages=STAGES, factors={"hard.lora_rank": [4]})
    assert "factors.hard.epochs[0]" in _error(write_spec, stages=STAGES, factors={"hard.epochs": [0]})


def test_each_stage_trains_the_runs_training_with_its_own_fields_and_factor_levels(write_spec):
    spec = write_spec(stages=STAGES, controls=False,
                      factors={"lora_rank": [4, 8], "hard.order": ["shuffled", {"by_field": "input"}]})
    runs = scaffold(spec).runs
    assert [r.name for r in runs] == ["tiny_r4_hard-ordershuffled", "tiny_r4_hard-orderby_field-input",
                                      "tiny_r8_hard-ordershuffled", "tiny_r8_hard-orderby_field-input"]
    run = runs[1]
    easy, hard = run.stages
    assert (easy.training.epochs, easy.training.order, easy.training.learning_rate) == (1, "by_length", 0.002)
    assert (hard.training.epochs, hard.training.learning_rate, hard.optimizer) == (2, 0.0005, "carried")
    assert hard.training.order.by_field == "input" and runs[0].stages[1].training.order == "shuffled"
    assert {s.training.lora_rank for s in run.stages} == {4} and {s.training.lora_rank for s in runs[2].stages} == {8}
    assert {s.training.batch_size for s in run.stages} == {8}  # the spec's training, under each stage
    assert run.factors["hard.order"] == {"by_field": "input"}
    assert run.eval.epochs == "stages"  # a staged run is evaluated after each stage unless told otherwise


def test_the_runs_dataset_is_one_no_stage_names_else_the_last_named(write_spec, caps_dataset):
    both = [{"name": "caps", "path": str(caps_dataset)}, {"name": "more", "path": str(caps_dataset)}]
    one_named = scaffold(write_spec(datasets=both, controls=False, factors={"lora_rank": [4]},
                                    stages=[{"name": "a"}, {"name": "b", "dataset": "more"}])).runs
    assert [(r.dataset.name, [s.dataset.name for s in r.stages]) for r in one_named] == [("caps", ["caps", "more"])]
    all_named = scaffold(write_spec(datasets=both, controls=False, factors={"lora_rank": [4]},
                                    stages=[{"name": "a", "dataset": "caps"}, {"name": "b", "dataset": "more"}])).runs
    assert [(r.dataset.name, [s.dataset.name for s in r.stages]) for r in all_named] == [("more", ["caps", "more"])]


def test_carried_optimizer_brings_the_moments_and_keeps_the_new_learning_rate(tmp_path):
    import torch

    from tunelab.train.loop_hooks import load_optimizer_state

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 3))
    old = torch.optim.AdamW([w], lr=0.01)
    for _ in range(3):
        (w ** 2).sum().backward()
        old.step()
        old.zero_grad()
    torch.save(old.state_dict(), tmp_path / "optimizer.pt")
    new = torch.optim.AdamW([w], lr=0.0005)
    new.param_groups[0]["initial_lr"] = 0.0005  # what a schedule sets up
    load_optimizer_state(new, tmp_path)
    assert torch.equal(new.state[w]["exp_avg"], old.state[w]["exp_avg"])
    assert torch.equal(new.state[w]["exp_avg_sq"], old.state[w]["exp_avg_sq"])
    assert float(new.state[w]["step"]) == 3.0
    assert new.param_groups[0]["lr"] == 0.0005 and new.param_groups[0]["initial_lr"] == 0.0005


def test_status_shows_the_stage_and_the_epochs_of_all_stages(write_spec):
    from tunelab.execute.status import run_progress
    from tunelab.rundir import Status

    run = scaffold(write_spec(stages=STAGES, controls=False, factors={"lora_rank": [4]})).runs[0]
    progress, _ = run_progress(run, Status(step=50, total_steps=120, epoch=1.5, stage="hard", stage_index=1))
    assert progress == "step 50/120, epoch 1.50/3, stage 2/2 (hard)"


def test_unnamed_stages_are_named_after_their_dataset_else_their_position_in_plan_md(write_spec, caps_dataset):
    from typer.testing import CliRunner

    from tunelab.cli import app

    both = [{"name": "caps", "path": str(caps_dataset)}, {"name": "more", "path": str(caps_dataset)}]
    stages = [{"dataset": "caps", "epochs": 1}, {"dataset": "caps"}, {"epochs": 1}, {"name": "caps-2", "dataset": "more"}]
    spec = write_spec(datasets=both, controls=False, factors={"lora_rank": [4], "stage3.order": ["by_length"]},
                      stages=stages)
    res = CliRunner().invoke(app, ["plan", str(spec), "--md"])
    assert res.exit_code == 0, res.output
    md = (spec.parent / "plan.md").read_text()
    table = md[md.index("## Stages"):].split("\n\n")[2]  # heading, intro, then the table
    shown = [line.split("|")[2].strip() for line in table.splitlines()[2:]]
    # the second stage on caps takes the next free suffix: caps-2 is the fourth stage's own name
    assert shown == ["1. caps", "2. caps-3", "3. stage3", "4. caps-2", "**total**"]
    (run,) = scaffold(spec).runs
    assert [(s.name, s.dataset.name) for s in run.stages] == [("caps", "caps"), ("caps-3", "caps"),
                                                              ("stage3", "more"), ("caps-2", "more")]
    assert run.stages[2].training.order == "by_length"  # a factor reaches a stage by its default name
