"""`executor: ray` on a real two-node Ray cluster (tests/raycluster.py; no mock of Ray's job server): a sweep's
jobs (each run's training, then its evaluation, in one Ray job; the control's evaluation) spread over both nodes and
score as the same sweep run here; a failing run is FAILED with its exit code and log tail, and its evaluation never
runs; cancel stops the Ray jobs; and no socket of the cluster is on any address but loopback or the namespaces'.
A run spanning two nodes trains across both, and its evaluation, a job of its own (several nodes' resources are
not held while one evaluates), goes behind the gate (Ray has no afterok)."""

from __future__ import annotations

import ipaddress
import json
import subprocess

import pytest
import raycluster
from typer.testing import CliRunner
from waiting import wait_for

from tunelab.cli import app
from tunelab.execute.ray_cluster import split_id
from tunelab.fsutil import read_json
from tunelab.ledger import history
from tunelab.ledger import store as ledger
from tunelab.rundir.config import save_run_config
from tunelab.scaffold.write import scaffold

pytestmark = [pytest.mark.slow]
runner = CliRunner()
EVAL = {"max_tokens": 8, "limit": 10}


def _ok(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, f"{args}: {res.output}"
    return res


def _jobs(exp, run=None) -> list[dict]:
    return [r for r in ledger.query(exp, "SELECT * FROM jobs ORDER BY id") if run is None or r["run"] == run]


def _results(exp) -> dict[str, tuple]:
    """Each run's final training loss and score (a tiny run scores 0: its loss is what tells two runs apart)."""
    return {r["name"]: (r["final_loss"], r["score"])
            for r in json.loads(_ok(["results", str(exp), "--json"]).stdout)["runs"]}


def test_sweep_on_two_nodes_scores_as_the_same_sweep_run_here(ray_cluster, spec_in, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a Ray job's thread share is its one CPU: the same arithmetic here
    ray_spec = spec_in(tmp_path / "ray", eval=EVAL, factors={"lora_rank": [4]},
                       resources={"executor": "ray", "address": ray_cluster.address, "gpus_per_run": 0})
    local_spec = spec_in(tmp_path / "local", eval=EVAL, factors={"lora_rank": [4]})
    exp = ray_spec.parent
    _ok(["scaffold", str(ray_spec)])
    assert (exp / "runs" / "tiny_r4" / "ray-eval.sh").is_file() and (exp / "runs" / "tiny_r4" / "ray-run.sh").is_file()
    assert (exp / "controls" / "tiny_base" / "ray-eval.sh").is_file()
    # the plan read the cluster: both nodes listed, and the run and the control placed one on each (one CPU a node)
    plan_md = (exp / "plan.md").read_text()
    nodes = [raycluster.node_ip(0), raycluster.node_ip(1)]
    assert all(f"| {ip} | 1 | 0 |" in plan_md for ip in nodes), plan_md
    schedule = plan_md.split("## Schedule", 1)[1]
    assert sorted(ip for ip in nodes if f"| node {ip} |" in schedule) == nodes, schedule
    _ok(["run", str(exp), "--wait"])
    jobs = _jobs(exp)
    by = {(j["run"], j["kind"]): j for j in jobs}
    assert sorted(by) == [("tiny_base", "eval"), ("tiny_r4", "eval"), ("tiny_r4", "train")]
    for run in ("tiny_r4",):
        train, ev = by[(run, "train")], by[(run, "eval")]
        assert ev["job_id"] == train["job_id"] and split_id(train["job_id"])[0].startswith("tl-run-")  # one Ray job
        assert train["state"] == "COMPLETED" and train["exit_code"] == "0:0" and ev["failure"] == "completed"
        assert split_id(train["job_id"])[1] == ray_cluster.address
        log = (exp / "runs" / run / f"ray-run-{split_id(train['job_id'])[0]}.out").read_text()
        assert log.index("[tunelab train] completed") < log.index("Ray eval job on")  # trained, then evaluated
    threads = read_json(exp / "runs" / "tiny_r4" / "summary.json")["threads"]
    assert (threads["torch"], threads["limit"]) == (1, "ray")  # its one CPU, though Ray pinned it to no core
    # the training and the control's evaluation, one CPU each, went at once to two one-CPU nodes: both ran jobs
    assert {j["node"] for j in jobs} == {raycluster.node_ip(0), raycluster.node_ip(1)}, [j["node"] for j in jobs]
    status = _ok(["status", str(exp)]).output
    print(status)
    row = json.loads(_ok(["status", str(exp), "--json"]).stdout)["runs"][0]
    assert (row["state"], row["executor"], row["node"]) == ("completed", "ray", by[("tiny_r4", "train")]["node"])
    attempts = ledger.query(exp, "SELECT executor, node, state FROM attempts WHERE run = 'tiny_r4'")
    assert attempts == [{"executor": "ray", "node": row["node"], "state": "completed"}]  # the history of its attempts
    # its history row: the executor, a node, and its job's dispatch — the supervisor's start between the submission
    # and the training process, on the one clock of this host's namespaces (ledger/submission.py)
    [trained] = [r for r in history.load(everything=True) if r.origin_where == str(exp / "runs" / "tiny_r4" /
                                                                                   "summary.json")]
    assert trained.executor == "ray" and trained.node and trained.dispatch_s is not None and trained.dispatch_s > 0
    # the same sweep here, on this machine: the same scores
    scaffold(local_spec)
    _ok(["run", str(local_spec.parent)])
    _ok(["eval", str(local_spec.parent)])
    on_ray, here = _results(exp), _results(local_spec.parent)
    assert set(on_ray) == {"tiny_r4", "tiny_base"} and on_ray["tiny_r4"][0] > 0 and on_ray["tiny_base"][1] is not None
    assert on_ray["tiny_r4"][0] == pytest.approx(here["tiny_r4"][0], rel=1e-6)
    assert {k: v[1] for k, v in on_ray.items()} == {k: v[1] for k, v in here.items()}


def test_failing_run_is_failed_with_its_exit_code_and_log_tail(ray_cluster, write_spec, tmp_path):
    spec = write_spec(factors={"lora_rank": [4]}, controls=False, eval=EVAL,
                      resources={"executor": "ray", "address": ray_cluster.address, "gpus_per_run": 0})
    cfg = scaffold(spec).runs[0]
    # the dataset disappears after scaffolding: the job exits 1
    save_run_config(cfg.model_copy(update={"dataset": cfg.dataset.model_copy(
        update={"path": str(tmp_path / "gone.json")})}))
    res = runner.invoke(app, ["run", str(spec.parent), "--wait", "--no-checks"])
    assert res.exit_code == 1 and "did not complete" in res.output
    train, ev = _jobs(spec.parent)
    assert train["state"] == "FAILED" and train["exit_code"] == "1:0" and train["failure"] == "failed"
    assert "FAILED with exit code 1" in train["detail"] and "dataset file not found" in train["detail"]
    assert ev["job_id"] == train["job_id"] and ev["state"] == "FAILED"  # the one job that held both
    log = (cfg.run_dir / f"ray-run-{split_id(train['job_id'])[0]}.out").read_text()
    assert "dataset file not found" in log and "Ray eval job" not in log  # the evaluation never ran


def test_cancel_stops_the_ray_jobs(ray_cluster, write_spec, monkeypatch):
    spec = write_spec(factors={"lora_rank": [8]}, controls=False, eval=EVAL, training={"epochs": 20},
                      resources={"executor": "ray", "address": ray_cluster.address, "gpus_per_run": 0})
    monkeypatch.setenv("TUNELAB_FAULT_STEP_S", "0.25")  # forwarded to the job: it is still training when cancelled
    cfg = scaffold(spec).runs[0]
    _ok(["run", str(spec.parent)])  # submits and returns (a detached executor)
    assert wait_for(lambda: (cfg.run_dir / "metrics.jsonl").is_file(), 120), "the job never trained"
    res = _ok(["cancel", str(spec.parent)])
    assert "cancelled tiny_r8 train job" in res.output
    train, ev = _jobs(spec.parent)
    from ray.job_submission import JobSubmissionClient  # Ray's own client: an independent reading

    client = JobSubmissionClient(ray_cluster.address, headers=raycluster.headers())
    sids = [split_id(j["job_id"])[0] for j in (train, ev)]
    assert wait_for(lambda: all(str(client.get_job_status(s).value) == "STOPPED" for s in sids), 60, every=0.5)
    assert train["state"] == "CANCELLED" and train["failure"] == "cancelled"
    pid = read_json(cfg.run_dir / "status.json")["pid"]
    assert wait_for(lambda: pid not in _ns_pids(), 40), "the training process outlived its cancelled Ray job"
    status = json.loads(_ok(["status", str(spec.parent), "--json"]).stdout)["runs"][0]
    assert status["state"] == "cancelled"


def _ns_pids() -> set[int]:
    return {p for ns in raycluster.NAMESPACES for p in raycluster.pids_in(ns)}


def test_no_ray_socket_is_on_any_address_but_loopback_or_the_namespaces(ray_cluster):
    allowed = ipaddress.ip_network(f"{raycluster.NET}.0/24")

    def fine(endpoint: str) -> bool:
        host = endpoint.rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:").split("%")[0]
        if host in ("*", "0.0.0.0", "::"):  # every address of the namespace: its loopback and its veth only
            return True
        ip = ipaddress.ip_address(host)
        return ip.is_loopback or ip in allowed

    for ns in raycluster.NAMESPACES:
        addrs = subprocess.run(["ip", "-n", ns, "-o", "addr"], capture_output=True, text=True, check=True).stdout
        own = {line.split()[3].split("/")[0] for line in addrs.splitlines()}
        assert all(ipaddress.ip_address(a).is_loopback or ipaddress.ip_address(a) in allowed
                   or ipaddress.ip_address(a).is_link_local for a in own), own
        sockets = subprocess.run(raycluster.in_ns(ns, "ss", "-tuanpH"), capture_output=True, text=True,
                                 check=True).stdout.splitlines()
        assert sockets, f"no socket in {ns}: is the cluster there?"
        bad = [s for s in sockets if not (fine(s.split()[4]) and fine(s.split()[5]))]
        assert bad == [], bad
    # and on this host's own network, no socket of a process of the cluster
    ours = {str(p) for p in _ns_pids()}
    host = subprocess.run(["ss", "-tuanpH"], capture_output=True, text=True, check=True).stdout.splitlines()
    assert [s for s in host if any(f"pid={p}," in s for p in ours)] == []


def test_a_run_asking_two_nodes_trains_across_both_ray_nodes(ray_cluster, spec_in, tmp_path, monkeypatch):
    """nodes_per_run: 2 on Ray: the job reserves one bundle on each node (execute/ray_span.py), each node's job process
    joins the first node's rendezvous, FSDP shards the run over both, and the summary says which node each rank ran
    on. 320 training examples / (micro-batch 8 x 2 ranks) = 20 steps in the epoch (one process would take 40)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = spec_in(tmp_path / "span", name="span", eval={"max_tokens": 8, "limit": 4}, factors={"lora_rank": [4]},
                   controls=False, training={"epochs": 1, "logging_steps": 5},
                   resources={"executor": "ray", "address": ray_cluster.address, "gpus_per_run": 0,
                              "nodes_per_run": 2, "distributed": "fsdp"})
    exp = spec.parent
    run_dir = exp / "runs" / "tiny_r4"
    _ok(["scaffold", str(spec)])
    assert "tunelab.execute.ray_span run.yaml 2 1 0" in (run_dir / "ray-span.sh").read_text()
    _ok(["run", str(exp), "--wait"])
    by = {j["kind"]: j for j in _jobs(exp)}
    assert by["train"]["state"] == "COMPLETED" and by["eval"]["failure"] == "completed", by
    assert by["eval"]["depends_on"] == by["train"]["job_id"] and not (run_dir / "ray-run.sh").exists()  # the gate's
    assert "[tunelab gate]" not in (run_dir / f"ray-eval-{split_id(by['eval']['job_id'])[0]}.out").read_text()
    summary = read_json(run_dir / "summary.json")
    assert (summary["state"], summary["steps"], summary["world_size"], summary["distributed"]) == (
        "completed", 20, 2, "fsdp"), summary
    nodes = [raycluster.node_ip(0), raycluster.node_ip(1)]
    assert sorted(p["node"] for p in summary["processes"]) == nodes, summary["processes"]
    log = (run_dir / f"ray-train-{split_id(by['train']['job_id'])[0]}.out").read_text()
    assert "run spans 2 Ray nodes" in log and sum(f" on {ip} exited 0" in log for ip in nodes) == 2, log[-3000:]
    results = json.loads(_ok(["results", str(exp), "--json"]).stdout)["runs"]
    assert [(r["state"], r["score"] is not None) for r in results] == [("completed", True)], results
