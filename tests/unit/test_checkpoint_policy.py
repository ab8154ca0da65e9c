"""checkpoint_every / keep_checkpoints in the spec, the time-limit warning in job.sbatch, which trainer
states are kept, and the signal -> save -> stop path of train/interrupts.py (no training here)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tunelab.errors import TunelabError
from tunelab.execute.slurm_jobs import sbatch_options, warning_seconds
from tunelab.rundir.checkpoints import complete_epochs
from tunelab.rundir.layout import COUNTERS_FILE
from tunelab.scaffold.write import scaffold
from tunelab.spec import TrainingConfig
from tunelab.train.checkpoints import checkpoint_at_epoch_end, prune_trainer_checkpoints
from tunelab.train.interrupts import SignalWatch, make_checkpoint_policy
from tunelab.train.resume import republish_missing_epochs


@pytest.mark.parametrize("value,interval", [(200, (200, None)), ("200", (200, None)), ("30min", (None, 1800.0)),
                                            ("2h", (None, 7200.0)), ("90s", (None, 90.0)), (None, (None, None))])
def test_checkpoint_every_steps_or_duration(value, interval):
    assert TrainingConfig(checkpoint_every=value).checkpoint_interval == interval


def test_bad_checkpoint_settings_name_the_field(write_spec):
    from tunelab.spec import load_spec

    with pytest.raises(TunelabError, match=r"training.checkpoint_every: .*'30 minutes'"):
        load_spec(write_spec(training={"checkpoint_every": "30 minutes"}))
    with pytest.raises(TunelabError, match=r"training.checkpoint_every: .*at least 1"):
        load_spec(write_spec(training={"checkpoint_every": 0}))
    with pytest.raises(TunelabError, match=r"training.keep_checkpoints"):
        load_spec(write_spec(training={"keep_checkpoints": 0}))


def test_train_job_is_warned_before_its_limit_requeues_and_appends_its_log(write_spec):
    assert warning_seconds("04:00:00", 120) == 120
    assert warning_seconds("1", 120) == 30  # at most half a short limit
    assert warning_seconds("04:00:00", 0) == 0
    spec = write_spec(factors={"lora_rank": [4]}, controls=False,
                      resources={"executor": "slurm", "gpus_per_run": 0, "slurm": {"time_limit": "1"}})
    cfg = scaffold(spec).runs[0]
    train = sbatch_options(cfg, "train")
    assert {"--signal=B:USR1@30", "--requeue", "--open-mode=append"} <= set(train)
    assert not any(o.startswith(("--signal", "--requeue")) for o in sbatch_options(cfg, "eval"))
    assert "#SBATCH --signal=B:USR1@30" in (cfg.run_dir / "job.sbatch").read_text()
    off = cfg.model_copy(update={"resources": cfg.resources.model_copy(update={
        "slurm": cfg.resources.slurm.model_copy(update={"signal_before_limit_s": 0})})})
    assert not any(o.startswith("--signal") for o in sbatch_options(off, "train"))


def _ckpt(state_dir: Path, step: int, epoch: float, complete: bool = True, max_steps: int = 80) -> Path:
    d = state_dir / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "trainer_state.json").write_text(json.dumps({"epoch": epoch, "global_step": step, "max_steps": max_steps}))
    (d / "adapter_model.safetensors").write_text("x")
    (d / "adapter_config.json").write_text("{}")
    if complete:
        (d / COUNTERS_FILE).write_text("{}")
    return d


def _steps(state_dir: Path) -> list[int]:
    return sorted(int(d.name.split("-")[1]) for d in state_dir.iterdir())


def test_retention_keeps_epoch_ends_and_the_newest_mid_epoch_state(tmp_path):
    s = tmp_path / "trainer_state"
    for step, epoch in ((10, 0.25), (20, 0.5), (40, 1.0), (50, 1.25)):
        _ckpt(s, step, epoch)
    _ckpt(s, 30, 0.75, complete=False)  # a kill's leftover
    assert checkpoint_at_epoch_end(s / "checkpoint-40") and not checkpoint_at_epoch_end(s / "checkpoint-50")
    prune_trainer_checkpoints(s, None)
    assert _steps(s) == [40, 50]
    _ckpt(s, 60, 1.5)
    prune_trainer_checkpoints(s, None)
    assert _steps(s) == [40, 60]
    _ckpt(s, 70, 1.75, complete=False)  # newer than the newest complete one: a save in progress stays
    prune_trainer_checkpoints(s, 1)
    assert _steps(s) == [60, 70]
    # the last step of a max_steps run that ends mid-epoch is an epoch end (its epoch is published)
    assert checkpoint_at_epoch_end(_ckpt(s, 75, 1.875, max_steps=75))


def test_republishing_skips_mid_epoch_states(tmp_path):
    s = tmp_path / "trainer_state"
    _ckpt(s, 20, 0.5)
    last = _ckpt(s, 40, 1.0)
    _ckpt(s, 50, 1.25)
    assert republish_missing_epochs(s, tmp_path, last) == [0]
    assert complete_epochs(tmp_path) == [0]


def test_a_stop_signal_saves_at_the_next_step_and_stops(tmp_path):
    from transformers import TrainerControl, TrainerState

    watch = SignalWatch()
    old = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        watch.install()
        policy = make_checkpoint_policy(3, None, watch)
        state, control = TrainerState(global_step=1), TrainerControl()
        policy.on_step_end(None, state, control)
        assert not control.should_save
        state.global_step = 3
        policy.on_step_end(None, state, control)
        assert control.should_save and not control.should_training_stop
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # the first signal is the one remembered
        assert watch.received == signal.SIGUSR1
        control = TrainerControl()
        state.global_step = 4
        policy.on_step_end(None, state, control)
        assert control.should_save and control.should_training_stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def test_time_based_checkpoints(monkeypatch):
    from transformers import TrainerControl, TrainerState

    import tunelab.train.interrupts as intr

    clock = [1000.0]
    monkeypatch.setattr(intr.time, "monotonic", lambda: clock[0])
    policy = make_checkpoint_policy(None, 60.0, SignalWatch())
    control = TrainerControl()
    policy.on_step_end(None, TrainerState(global_step=1), control)
    assert not control.should_save
    clock[0] += 61
    policy.on_step_end(None, TrainerState(global_step=2), control)
    assert control.should_save
    policy.on_save(None, TrainerState(global_step=2), control)
    control = TrainerControl()
    policy.on_step_end(None, TrainerState(global_step=3), control)
    assert not control.should_save


def test_no_second_save_at_an_epoch_end_just_saved():
    from transformers import TrainerControl, TrainerState

    policy = make_checkpoint_policy(20, None, SignalWatch())
    control = TrainerControl()
    policy.on_step_end(None, TrainerState(global_step=40), control)
    policy.on_save(None, TrainerState(global_step=40), control)
    control.should_save = True  # what the Trainer's epoch-end flow asks next
    policy.on_epoch_end(None, TrainerState(global_step=40), control)
    assert not control.should_save
    control.should_save = True
    policy.on_epoch_end(None, TrainerState(global_step=41), control)
    assert control.should_save


def test_a_process_without_the_signal_stops_with_the_others():
    """In a distributed run the stop (and a wall-time save) is agreed: a rank the signal has not reached
    yet saves and stops at the same step (agree stands in for train/distributed.agree's all-reduce)."""
    from transformers import TrainerControl, TrainerState

    seen = []
    policy = make_checkpoint_policy(None, 3600.0, SignalWatch(), agree=lambda flag: seen.append(flag) or True)
    control = TrainerControl()
    policy.on_step_end(None, TrainerState(global_step=7), control)
    assert control.should_save and control.should_training_stop and seen == [False, False]



def test_handlers_go_back_after_training():
    """The watch must not outlive training: a process that trained in-process (the demo, a test) would
    otherwise ignore SIGTERM for the rest of its life."""
    before = signal.getsignal(signal.SIGTERM)
    watch = SignalWatch().install()
    assert signal.getsignal(signal.SIGTERM) != before
    os.kill(os.getpid(), signal.SIGTERM)
    assert watch.received == signal.SIGTERM  # only a flag: this process is still here
    watch.restore()
    assert signal.getsignal(signal.SIGTERM) == before


def test_the_jobs_watch_catches_a_stop_signal_around_training_and_trainings_watch_inherits_one_caught_before():
    """job.train's watch: a SIGTERM before training makes training's own watch stop at its first step; one after
    training (a pruned trial cancelled at its last validation) only sets a flag, so the run completes instead of
    dying with status.json saying running. Real signals to this process."""
    before = signal.getsignal(signal.SIGTERM)
    job = SignalWatch().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # before training: caught, this process lives on
        assert job.received == signal.SIGTERM
        training = SignalWatch().install()
        assert training.received == signal.SIGTERM  # stops at its first step, saved
        training.restore()
        job.received = None
        os.kill(os.getpid(), signal.SIGUSR1)  # after training, before completion: caught by the job's watch again
        assert job.received == signal.SIGUSR1
    finally:
        job.restore()
    assert signal.getsignal(signal.SIGTERM) == before
    nothing = SignalWatch().install()
    assert nothing.received is None
    nothing.restore()
