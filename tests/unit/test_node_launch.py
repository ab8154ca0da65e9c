"""Runs that span nodes, without a cluster: the torchrun arguments each node builds from its Slurm environment (read
back by torchrun's own parser), the job script rendered from run.yaml, and where such a run may not go (a job
array, a node job, the local executor). tests/e2e/slurm/test_slurm_multinode.py runs them on two real nodes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tunelab.errors import TunelabError
from tunelab.execute.executor import JobKind
from tunelab.execute.local_jobs import Devices
from tunelab.execute.slurm_cli import array_groups
from tunelab.execute.slurm_jobs import sbatch_options, write_slurm_scripts
from tunelab.execute.slurm_pack import is_packed, pack_groups
from tunelab.rundir.config import RunConfig
from tunelab.scaffold.write import scaffold
from tunelab.train.interrupts import _requeue_commands
from tunelab.train.nodes import first_host, node_place, torchrun_args

RUN_YAML = Path("/exp/runs/r/run.yaml")
STEP = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_STEP_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "gpu[007-008]"}  # what srun gives each task of a two-node step


def _launch_config(argv: list[str], monkeypatch):
    """torchrun's own reading of the arguments (LaunchConfig, command, its arguments)."""
    from torch.distributed.run import config_from_args, get_args_parser

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # config_from_args sets it in os.environ when absent
    return config_from_args(get_args_parser().parse_args(argv))


def test_every_node_meets_the_same_rendezvous_hosted_by_the_first(monkeypatch, tmp_path):
    seen = []
    for node in (0, 1):
        place = node_place({**STEP, "SLURM_NODEID": str(node)}, 2, RUN_YAML)
        cfg, _, args = _launch_config(torchrun_args(place, 4, ["run.yaml"], str(tmp_path)), monkeypatch)
        assert (cfg.min_nodes, cfg.max_nodes, cfg.nproc_per_node, cfg.max_restarts) == (2, 2, 4, 0)
        assert args == ["-u", "-m", "tunelab.train.job", "run.yaml"]
        seen.append((cfg.rdzv_backend, cfg.rdzv_endpoint, cfg.run_id, cfg.rdzv_configs["is_host"]))
    # port 20000 + job id mod 10000; the store on node 0 alone
    assert seen == [("c10d", "gpu007:24242", "4242", "1"), ("c10d", "gpu007:24242", "4242", "0")]


def test_the_ray_job_s_nodes_meet_at_the_first_node_s_address(monkeypatch, tmp_path):
    """execute/ray_span.py tells each node's job process its rank, the first node's address and the submission id;
    the port is the id's crc32 (zlib's, worked here by binascii: the same on every node) in Slurm's port range."""
    import binascii

    sid = "tl-train-0123456789ab"
    port = 20000 + binascii.crc32(sid.encode()) % 10000
    seen = []
    for node in (0, 1):
        env = {"TUNELAB_NODES": "2", "TUNELAB_NODE_RANK": str(node), "TUNELAB_RDZV_HOST": "10.78.0.1",
               "TUNELAB_RDZV_ID": sid, "TUNELAB_NODE_ADDRESS": f"10.78.0.{node + 1}", **STEP}  # Ray's wins
        cfg, _, _ = _launch_config(torchrun_args(node_place(env, 2, RUN_YAML), 1, ["run.yaml"],
                                                   str(tmp_path)), monkeypatch)
        seen.append((cfg.rdzv_endpoint, cfg.run_id, cfg.rdzv_configs["is_host"], cfg.local_addr))
    # each agent advertises its node's address (the workers' store), not its hostname's FQDN
    assert seen == [(f"10.78.0.1:{port}", sid, "1", "10.78.0.1"), (f"10.78.0.1:{port}", sid, "0", "10.78.0.2")]
    with pytest.raises(TunelabError, match="reserved 3 node"):
        node_place({"TUNELAB_NODES": "3", "TUNELAB_NODE_RANK": "0", "TUNELAB_RDZV_HOST": "h",
                    "TUNELAB_RDZV_ID": sid}, 2, RUN_YAML)
    with pytest.raises(TunelabError, match="TUNELAB_RDZV_HOST"):
        node_place({"TUNELAB_NODE_RANK": "0"}, 2, RUN_YAML)


def test_the_agent_passes_slurm_s_warning_on_to_the_workers(monkeypatch, tmp_path):
    """srun forwards SIGUSR1 (the time-limit warning) to each node's job process; torchrun's agent must pass it on
    to the trainers, or the signal's default action ends the agent and the run saves nothing."""
    from tunelab.train.launch import SIGNALS_ENV, forward_signals

    for name in SIGNALS_ENV:  # absent, and absent again after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    forward_signals()
    cfg, _, _ = _launch_config(torchrun_args(None, 2, ["run.yaml"], str(tmp_path)), monkeypatch)
    assert "SIGUSR1" in cfg.signals_to_handle.split(",") and "SIGTERM" in cfg.signals_to_handle.split(",")


def test_one_node_keeps_the_standalone_launch(monkeypatch, tmp_path):
    assert node_place({**STEP, "SLURM_NODEID": "0"}, 1, RUN_YAML) is None  # one node: the allocation is not asked
    argv = torchrun_args(None, 2, ["run.yaml"], str(tmp_path))
    assert argv[:3] == ["--standalone", "--nnodes", "1"]
    cfg, _, args = _launch_config(argv, monkeypatch)
    assert (cfg.min_nodes, cfg.max_nodes, cfg.nproc_per_node) == (1, 1, 2) and args[-1] == "run.yaml"
    assert cfg.logs_specs.root_log_dir == str(tmp_path)  # the launch's own dir, not one torch makes in /tmp


@pytest.mark.parametrize("env,words", [
    ({}, "only inside a Slurm allocation"),
    ({"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_NODEID": "0"}, "with srun"),  # the batch step
    ({**STEP, "SLURM_STEP_NUM_NODES": "1", "SLURM_NODEID": "0"}, "spans 1 node(s), the run 2"),
    ({**STEP, "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": ""}, "cannot read the Slurm allocation"),
])
def test_a_run_spanning_nodes_refuses_to_train_outside_its_allocation(env, words):
    with pytest.raises(TunelabError) as err:
        node_place(env, 2, RUN_YAML)
    assert err.value.field == "resources.nodes_per_run" and err.value.file == str(RUN_YAML)
    assert words in str(err.value)


@pytest.mark.parametrize("nodelist,first", [
    ("tl-node[1-2]", "tl-node1"), ("gpu[007-009,012],cpu1", "gpu007"), ("a1,b2", "a1"), ("single", "single"),
    ("rack[1-2]-n[3-4]", "rack1-n3"), ("x[3,1]", "x3"),
])
def test_first_host_of_a_hostlist(nodelist, first):
    assert first_host(nodelist) == first
    if shutil.which("scontrol"):  # Slurm's own expansion agrees, where scontrol finds a configuration to start with
        shown = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
        if shown.returncode == 0:
            assert shown.stdout.split()[0] == first


def test_the_job_s_own_requeue_first_allows_requeueing_when_it_spans_nodes(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_NUM_NODES", raising=False)
    assert _requeue_commands("12") == [["scontrol", "requeue", "12"]]
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    assert _requeue_commands("12") == [["scontrol", "update", "JobId=12", "Requeue=1"], ["scontrol", "requeue", "12"]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, spec_in) -> list[RunConfig]:
    """Two runs (ranks 4, 8) that span two nodes each, with arrays and node jobs asked for."""
    spec = spec_in(tmp_path_factory.mktemp("multinode") / "exp", factors={"lora_rank": [4, 8]}, controls=False,
                   resources={"executor": "slurm", "gpus_per_run": 0, "nodes_per_run": 2,
                              "slurm": {"partition": "multinode", "time_limit": "15", "array_max_running": 2}})
    return scaffold(spec).runs


def _with(cfg: RunConfig, **resources) -> RunConfig:
    return cfg.model_copy(update={"resources": cfg.resources.model_copy(update=resources)})


def _options(script: Path) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.read_text().splitlines() if line.startswith("#SBATCH")]


def test_the_job_script_asks_each_node_for_its_share_and_starts_a_job_process_per_node(runs):
    cfg = _with(runs[0], gpus_per_run=4)  # 2 GPUs on each of 2 nodes
    train, ev = write_slurm_scripts(cfg)
    opts = _options(train)
    assert {"--nodes=2", "--ntasks-per-node=1", "--gres=gpu:2", "--no-requeue", "--open-mode=append",
            "--partition=multinode", "--signal=B:USR1@120"} <= set(opts), opts
    assert "--requeue" not in opts and "--ntasks=1" not in opts
    text = train.read_text()
    launch = text[text.index("exec srun"):].replace("\\\n", " ").split()
    assert launch[:5] == ["exec", "srun", "--kill-on-bad-exit=1", "--nodes=2", "--ntasks-per-node=1"]
    assert launch[-3:] == ["-m", "tunelab.train.job", "run.yaml"]
    assert 'scontrol update JobId="$SLURM_JOB_ID" Requeue=0' in text  # a self-requeued start disallows it again
    assert subprocess.run(["bash", "-n", str(train)]).returncode == 0
    assert {"--nodes=1", "--ntasks=1", "--gres=gpu:2"} <= set(_options(ev))  # evaluation: one node, its GPUs


def test_a_one_node_run_s_job_script_is_as_before(runs):
    cfg = _with(runs[0], nodes_per_run=1, gpus_per_run=2)
    opts = sbatch_options(cfg, JobKind.TRAIN)
    assert {"--nodes=1", "--ntasks=1", "--gres=gpu:2", "--requeue", "--open-mode=append"} <= set(opts)
    assert "--no-requeue" not in opts
    text = write_slurm_scripts(cfg)[0].read_text()
    assert "srun" not in text and text.rstrip().endswith('-m tunelab.train.job run.yaml')
    assert 'exec "${TUNELAB_PYTHON:-' in text


def test_a_run_spanning_nodes_never_joins_an_array_or_a_node_job(runs):
    arrays, singles = array_groups(runs)
    assert arrays == [] and [c.name for c in singles] == [c.name for c in runs]
    one_node = [_with(c, nodes_per_run=1) for c in runs]
    assert [len(g) for g in array_groups(one_node)[0]] == [2]  # the same runs on one node each: one array
    packed = [_with(c, slurm=c.resources.slurm.model_copy(update={"pack": "node"})) for c in runs]
    assert not any(is_packed(c) for c in packed)
    assert [len(g) for g in pack_groups([_with(c, nodes_per_run=1) for c in packed])] == [2]


def test_the_local_executor_refuses_a_run_spanning_nodes(runs):
    why = Devices(runs).never(runs[0])
    assert why is not None and "resources.nodes_per_run is 2" in why and str(runs[0].run_dir / "run.yaml") in why
    assert Devices(runs).never(_with(runs[0], nodes_per_run=1)) is None
