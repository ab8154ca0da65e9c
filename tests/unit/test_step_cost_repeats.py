"""How many timed repeats the job spends on the step-cost split after training (rundir/summary.py, read by the
job's train/step_cost.py and the plan's forecast/runs.py alike): one per 20 steps trained, at most 4, none under 20
steps. A repeat is a step at half and one at twice the micro-batch."""

from __future__ import annotations

import pytest

from tunelab.rundir.summary import step_cost_repeats


@pytest.mark.parametrize("steps, repeats", [(0, 0), (3, 0), (19, 0), (20, 1), (39, 1), (40, 2), (79, 3),
                                            (80, 4), (160, 4), (100_000, 4)])
def test_repeats_grow_with_the_run_up_to_the_cap(steps, repeats):
    assert step_cost_repeats(steps) == repeats


def test_the_calibrations_seconds_are_its_rounds_of_both_sizes_priced_by_their_rows():
    from tunelab.rundir.summary import step_cost_seconds, step_cost_sizes

    assert step_cost_sizes(16) == [8, 32] and step_cost_sizes(1) == [1, 2]
    # 50 steps: 2 timed repeats and the warm-up round; each round one micro-batch of 8 rows and one of 32, a
    # micro-batch of 16 taking 0.1 s: 3 × (0.05 + 0.2)
    assert step_cost_seconds(50, 16, 0.1) == pytest.approx(0.75)
    assert step_cost_seconds(19, 16, 0.1) == 0.0  # under 20 steps: none
    assert step_cost_seconds(400, 1, 0.1) == pytest.approx(5 * (0.1 + 0.2))  # capped at 4 repeats; half of 1 is 1


def test_a_run_priced_from_probed_rows_adds_the_calibration_and_a_stage_does_not(tmp_path):
    """A probed row measured no finish: the plan prices the calibration at the run's own micro-batch (here 50 steps
    of 16 rows, 32,000 tokens at the row's speed), and says so; a stage of a staged run skips it, as its job does."""
    from tunelab.catalog import KNOWN_MODELS
    from tunelab.forecast.runs import run_time
    from tunelab.ledger.history import HistoryRun
    from tunelab.rundir.config import RunConfig

    model = "qwen2.5-0.5b"  # a catalog model: no directory needed
    arch = KNOWN_MODELS[model]
    cfg = RunConfig(name="r", kind="finetune", experiment="e", experiment_dir=str(tmp_path),  # type: ignore[arg-type]
                    model={"name": "q", "path": model}, dataset={"name": "d", "path": str(tmp_path)},
                    training={"epochs": 1, "batch_size": 16, "max_seq_len": 64})
    assert cfg.training is not None
    probed = HistoryRun(key="p", source="tunelab", origin="probed", run="p", device="cpu", layers=arch.layers,
                        hidden=arch.hidden, parameters=arch.parameters, tokens_per_s=1000.0, per_token_s=0.001,
                        step_fixed_s=0.01, startup_s=5.0, batch_size=16, lora_rank=cfg.training.lora_rank)
    lengths = [40] * 800  # 800 rows of 40 tokens: 50 steps of 16
    with_it = run_time(cfg, None, lengths, [], [probed])
    without = run_time(cfg, None, lengths, [], [probed], stage=True)
    assert with_it.steps == 50 and with_it.train_tokens == 32_000 and with_it.tokens_per_s
    micro_batch_s = 32_000 / with_it.tokens_per_s / 50
    by_hand = 3 * micro_batch_s * (8 + 32) / 16  # 2 repeats + the warm-up, each a micro-batch of 8 and one of 32
    assert with_it.seconds is not None and without.seconds is not None
    assert with_it.seconds - without.seconds == pytest.approx(by_hand, abs=0.1)  # each rounded to 0.1 s
    assert f"step-cost calibration after training ({by_hand:.1f} s" in with_it.source
    assert "calibration" not in without.source
    # two processes: the job takes no step cost (a collective in every step), and the plan prices none
    two = cfg.model_copy(update={"resources": cfg.resources.model_copy(update={"nproc_per_run": 2})})
    shared = run_time(two, None, lengths, [], [probed])
    assert shared.processes == 2 and "calibration" not in shared.source


@pytest.mark.parametrize("processes, stage, takes", [(1, False, True), (2, False, False), (1, True, False),
                                                     (4, True, False)])
def test_only_a_one_process_run_that_is_no_stage_calibrates(processes, stage, takes):
    from tunelab.rundir.summary import calibrates_step_cost

    assert calibrates_step_cost(processes, stage) is takes
