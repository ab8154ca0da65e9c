"""Dataloader workers, data wait, curriculum orders and their record (no training here: see e2e)."""

from __future__ import annotations

import os

import pytest
import torch
from pydantic import ValidationError

from tunelab.errors import TunelabError
from tunelab.fsutil import read_jsonl
from tunelab.report.checks import DATA_WAIT_FLAG, data_wait_issue
from tunelab.rundir.summary import Summary
from tunelab.spec.training import ByField, TrainingConfig
from tunelab.train.dataloading import TimedIterator, dataloader_args, resolve_workers, wait_summary
from tunelab.train.ordering import OrderLog, fixed_order, order_record, record_draws


def test_worker_default_from_slurm_cpus_per_task():
    """Slurm's allocation where it is the smallest limit (host/cores.py); one beyond the mask is never used."""
    from tunelab.host.cores import usable_cores

    n = usable_cores({}).count  # what this process may use without Slurm
    w = resolve_workers(None, cuda=True, processes=1, env={"SLURM_CPUS_PER_TASK": str(n)})
    assert (w.count, w.source, w.cpus) == (min(n - 1, 8), f"SLURM_CPUS_PER_TASK={n}", n)  # one CPU drives the GPU
    assert resolve_workers(None, True, 2, {"SLURM_CPUS_PER_TASK": str(n)}).count == max(0, min(n // 2 - 1, 8))
    assert resolve_workers(None, True, 1, {"SLURM_CPUS_PER_TASK": "1"}).count == 0
    w = resolve_workers(None, True, 1, {"SLURM_CPUS_PER_TASK": str(n + 64)})
    assert (w.count, w.cpus) == (min(n - 1, 8), n) and not w.source.startswith("SLURM")  # capped by the machine


def test_worker_default_without_slurm_is_the_affinity_and_given_count_wins():
    from tunelab.host.cgroup import cpu_quota

    n = len(os.sched_getaffinity(0))
    if (quota := cpu_quota()) is not None and quota.cpus < n:
        pytest.skip(f"this process's cgroup quota ({quota.describe()}) is below its mask: the quota is the limit")
    w = resolve_workers(None, cuda=True, env={})
    assert (w.count, w.source) == (min(max(n - 1, 0), 8), f"cpu affinity {n}")
    assert resolve_workers(None, cuda=False, env={"SLURM_CPUS_PER_TASK": "8"}).count == 0  # CPU training
    assert resolve_workers(3, cuda=False, env={}).count == 3
    assert dataloader_args(resolve_workers(2, True, env={}), cuda=True) == {
        "dataloader_num_workers": 2, "dataloader_persistent_workers": True, "dataloader_pin_memory": True}
    assert dataloader_args(resolve_workers(0, False, env={}), cuda=False)["dataloader_pin_memory"] is False


def test_timed_iterator_adds_the_time_next_blocks(monkeypatch):
    """On a clock set here: each fetch takes 0.02 s of it, the consumer's work between fetches 1 s; the waits
    counted are the fetches' alone (three, and the last call's, which ends the iteration, taking none)."""
    from types import SimpleNamespace

    from tunelab.train import dataloading

    clock = [100.0]
    monkeypatch.setattr(dataloading, "time", SimpleNamespace(perf_counter=lambda: clock[0]))

    def slow():
        for i in range(3):
            clock[0] += 0.02  # the fetch
            yield i

    waited = [0.5]  # a resumed run's counter goes on from where it was
    got = []
    for item in TimedIterator(slow(), waited):
        got.append(item)
        clock[0] += 1.0  # the training step between fetches: not a wait
    assert got == [0, 1, 2] and waited[0] == pytest.approx(0.5 + 3 * 0.02, abs=1e-9)


def test_wait_summary_is_the_fraction_of_training_time():
    assert wait_summary(2.0, 20.0) == {"data_wait_s": 2.0, "data_wait_fraction": 0.1}
    assert wait_summary(0.0, None)["data_wait_fraction"] is None


def test_report_flags_data_wait_above_the_threshold_with_the_fix():
    assert data_wait_issue("r", Summary(data_wait_fraction=DATA_WAIT_FLAG * 0.8, data_wait_s=4)) is None
    assert data_wait_issue("r", Summary()) is None  # runs from before the measurement
    issue = data_wait_issue("r", Summary(data_wait_fraction=0.2, data_wait_s=12.5, dataloader_workers=0,
                                         dataloader_workers_source="cpu training"))
    assert issue.kind == "data-wait" and "20%" in issue.detail and "training.dataloader_workers" in issue.detail


def test_fixed_orders():
    lengths = [5, 3, 9, 3]
    assert fixed_order("shuffled", lengths) is None
    assert fixed_order("as_given", lengths) == [0, 1, 2, 3]
    assert fixed_order("by_length", lengths) == [1, 3, 0, 2]  # stable: ties keep the file's order
    assert fixed_order(ByField(by_field="d"), lengths, [0.5, 0.1, 0.3, 0.2]) == [1, 3, 2, 0]
    with pytest.raises(TunelabError, match="row 2 has no value") as e:
        fixed_order(ByField(by_field="d"), lengths, [1, 2, None, 3])
    assert e.value.field == "training.order.by_field: d"
    with pytest.raises(TunelabError, match="mixed types"):
        fixed_order(ByField(by_field="d"), lengths, [1, "a", 2, 3])


def test_order_spec_and_packing_refused():
    assert TrainingConfig(order={"by_field": "difficulty"}).order == ByField(by_field="difficulty")
    with pytest.raises(ValidationError, match="needs packing: false"):
        TrainingConfig(order="by_length", packing=True)
    with pytest.raises(ValidationError):
        TrainingConfig(order="random")


def test_record_draws_reports_what_a_seeded_sampler_yields(tmp_path):
    sampler = torch.utils.data.RandomSampler(range(10), generator=torch.Generator().manual_seed(3))
    seen: list[list[int]] = []
    record_draws(sampler, seen.append)
    first, second = list(sampler), list(sampler)
    assert seen == [first, second] and sorted(first) == list(range(10)) and first != second
    assert isinstance(sampler, torch.utils.data.RandomSampler)
    # a resumed epoch drawing the same order is written once; another order for it is kept
    log = OrderLog(tmp_path, [])
    for rec in (order_record(0, "shuffled", 3, first), order_record(0, "shuffled", 3, first),
                order_record(1, "shuffled", 3, second)):
        log.append(rec)
    assert [(r["epoch"], r["indices"]) for r in read_jsonl(tmp_path / "data_order.jsonl")] == [(0, first), (1, second)]


def test_run_issues_lists_the_data_wait_of_a_starved_run(tmp_path):
    from types import SimpleNamespace

    from tunelab.report.checks import run_issues
    from tunelab.report.data import RunData

    def run(frac: float) -> RunData:
        return RunData(name="r", kind="fine-tuned", model="m", dataset="d", factors={}, state="running",
                       run_dir=tmp_path, rel_dir="runs/r", config=SimpleNamespace(attempt=1, training=None, stages=[], trainings=lambda: []),
                       summary=Summary(data_wait_fraction=frac, data_wait_s=30.0, dataloader_workers=0),
                       metrics_rows=3)

    assert [i.kind for i in run_issues(run(0.12))] == ["data-wait"]
    assert run_issues(run(0.01)) == []


def test_validate_warns_when_dataloader_workers_exceed_the_slurm_cpus(write_spec):
    from tunelab.catalog import resolve_gpu
    from tunelab.plan.validate import validate_path

    def warnings(workers: int | None, cpus: int) -> list[str]:
        spec = write_spec(training={"dataloader_workers": workers},
                          resources={"executor": "slurm", "slurm": {"cpus_per_task": cpus}})
        return [w for c in validate_path(spec, resolve_gpu("H100")) for w in c.warnings]

    assert any("dataloader_workers 4" in w and "cpus_per_task 4" in w for w in warnings(4, 4))  # 4 + 1 > 4
    assert not any("dataloader_workers" in w for w in warnings(3, 4))  # 3 workers + the training process fit
    assert not any("dataloader_workers" in w for w in warnings(None, 2))  # unset: chosen in the job to fit


def test_order_swept_as_a_factor_names_runs_and_validates_each_level(write_spec):
    from tunelab.plan.planner import make_plan

    spec = write_spec(factors={"lora_rank": [4], "order": ["shuffled", {"by_field": "input"}]}, controls=False)
    runs = make_plan(spec, estimates=False).runs
    assert [r.training.order for r in runs] == ["shuffled", ByField(by_field="input")]
    assert runs[1].name.endswith("by_field-input") and "{" not in runs[1].name
