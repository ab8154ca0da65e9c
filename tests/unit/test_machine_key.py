"""host/machine.py: a timing cached on one CPU is not reused on another of the same host name and CPU count (this
project's VM moved from an AMD EPYC to an Intel Xeon under the same name): the CPU's model read from /proc/cpuinfo's
format, the linear-kernel choice timed again, through the real disk cache, when only the model differs, and a
history row of another CPU left out of a run's speed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.host import machine
from tunelab.models import cpu_linear


def test_the_cpu_model_is_cpuinfos_first_model_name_else_the_platforms(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B45 128-Core\n\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC 9B45 128-Core\n")
    machine.cpu_model.cache_clear()
    try:
        assert machine.cpu_model(info) == "AMD EPYC 9B45 128-Core"
        empty = tmp_path / "cpuinfo-empty"
        empty.write_text("processor\t: 0\nmodel name\t:\n")  # an empty name is none
        assert machine.cpu_model(empty) not in ("", "AMD EPYC 9B45 128-Core")
        assert machine.cpu_model(tmp_path / "absent") not in ("", "AMD EPYC 9B45 128-Core")
    finally:
        machine.cpu_model.cache_clear()


def test_a_kernel_choice_timed_on_one_cpu_is_timed_again_on_another(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TUNELAB_CPU_MATMUL", raising=False)
    timed: list[str] = []

    def time_both(in_features: int, out_features: int) -> dict[str, str]:
        timed.append(machine.cpu_model())
        return {"kernel": "aten", "why": f"timed on {machine.cpu_model()}"}

    monkeypatch.setattr(cpu_linear, "_time_both", time_both)
    for model in ("AMD EPYC 9B45", "Intel Xeon @ 2.80GHz", "AMD EPYC 9B45"):
        monkeypatch.setattr(machine, "cpu_model", lambda model=model: model)
        cpu_linear._chosen.cache_clear()  # this process's memory of it: a new process asks the disk cache
        assert cpu_linear.choose(32, 48).reason == f"timed on {model}"
    assert timed == ["AMD EPYC 9B45", "Intel Xeon @ 2.80GHz"]  # the EPYC's timing kept for the EPYC
    cpu_linear._chosen.cache_clear()


def test_a_history_row_of_another_cpu_does_not_price_this_ones_runs(tiny_model: Path) -> None:
    from tunelab.catalog import resolve_architecture
    from tunelab.forecast.speedhistory import speed_from_history
    from tunelab.ledger.history import HistoryRun

    arch = resolve_architecture(tiny_model)

    def row(key: str, cpu: str | None, tps: float) -> HistoryRun:
        return HistoryRun(key=key, source="tunelab", origin="measured", model="tiny", layers=arch.layers,
                          hidden=arch.hidden, parameters=arch.parameters, device="cpu", cpu_model=cpu,
                          tokens_per_step=216.0, tokens_per_s=tps, steps=40)

    here, other = machine.cpu_model(), "Some Other CPU @ 9.99GHz"
    assert here != other
    rows = [row("other", other, 9000.0), row("here", here, 1000.0)]
    speed = speed_from_history(arch, None, 216.0, 27, rows)
    assert [r.key for r in speed.rows] == ["here"] and speed.tokens_per_s == 1000.0
    unknown = [row("other", other, 9000.0), row("before", None, 2000.0)]  # recorded before the field: kept
    assert [r.key for r in speed_from_history(arch, None, 216.0, 27, unknown).rows] == ["before"]
    assert speed_from_history(arch, None, 216.0, 27, rows[:1]).tokens_per_s is None  # nothing of this CPU


def test_a_start_up_recorded_on_another_cpu_does_not_price_this_ones_jobs(tiny_model: Path) -> None:
    from tunelab.catalog import resolve_architecture
    from tunelab.forecast.jobstart import job_start
    from tunelab.ledger.history import HistoryRun

    arch = resolve_architecture(tiny_model)
    rows = [HistoryRun(key=key, source="tunelab", origin="measured", model="tiny", layers=arch.layers,
                       hidden=arch.hidden, parameters=arch.parameters, device="cpu", cpu_model=cpu, startup_s=s)
            for key, cpu, s in (("other", "Some Other CPU @ 9.99GHz", 30.0), ("here", machine.cpu_model(), 4.0))]
    assert job_start(str(tiny_model), None, rows).seconds == 4.0
    assert "history" not in job_start(str(tiny_model), None, rows[:1]).source  # nothing of this CPU: assumed
