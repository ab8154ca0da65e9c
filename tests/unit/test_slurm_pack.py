"""Node jobs (resources.slurm.pack: node): which runs share a job, what the job asks Slurm for, and its
time limit from the local scheduler's own forecast (the real cluster test is in tests/e2e/slurm)."""

from __future__ import annotations

from tunelab.catalog import resolve_gpu
from tunelab.execute.slurm_pack import pack_groups, pack_options, pack_time_limit
from tunelab.scaffold.write import scaffold


def _runs(write_spec, ranks, **slurm):
    spec = write_spec(controls=False, factors={"lora_rank": ranks},
                      resources={"executor": "slurm", "gpus_per_run": 1,
                                 "slurm": {"pack": "node", "time_limit": "01:00:00", "partition": "gpu", **slurm}})
    return scaffold(spec, gpu=resolve_gpu("H100")).runs


def test_a_node_job_holds_the_nodes_gpus_and_lasts_the_forecast_makespan(write_spec):
    runs = _runs(write_spec, [4, 8, 16, 32, 64], pack_gpus=4)
    (group,) = pack_groups(runs)
    assert sorted(c.name for c in group) == sorted(c.name for c in runs)
    opts = pack_options(group)
    assert "--gres=gpu:4" in opts and "--partition=gpu" in opts and "--nodes=1" in opts
    assert not any(o.startswith("--signal") for o in opts)
    # five 1-hour runs on 4 GPUs: four at once, then the fifth -> 2 h of training, + the longest evaluation's
    # limit: each run's predicted evaluation (the tiny model's, well under 10 min at worst) × margin → 15 min
    assert {c.estimate.eval_slurm_time_limit for c in group if c.estimate} == {"00:15:00"}
    assert pack_time_limit(group) == "02:15:00"
    # slurm.eval_time_limit set: it wins over the prediction
    limited = _runs(write_spec, [4, 8, 16, 32, 64], pack_gpus=4, eval_time_limit="01:00:00")
    assert pack_time_limit(pack_groups(limited)[0]) == "03:00:00"


def test_pack_runs_splits_a_sweep_into_several_node_jobs(write_spec):
    runs = _runs(write_spec, [4, 8, 16], pack_gpus=2, pack_runs=2)
    groups = pack_groups(runs)
    assert [len(g) for g in groups] == [2, 1]
    # two 1-hour runs side by side on 2 GPUs: 1 h + the predicted evaluation's 15 min
    assert pack_time_limit(groups[0]) == "01:15:00" and pack_time_limit(groups[1]) == "01:15:00"
