"""One small interface for where jobs run (in the spirit of submitit's Executor): submit a job script,
poll jobs, cancel them, find their log, and the few facts the core needs (does the executor outlive this
process, how many may start now, the CPUs a job gets, the scripts scaffold writes for it, a one-off job's
script (the probe), the longer time limit a TIMEOUT retry asks for). The local executor
(execute/local_jobs.py) and Slurm (execute/slurm_cli.py) implement it; execute/executors.py makes one
from its name. The sweep (execute/sweep.py), refresh, retries, `status` and `cancel` are written once
against this interface and never look behind it; plan, scaffold and the probe reach an executor through
execute/executors.py by the name the spec gives and never compare that name themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from tunelab.errors import TunelabError
from tunelab.execute.failures import SacctRow
from tunelab.execute.job_states import UNSEEN, JobState, is_active_state
from tunelab.rundir.config import RunConfig
from tunelab.spec import ResourcesSpec

ScriptCheck = Callable[[Path], bool]  # a job script that may start warm (warm_starts' `accept`)

__all__ = ["UNSEEN", "Capacity", "ClusterFacts", "ClusterRead", "Executor", "GroupKind", "JobGroup", "JobInfo",
           "JobKind", "NodeAsk", "NodeFacts", "ReadsCluster", "SchedulerRoom", "SchedulerUnavailable"]


class SchedulerUnavailable(TunelabError):
    """`submit` could not hand the job to the scheduler now (its controller restarting, unreachable): the
    sweep keeps the submission queued and tries again at its next look, instead of ending a `--wait` that
    follows jobs which keep running. The executor guarantees that the next try cannot make a second job
    (Slurm: a submission whose answer was lost is found by its token before anything is submitted again)."""


class JobKind(StrEnum):
    """What a job does: a run's training or its evaluation (the ledger's `jobs.kind`: the values are the strings
    stored there), or the probe's one-off job (never in the ledger). It names the job's script and log."""

    TRAIN = "train"
    EVAL = "eval"
    PROBE = "probe"


class GroupKind(StrEnum):
    """How several runs' training jobs go as one submission: a Slurm job array, or one node job running them."""

    ARRAY = "array"
    NODE = "node"


@dataclass(frozen=True)
class JobInfo:
    """What an executor knows of one job now."""

    state: str  # the scheduler's state as it says it ('CANCELLED by 0'; job_states.JobState's words), or UNSEEN
    exit_code: str | None = None  # 'EXIT:SIGNAL'
    elapsed: str | None = None
    node: str | None = None
    reason: str = ""  # why it is pending or how it ended, as the scheduler says it
    rows: tuple[SacctRow, ...] = field(default_factory=tuple)  # accounting rows, job first, then steps
    settled: bool = True  # False: ended, but the accounting record may still arrive (sacct is asynchronous)
    restarts: int = 0  # the scheduler started it again this many times under the same id (Slurm's requeue)
    earlier: tuple[str, ...] = ()  # how its earlier starts ended, oldest first, as accounting says (or unknown)

    @property
    def ended(self) -> bool:
        return not is_active_state(self.state)


@dataclass(frozen=True)
class JobGroup:
    """Several runs' training jobs submitted as one (a job array, or a node job that also evaluates them)."""

    kind: GroupKind
    runs: tuple[RunConfig, ...]


@dataclass(frozen=True)
class NodeAsk:
    """What one job asks of the one node it runs on: CPUs and GPUs (Ray places it on a node that has them)."""

    cpus: int
    gpus: int

    def words(self) -> str:
        return f"{self.cpus} CPU(s)" + (f" and {self.gpus} GPU(s)" if self.gpus else "")


@dataclass(frozen=True)
class NodeFacts:
    """One node of a cluster as its scheduler says it: CPUs, GPUs and memory it offers jobs."""

    name: str
    cpus: int
    gpus: int
    memory_gib: float

    def holds(self, ask: NodeAsk) -> int:
        """How many jobs asking `ask` this node runs at once (one that asks nothing: one)."""
        fit = [self.cpus // ask.cpus if ask.cpus else None, self.gpus // ask.gpus if ask.gpus else None]
        return min((f for f in fit if f is not None), default=1)

    def words(self) -> str:
        return f"{self.name} ({self.cpus} CPUs, {self.gpus} GPUs, {self.memory_gib:.0f} GiB)"


@dataclass(frozen=True)
class ClusterFacts:
    """What a cluster is made of, as its executor reads it (`ReadsCluster.read_cluster`): the place a run's placement
    and the refusal of a run no node can hold are read from."""

    nodes: tuple[NodeFacts, ...]
    source: str  # where it was read, in words

    def holds(self, cpus: int, gpus: int, most: int | None = None) -> int:
        """How many jobs asking one node for `cpus` CPUs and `gpus` GPUs the nodes hold at once (up to `most`)."""
        total = 0
        for n in self.nodes:
            total += n.holds(NodeAsk(cpus, gpus))
            if most is not None and total >= most:
                return most
        return total

    def refusal(self, ask: NodeAsk, nodes: int = 1) -> str | None:
        """Why a job asking `ask` of each of `nodes` nodes can never start here, in words (None: enough nodes hold
        it)."""
        if nodes == 1:
            return None if self.holds(ask.cpus, ask.gpus, 1) else f"asks one node for {ask.words()}; {self.words()}"
        room = sum(1 for n in self.nodes if n.holds(ask))
        return None if room >= nodes else f"asks {nodes} nodes for {ask.words()} each; {room} hold that: {self.words()}"

    def slots(self, ask: NodeAsk, devices_each: int = 1) -> list[str]:
        """The forecast's devices: per node, `devices_each` for each job asking `ask` it holds at once, named
        'node:<name>:<i>', node after node, so that a job holding `devices_each` of them never spans two nodes."""
        return [f"node:{n.name}:{i}" for n in self.nodes for i in range(n.holds(ask) * devices_each)]

    def words(self) -> str:
        if not self.nodes:
            return f"{self.source} has no alive node"
        largest = max(self.nodes, key=lambda n: (n.gpus, n.cpus))
        return (f"{self.source} has {len(self.nodes)} node(s), {sum(n.cpus for n in self.nodes)} CPUs and "
                f"{sum(n.gpus for n in self.nodes)} GPUs in all, the largest {largest.cpus} CPUs, {largest.gpus} "
                f"GPUs, {largest.memory_gib:.0f} GiB")


@dataclass(frozen=True)
class ClusterRead:
    """A cluster as read at plan time: its facts, or why it could not be read (then the plan goes by the spec)."""

    facts: ClusterFacts | None
    problem: str = ""  # why it could not be read (unreachable, the executor's library missing)
    address: str = ""  # what was asked


class ReadsCluster(Protocol):
    """An executor that can say what its cluster is made of (Ray: its nodes' resources), and what each of a run's
    jobs asks of one node: plan, validate and status's re-plan place runs on its nodes and refuse what none holds."""

    @staticmethod
    def read_cluster(resources: ResourcesSpec, timeout_s: float) -> ClusterFacts:
        """The cluster `resources` name, read within about `timeout_s`; TunelabError when it cannot be."""
        ...

    @staticmethod
    def node_ask(cfg: RunConfig) -> NodeAsk:
        """What a run's first job (its training; a control's evaluation) asks of one node."""
        ...


class Capacity(Protocol):
    """How many of a sweep's jobs may run at once, and where (the local executor's devices, Slurm's
    max_queued throttle)."""

    def order(self, runs: list[RunConfig]) -> list[RunConfig]:
        """The order to start runs in."""
        ...

    def never(self, cfg: RunConfig) -> str | None:
        """Why this run can never start here (None: it can)."""
        ...

    def take(self, cfg: RunConfig, jobs: int, active: int) -> dict[str, str] | None:
        """Room for this run's `jobs` jobs now, with `active` of the executor's jobs queued or running: the
        environment to start them with ({}: none), or None to wait."""
        ...

    def where(self, cfg: RunConfig) -> str:
        """Where a run taken just now runs, in words ('GPU 0,1', 'cpu'; '' when the scheduler decides)."""
        ...

    def release(self, run: str) -> None:
        """A run's job ended: its room is free again."""
        ...

    def waiting(self) -> str:
        """Why runs wait, in words, once `take` has said no ('' when waiting is normal)."""
        ...


class ColdStarts:
    """What an executor whose every job starts a process of its own (Slurm, Ray: on the nodes it is given) answers
    of warm starts: the block changes nothing."""

    def warm_starts(self, accept: ScriptCheck | None = None) -> AbstractContextManager[None]:
        return nullcontext()

    def warm_ahead(self) -> None:
        """Nothing to start ahead: every job imports on its own node."""


class OneJobEachRun(ColdStarts):
    """What an executor that submits every run as a job of its own (local, Ray) answers of groups and notices."""

    name: str

    def groups(self, runs: list[RunConfig]) -> list[JobGroup]:
        return []

    def group_script(self, group: JobGroup, write: bool = True) -> tuple[Path, str | None]:
        raise ValueError(f"the {self.name} executor submits each run as a job of its own")

    def notices(self) -> list[str]:
        return []

    @staticmethod
    def evaluates_in_training_job(resources: ResourcesSpec) -> bool:
        return False

    @staticmethod
    def submit_all(runs: list[RunConfig]) -> tuple[str, dict[str, object]]:
        """submit_all.sh: every run's job.sh in turn here, then eval and report (Ray's `tunelab run` submits)."""
        return "submit_all.sh.j2", {}


class SchedulerRoom:
    """The part of a Capacity a scheduler (Slurm, Ray) leaves to itself: runs start in the order given, it says where
    each runs, and an ended job frees nothing tunelab holds."""

    def order(self, runs: list[RunConfig]) -> list[RunConfig]:
        return list(runs)

    def where(self, cfg: RunConfig) -> str:
        return ""

    def release(self, run: str) -> None:
        pass


class Executor(Protocol):
    """Where jobs run. Job ids are strings chosen by the executor."""

    name: str
    detached: bool  # jobs outlive this process and may wait on one another (a batch scheduler): a sweep
    # submits each run's evaluation behind its training, returns once all is submitted unless told to wait,
    # can be shown as a dry run, and leaves its jobs running on Ctrl-C
    first_state: JobState  # a job's state once `submit` returned: RUNNING (started here) or SUBMITTED (queued)

    # Facts of the executor's class, asked of it by name before any job exists (plan, scaffold, retries).
    @staticmethod
    def job_cpus(resources: ResourcesSpec) -> int | None:
        """The CPUs a job gets (None: not set by tunelab), which plan/validate sets dataloader workers against."""
        ...

    @staticmethod
    def scaffold_scripts(cfg: RunConfig, python: str) -> None:
        """Write the executor's own job scripts of a run beside the job.sh scaffold writes for every run."""
        ...

    @staticmethod
    def submit_all(runs: list[RunConfig]) -> tuple[str, dict[str, object]]:
        """submit_all.sh's template (scaffold/templates/) and the values it needs beyond the runs."""
        ...

    @staticmethod
    def side_job_script(cfg: RunConfig, kind: JobKind, work_dir: Path, command: str, time_limit: str) -> Path:
        """Write a one-off job script into `work_dir` that runs `command` where `cfg`'s jobs run (its partition,
        account, GPUs), under `time_limit`: the probe's job. Its output goes to `log(work_dir, kind, id)`."""
        ...

    @staticmethod
    def evaluates_in_training_job(resources: ResourcesSpec) -> bool:
        """A run with these resources is trained and evaluated by one job (groups() makes it a group of one), so its
        evaluation pays no dispatch of its own (forecast/sweeptime.py)."""
        ...

    @staticmethod
    def longer_time_limit(cfg: RunConfig) -> tuple[ResourcesSpec, str] | None:
        """A TIMEOUT retry's resources, the training time limit doubled, and the change in words; None where
        jobs run under no time limit (then the retry only resumes)."""
        ...

    def submit(self, script: Path, dependency: str | None = None, env: dict[str, str] | None = None,
               array: str | None = None) -> str:
        """Start (or queue) a job script; with `dependency`, only once that job completed successfully;
        with `array`, as a job array of those task indices."""
        ...

    def command(self, script: Path, dependency: str | None = None, array: str | None = None) -> str:
        """The command line `submit` runs, for a dry run."""
        ...

    def poll(self, ids: list[str]) -> dict[str, JobInfo] | None:
        """What is known of these jobs (ids it cannot tell about are left out); None when the scheduler
        could not be asked at all (then nothing may be concluded from a job's absence)."""
        ...

    def cancel(self, ids: list[str]) -> None:
        """Stop these jobs (a training job saves a checkpoint first when it gets the time: SIGTERM)."""
        ...

    def log(self, run_dir: Path, kind: JobKind, job_id: str) -> Path:
        """The file a job's output goes to."""
        ...

    def output(self, run_dir: Path, kind: JobKind, job_id: str) -> str:
        """The tail of this job's own output (what its failure is read from)."""
        ...

    def poll_interval(self, runs: list[RunConfig]) -> float:
        """Seconds between two looks at a sweep's jobs."""
        ...

    def script(self, cfg: RunConfig, kind: JobKind, write: bool = True) -> Path:
        """The job script of a run's `kind` job (train | eval), written from run.yaml as it is now when the
        executor derives it from there (write=False: only its path, for a dry run)."""
        ...

    def time_limit(self, cfg: RunConfig) -> str | None:
        """The time limit a run's training job is submitted with (None: none)."""
        ...

    def capacity(self, runs: list[RunConfig]) -> Capacity:
        """The room this executor has for these runs' jobs."""
        ...

    def groups(self, runs: list[RunConfig]) -> list[JobGroup]:
        """Runs whose first training jobs go as one submission (the others go one job each)."""
        ...

    def group_script(self, group: JobGroup, write: bool = True) -> tuple[Path, str | None]:
        """A group's job script and array spec (None: not an array)."""
        ...

    def notices(self) -> list[str]:
        """What a person should know before a sweep on this executor starts (e.g. a missing tool)."""
        ...

    def unanswered(self) -> tuple[float, str] | None:
        """(seconds the scheduler has not answered for, its last error); None while it answers."""
        ...

    def warm_starts(self, accept: ScriptCheck | None = None) -> AbstractContextManager[None]:
        """A block in which training jobs started one after another with the same environment may skip their imports
        (the local executor forks them from a process that keeps the stack imported: execute/warm_jobs.py) — only
        those whose job script `accept` passes, where given (a job.sh a person edited runs as written); on a
        scheduler's nodes nothing changes."""
        ...

    def warm_ahead(self) -> None:
        """Inside `warm_starts`, start now what the block's first jobs will be forked from (the local executor on a
        CPU: the warm process, whose imports then run beside the caller's own work — a plan —, not after it); elsewhere
        nothing."""
        ...
