"""A Ray cluster as an Executor (execute/executor.py), through Ray's job server (the dashboard's REST API, spoken
by execute/ray_rest.py without importing Ray): each job a Ray job that asks for the CPUs and GPUs its run was priced at
(execute/ray_jobs.py), a job behind another gated by execute/ray_after.py (Ray has no afterok), `cancel` Ray's
stop (SIGTERM to the job's processes: the trainer saves a checkpoint, within the cluster's
RAY_JOB_STOP_WAIT_TIME_S), each job's output in its run directory. Jobs outlive this process (detached), as
Slurm's do.

The cluster is `resources.address` (its job server, http://head:8265), else RAY_ADDRESS. A job id is
`<submission id>@<address>`, so `tunelab status` and `cancel` reach the cluster that holds a job without being
told. What the cluster is made of — its nodes' CPUs, GPUs and memory, `cluster()` — decides which runs can never
start (a run asking more of one node than any node has, or more nodes than hold its ask) and how many jobs go to it at once; plan, validate and
status's re-plan read it too (`read_cluster`, through execute/executors.cluster_facts). A job whose node died, or
that a restarted head no longer knows, is NODE_FAIL: the retry policy resumes it (Ray cannot requeue a job).

ray is an optional extra (`pip install tunelab[ray]`) that the cluster's nodes need (they run the jobs, and a run
spanning nodes calls Ray there); the coordinator needs it only to resolve an address that is not the job server's URL.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.execute.executor import (
    Capacity,
    ClusterFacts,
    GroupKind,
    JobGroup,
    JobInfo,
    JobKind,
    NodeAsk,
    NodeFacts,
    OneJobEachRun,
    SchedulerRoom,
)
from tunelab.execute.job_states import JobState
from tunelab.execute.ray_after import CHILD_SUFFIX
from tunelab.execute.ray_jobs import (
    EVAL_SCRIPT,
    RDZV_ID_ENV,
    RUN_LABEL,
    RUN_SCRIPT,
    SPAN_SCRIPT,
    TRAIN_SCRIPT,
    entrypoint,
    evaluates_in_training_job,
    job_ask,
    job_env,
    log_name,
    write_eval_script,
    write_run_script,
    write_side_script,
    write_span_script,
)
from tunelab.execute.ray_rest import JobServer, JobServerError, RayJob
from tunelab.rundir.config import RunConfig
from tunelab.spec import ResourcesSpec

ADDRESS_ENV = "RAY_ADDRESS"
# Ray's job states in the scheduler's words every executor speaks (job_states.JobState)
STATES = {"PENDING": JobState.PENDING, "RUNNING": JobState.RUNNING, "SUCCEEDED": JobState.COMPLETED,
          "FAILED": JobState.FAILED, "STOPPED": JobState.CANCELLED}
NEVER_SATISFIED = "DependencyNeverSatisfied"
SUPERVISOR_DIED = "JOB_SUPERVISOR_ACTOR_DIED"  # Ray's error_type of a job whose node (or supervisor) died
FORWARDED_PREFIX = "TUNELAB_"
GIB = 1024**3
READ_TIMEOUT_S = 30.0  # a sweep reading its cluster before submitting waits this long at most
POLL_S = 0.5
FEW_JOBS = 8  # a look at more jobs than this lists the cluster's jobs once, rather than asking for each


def split_id(job_id: str) -> tuple[str, str]:
    """(submission id, address) of a job id this executor gave."""
    sid, _, address = job_id.partition("@")
    return sid, address


def forwarded_env() -> dict[str, str]:
    """The coordinator's TUNELAB_* settings, which go with each job (as sbatch's --export=ALL takes them to Slurm's)."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIX)}


def job_info(job: RayJob, node_ips: dict[str, str] | None = None) -> JobInfo:
    """One Ray job as a JobInfo: its state, exit code ('N:0'), the node it ran on (its address where `node_ips`
    knows the node's id) and Ray's message as the reason. A job whose supervisor died with no exit code (its node
    lost: the raylet and the job's processes gone) is Slurm's NODE_FAIL: the retry policy resumes it."""
    code = job.driver_exit_code
    exit_code = f"{code}:0" if code is not None else ("0:0" if job.status == "SUCCEEDED" else None)
    node = job.driver_node_id
    where = (node_ips or {}).get(node, node) if node else None
    state: str = STATES.get(job.status, job.status)
    if state == JobState.FAILED and code is None and job.error_type == SUPERVISOR_DIED:
        state = JobState.NODE_FAIL
    return JobInfo(state, exit_code=exit_code, node=where, reason=job.message.split("\n", 1)[0][:300])


def lost_info(address: str) -> JobInfo:
    """A job the cluster's job server does not know: Ray keeps every job until its head goes, so the head restarted
    (its jobs, queued or running, lost with it): NODE_FAIL, which the retry policy resumes from the last checkpoint."""
    return JobInfo(JobState.NODE_FAIL, reason=f"lost: the Ray cluster at {address} no longer knows the job (its head "
                                              "restarted)")


def gated_info(gate: JobInfo, child: JobInfo | None, after: str) -> JobInfo:
    """A gated job as one: its real job once the gate submitted it; before that, pending while the gate waits, and
    cancelled (never satisfied) where the gate ended without submitting it."""
    if child is not None:
        return child
    if not gate.ended:
        return JobInfo(JobState.PENDING, reason=f"Dependency (afterok:{after})")
    if gate.state == JobState.CANCELLED:
        return gate
    return JobInfo(JobState.CANCELLED, reason=f"{NEVER_SATISFIED}: job {after} did not succeed")


def answering_server(address: str, timeout_s: float) -> JobServer:
    """The job server at `address`, asked once whether it answers (each request within `timeout_s`), so that an
    address that leads nowhere fails here, in one line naming the field."""
    try:
        server = JobServer(address, timeout_s)
        server.version()
    except JobServerError as exc:  # never reached, or an answer that refused (a token wanted): each said once
        said = (f"did not answer within {timeout_s:g} s: {exc.cause}" if exc.status is None
                else f"refused the request: {exc}")
        raise TunelabError(f"Ray job server {address} {said}", field="resources.address") from None
    return server


def read_nodes(server: JobServer, timeout_s: float) -> ClusterFacts:
    """The alive nodes of the cluster whose job server is `server`, by Ray's state API (a request of at most
    `timeout_s`): each named by its address, with the CPUs, GPUs and memory it offers."""
    try:
        nodes = server.list_nodes(timeout_s)
    except (JobServerError, KeyError, TypeError) as exc:  # unreachable, refused, or an answer of another shape
        raise TunelabError(f"Ray cluster {server.url}: its nodes could not be read: {str(exc)[:300]}",
                           field="resources.address") from None
    return ClusterFacts(tuple(
        NodeFacts(n.node_ip, int(n.resources_total.get("CPU", 0)), int(n.resources_total.get("GPU", 0)),
                  n.resources_total.get("memory", 0) / GIB)
        for n in nodes if n.state == "ALIVE"), f"Ray cluster {server.url}")


def read_jobs(server: JobServer, sids: list[str]) -> dict[str, RayJob]:
    """The jobs `sids` name, and each gate's child, as the job server has them (a job it does not know: absent). A
    few are asked one by one; beyond FEW_JOBS, the list of every job the cluster holds, whose size grows with the
    cluster's history, not with the sweep."""
    if len(sids) > FEW_JOBS:
        return {j.submission_id: j for j in server.list_jobs()}
    jobs: dict[str, RayJob] = {}
    for sid in sids:
        job = server.find_job(sid)
        child = server.find_job(sid + CHILD_SUFFIX) if job and job.metadata.get("tunelab") == "gate" else None
        jobs.update({j.submission_id: j for j in (job, child) if j is not None})
    return jobs


class RayRoom(SchedulerRoom):
    """The cluster's room for a sweep: runs no node can hold are refused; at most twice as many of the sweep's jobs
    go to Ray at once as its nodes hold (a job and its evaluation's gate each), the rest wait here."""

    def __init__(self, cluster: ClusterFacts, asks: dict[str, NodeAsk]) -> None:
        self.cluster, self.asks = cluster, asks
        self._full: int | None = None

    def never(self, cfg: RunConfig) -> str | None:
        return self.cluster.refusal(self.asks[cfg.name], cfg.resources.nodes_per_run)

    def take(self, cfg: RunConfig, jobs: int, active: int) -> dict[str, str] | None:
        ask = self.asks[cfg.name]
        most = 2 * max(1, self.cluster.holds(ask.cpus, ask.gpus))
        if active + jobs > most:
            self._full = most
            return None
        return {}

    def waiting(self) -> str:
        return f"{self._full} jobs on the Ray cluster (twice what its nodes hold): waiting…" if self._full else ""


class RayExecutor(OneJobEachRun):
    """Ray jobs through the cluster's job server: `address`, else the runs' resources.address, else RAY_ADDRESS."""

    name = "ray"
    detached = True
    first_state = JobState.SUBMITTED

    def __init__(self, address: str | None = None) -> None:
        self.address = address  # else the runs' resources.address once they are known, else RAY_ADDRESS
        self._clients: dict[str, JobServer] = {}
        self._asks: dict[Path, tuple[NodeAsk, JobKind | str]] = {}  # by script: what submit asks for it, its label
        self._silent_since: float | None = None
        self._ips: dict[str, str] = {}  # node id -> address
        self._error = ""

    def _learn(self, runs: list[RunConfig]) -> None:
        """The cluster the runs name (resources.address), which wins over RAY_ADDRESS."""
        if self.address is None:
            self.address = next((c.resources.address for c in runs if c.resources.address), None)

    def client(self, address: str | None = None) -> JobServer:
        """The job server of `address` (a job's, named in its id), else of this executor's cluster (answering_server,
        once per address)."""
        if address is None:  # this executor's own cluster (a job's is named in its id)
            self.address = address = self.address or os.environ.get(ADDRESS_ENV) or None
        if not address:
            raise TunelabError(f"executor ray: no cluster address: set resources.address or {ADDRESS_ENV} "
                               "(the head's job server, e.g. http://head:8265)", field="resources.address")
        if address not in self._clients:
            self._clients[address] = answering_server(address, READ_TIMEOUT_S)
        return self._clients[address]

    def cluster(self) -> ClusterFacts:
        """The cluster's alive nodes: their CPUs, GPUs and memory, as Ray's state API says them."""
        return read_nodes(self.client(), READ_TIMEOUT_S)

    @staticmethod
    def read_cluster(resources: ResourcesSpec, timeout_s: float) -> ClusterFacts:
        """The cluster resources.address (else RAY_ADDRESS) names, for plan and validate: its job server asked once
        within `timeout_s` (an address that does not answer fails fast: the plan goes by the spec)."""
        address = resources.address or os.environ.get(ADDRESS_ENV)
        if not address:
            raise TunelabError(f"no cluster address (resources.address or {ADDRESS_ENV})", field="resources.address")
        return read_nodes(answering_server(address, timeout_s), timeout_s)

    @staticmethod
    def node_ask(cfg: RunConfig) -> NodeAsk:
        """A fine-tuned run's training job, a control's evaluation job (ray_jobs.job_ask)."""
        return job_ask(cfg, JobKind.TRAIN if cfg.kind == "finetune" else JobKind.EVAL)

    def submit(self, script: Path, dependency: str | None = None, env: dict[str, str] | None = None,
               array: str | None = None) -> str:
        if array:
            raise ValueError("the Ray executor submits each run as a job of its own")
        script = Path(script)
        ask, kind = self._asks.get(script, (NodeAsk(1, 0), JobKind.PROBE))
        sid = f"tl-{kind}-{uuid.uuid4().hex[:12]}"  # a training-then-evaluation job: tl-run-… (ray_jobs.log_name)
        entry = NodeAsk(0, 0) if script.name == SPAN_SCRIPT else ask  # a spanning job reserves its nodes itself
        spec: dict[str, Any] = {"entrypoint": entrypoint(script.parent, script, script.parent / log_name(kind, sid)),
                                "entrypoint_num_cpus": entry.cpus, "entrypoint_num_gpus": entry.gpus,
                                "runtime_env": {"env_vars": {**forwarded_env(), **job_env(ask), RDZV_ID_ENV: sid,
                                                             **(env or {})}},
                                "metadata": {"tunelab": str(kind), "run_dir": str(script.parent)}}
        client = self.client()
        if dependency:
            after = split_id(dependency)[0]
            gate = [sys.executable, "-m", "tunelab.execute.ray_after", client.url, after,
                    sid + CHILD_SUFFIX, json.dumps(spec)]
            client.submit_job(entrypoint=" ".join(shlex.quote(a) for a in gate), submission_id=sid,
                              entrypoint_num_cpus=0, metadata={"tunelab": "gate", "after": after})
        else:
            client.submit_job(submission_id=sid, **spec)
        return f"{sid}@{self.address}"

    def command(self, script: Path, dependency: str | None = None, array: str | None = None) -> str:
        after = f" (after {split_id(dependency)[0]} succeeds)" if dependency else ""
        return f"ray job submit --address {self.address or '$' + ADDRESS_ENV} -- bash {script}{after}"

    def poll(self, ids: list[str]) -> dict[str, JobInfo] | None:
        by_address: dict[str, list[str]] = {}
        for i in ids:
            by_address.setdefault(split_id(i)[1], []).append(i)
        out: dict[str, JobInfo] = {}
        for address, mine in by_address.items():
            try:
                jobs = read_jobs(self.client(address), [split_id(i)[0] for i in mine])
            except (JobServerError, TunelabError) as exc:  # the job server unreachable (restarting): unknown, never ended
                self._silent(f"{address}: {exc}")
                return None
            self._silent_since = None
            ips = self._node_ips(address, {j.driver_node_id for j in jobs.values() if j.driver_node_id})
            for i in mine:
                sid = split_id(i)[0]
                if sid not in jobs:
                    out[i] = lost_info(address)
                    continue
                info = job_info(jobs[sid], ips)
                gate = jobs[sid].metadata or {}
                if gate.get("tunelab") == "gate":
                    child = jobs.get(sid + CHILD_SUFFIX)
                    info = gated_info(info, job_info(child, ips) if child is not None else None, gate.get("after", "?"))
                out[i] = info
        return out

    def _node_ips(self, address: str, ids: set[str]) -> dict[str, str]:
        """{node id: its address}, asked of Ray's state API only when a node id is new (ids: those seen now)."""
        if ids - set(self._ips):
            try:
                self._ips.update({n.node_id: n.node_ip for n in self.client(address).list_nodes()})
            except (JobServerError, TunelabError, KeyError, TypeError):  # the state API unreachable: node ids, named
                pass  # again at the next look
        return self._ips

    def cancel(self, ids: list[str]) -> None:
        """Ray's stop: SIGTERM to the job's processes (the trainer saves), SIGKILL after RAY_JOB_STOP_WAIT_TIME_S;
        a gated job's gate and its real job both."""
        for i in ids:
            sid, address = split_id(i)
            client = self.client(address)
            for job in (sid, sid + CHILD_SUFFIX):
                try:
                    client.stop_job(job)
                except JobServerError as exc:  # no such job (a gate's real job not submitted): nothing to stop
                    if exc.status is None:  # the job server did not answer: the jobs may still run
                        raise TunelabError(f"job {job} not stopped: {exc}", field="resources.address") from None

    def log(self, run_dir: Path, kind: JobKind, job_id: str) -> Path:
        sid = split_id(job_id)[0]
        return Path(run_dir) / log_name(kind, sid)

    def output(self, run_dir: Path, kind: JobKind, job_id: str) -> str:
        """The job's log (a gated job's real job writes the gate's: ray_jobs.log_name of the gate's id)."""
        path = self.log(run_dir, kind, job_id)
        return path.read_text(errors="replace")[-200_000:] if path.is_file() else ""

    def poll_interval(self, runs: list[RunConfig]) -> float:
        """As often as the local executor looks: a look is a GET a job, or one of the job server's list (read_jobs)."""
        self._learn(runs)
        return POLL_S

    def groups(self, runs: list[RunConfig]) -> list[JobGroup]:
        """Each run whose evaluation goes in its training's job (ray_jobs.evaluates_in_training_job) as a group of one:
        one Ray job trains it, then evaluates it (the core records both jobs under its id, as a Slurm node job's)."""
        return [JobGroup(GroupKind.NODE, (c,)) for c in runs if evaluates_in_training_job(c)]

    def group_script(self, group: JobGroup, write: bool = True) -> tuple[Path, str | None]:
        """ray-run.sh of the group's one run (its ray-eval.sh rendered again beside it), asking what its training asks."""
        (cfg,) = group.runs
        self._learn([cfg])
        if write:
            write_eval_script(cfg)
        path = write_run_script(cfg) if write else cfg.run_dir / RUN_SCRIPT
        self._asks[path] = (job_ask(cfg, JobKind.TRAIN), RUN_LABEL)
        return path, None

    @staticmethod
    def evaluates_in_training_job(resources: ResourcesSpec) -> bool:
        return evaluates_in_training_job(resources)

    def script(self, cfg: RunConfig, kind: JobKind, write: bool = True) -> Path:
        self._learn([cfg])
        if kind == JobKind.TRAIN and cfg.resources.nodes_per_run > 1:
            path = write_span_script(cfg, job_ask(cfg, kind)) if write else cfg.run_dir / SPAN_SCRIPT
        elif kind == JobKind.TRAIN:
            path = cfg.run_dir / TRAIN_SCRIPT
        else:
            path = write_eval_script(cfg) if write else cfg.run_dir / EVAL_SCRIPT
        self._asks[path] = (job_ask(cfg, kind), kind)
        return path

    def time_limit(self, cfg: RunConfig) -> str | None:
        return None

    @staticmethod
    def job_cpus(resources: ResourcesSpec) -> int | None:
        """The CPUs a training job asks Ray for: one per process."""
        return resources.processes_per_run(resources.gpus_per_run)

    @staticmethod
    def side_job_script(cfg: RunConfig, kind: JobKind, work_dir: Path, command: str, time_limit: str) -> Path:
        return write_side_script(work_dir, kind, command)

    @staticmethod
    def longer_time_limit(cfg: RunConfig) -> tuple[ResourcesSpec, str] | None:
        """Ray jobs run under no time limit: a retry only resumes."""
        return None

    @staticmethod
    def scaffold_scripts(cfg: RunConfig, python: str) -> None:
        """ray-eval.sh beside job.sh, a run's ray-run.sh where its evaluation goes in its training's job, a spanning
        run's ray-span.sh (not fsynced: `tunelab run` writes them again before every submission)."""
        write_eval_script(cfg, python, durable=False)
        if evaluates_in_training_job(cfg):
            write_run_script(cfg, durable=False)
        if cfg.resources.nodes_per_run > 1:
            write_span_script(cfg, job_ask(cfg, JobKind.TRAIN), python, durable=False)

    def capacity(self, runs: list[RunConfig]) -> Capacity:
        self._learn(runs)
        return RayRoom(self.cluster(), {c.name: self.node_ask(c) for c in runs})

    def _silent(self, error: str) -> None:
        self._error = error[:300]
        if self._silent_since is None:
            self._silent_since = time.monotonic()

    def unanswered(self) -> tuple[float, str] | None:
        return None if self._silent_since is None else (time.monotonic() - self._silent_since, self._error)
