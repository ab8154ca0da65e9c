"""`tunelab run`'s progress bars as the terminal shows them once the sweep ends (the demo's train section): a
run's bar is filled from its status.json at every look, and the job can end between two looks — the last look
saw step 580 of 600, the job then wrote its last step and exited — so the bar of a run that completed must end
at the step its status.json ends at, never at the last step a look happened to see."""

from __future__ import annotations

import io

from rich.console import Console

from tunelab.execute.executor import JobKind
from tunelab.execute.failures import COMPLETED, FAILED
from tunelab.execute.jobs import JobRow
from tunelab.execute.sweep_view import BarsView
from tunelab.rundir import write_status
from tunelab.rundir.config import RunConfig


def _run(root, name: str) -> RunConfig:
    return RunConfig(name=name, kind="finetune", experiment="demo", experiment_dir=str(root),
                     model={"name": "tiny", "path": str(root / "model")},
                     dataset={"name": "caps", "path": str(root / "caps.json")},
                     prompt="Capitalize the word: {input}", training={}, eval={})


def _job(run: str, failure) -> JobRow:
    return JobRow(id=1, run=run, kind=JobKind.TRAIN, job_id="1", attempt=1, executor="local", submitted_at="",
                  state="COMPLETED" if failure == COMPLETED else "FAILED", updated_at="", failure=failure,
                  exit_code="0:0" if failure == COMPLETED else "1:0")


def test_bars_end_where_each_run_ended(tmp_path):
    out = io.StringIO()
    view = BarsView(Console(file=out, width=120))
    done, failed = _run(tmp_path, "tiny-2x128_r4"), _run(tmp_path, "tiny-2x128_r16")
    runs = {c.name: c for c in (done, failed)}
    with view.live(2):
        for cfg in runs.values():
            cfg.run_dir.mkdir(parents=True)
            view.submitted(cfg, JobKind.TRAIN, "1", None, "first submission", "cpu")
            write_status(cfg.run_dir, state="running", step=580, total_steps=600)  # what the last look saw
        view.tick(runs)
        write_status(done.run_dir, state="completed", step=600)  # then the job ended: its last step
        write_status(failed.run_dir, state="failed", step=590, error="NoSpaceError: no space left on x")
        view.ended(_job(done.name, COMPLETED))
        view.ended(_job(failed.name, FAILED))
    lines = out.getvalue().splitlines()
    assert "600/600" in next(x for x in lines if "tiny-2x128_r4: completed" in x), lines
    assert "590/600" in next(x for x in lines if "tiny-2x128_r16: failed" in x), lines  # where it stopped
    assert "2/2" in next(x for x in lines if "sweep (2 runs)" in x), lines
