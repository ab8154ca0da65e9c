"""resources.cpu_runs_at_once: auto, planned for real on this machine's CPU (the tiny model's steps timed at each
share's thread count): whichever number the timings choose, plan.md, every run.yaml and the local executor's
slots hold that one number, and the makespan plan.md prints is the executor's policy over that many slots of each
run's training, evaluation and job start-ups — the one run.yaml records (issue 54)."""

import re

import pytest

from tunelab.execute.local_jobs import Devices
from tunelab.execute.schedule import RunNeed, cpu_devices, forecast
from tunelab.fsutil import human_seconds
from tunelab.host.cores import usable_cores
from tunelab.rundir.config import load_run_config
from tunelab.scaffold.write import scaffold


@pytest.fixture
def no_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("TUNELAB_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def test_auto_sharing_is_one_number_from_plan_to_run_yaml_to_the_executor(no_gpu, write_spec, tmp_path):
    if usable_cores().count < 2:
        pytest.skip("one core: nothing to share")
    spec = write_spec(factors={"lora_rank": [4, 8, 16]}, controls=False, resources={"cpu_runs_at_once": "auto"})
    plan = scaffold(spec)
    sharing = plan.cpu_sharing
    assert sharing is not None and [o.runs_at_once for o in sharing.options][:2] == [1, 2]
    k = sharing.chosen.runs_at_once
    assert sharing.chosen in sharing.options
    runs = [load_run_config(p) for p in sorted((tmp_path / "exp" / "runs").glob("*/run.yaml"))]
    assert len(runs) == 3 and {c.resources.cpu_runs_at_once for c in runs} == {k}
    devices = Devices(runs)
    assert len(devices.cpus) == k  # the executor's CPU slots: the plan's number
    # plan.md: the choice, every option's makespan, and the predicted makespan over k slots of each run's training
    # (its start-up inside), its evaluation job's start (the run's timed start-up) and its evaluation, from run.yaml
    text = (tmp_path / "exp" / "plan.md").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("CPU: "))
    assert ("one run at a time" if k == 1 else f"{k} runs side by side") in line
    assert re.findall(r"(\d+) at once", line) == [str(o.runs_at_once) for o in sharing.options]
    assert all(c.estimate.startup_s and c.estimate.startup_kind != "assumed" and c.estimate.eval_seconds for c in runs)
    needs = [RunNeed(c.name, 1, c.estimate.seconds + c.estimate.startup_s + c.estimate.eval_seconds, None)
             for c in runs]
    makespan = forecast(cpu_devices(k), needs).makespan_s
    assert len({c.estimate.makespan_s for c in runs}) == 1 and runs[0].estimate.makespan_s == pytest.approx(makespan,
                                                                                                        abs=0.5)
    assert f"**Predicted makespan: {human_seconds(runs[0].estimate.makespan_s)} (P10–P90" in line
    # the runs' estimates are the chosen option's (made at its share's threads, the timings read from one cache)
    training = forecast(cpu_devices(k), [RunNeed(c.name, 1, c.estimate.seconds, None) for c in runs]).makespan_s
    assert training == pytest.approx(sharing.chosen.makespan_s, rel=0.02)
