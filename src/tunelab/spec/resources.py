"""The spec's `resources:` section: executor, GPUs and cluster settings."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from tunelab.spec.base import _Strict
from tunelab.vocabulary import Vocabulary

_TIME_LIMIT = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


def _check_time_limit(v: str | None) -> str | None:
    if v is not None and not _TIME_LIMIT.match(v):
        raise ValueError("must be a Slurm time limit: 'MINUTES', 'HH:MM:SS' or 'D-HH:MM:SS'")
    return v


TimeLimit = Annotated[str | None, AfterValidator(_check_time_limit)]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|min|m|s)")
_DURATION_UNIT_S = {"d": 86400.0, "h": 3600.0, "min": 60.0, "m": 60.0, "s": 1.0}
DURATION_HINT = "a duration such as '6h', '90m', '1d' or '1h30m'"


def parse_duration(text: str) -> float:
    """Seconds of a wall-clock duration ('6h', '90m', '90min', '1d', '1h30m', '45s'); ValueError naming the
    accepted forms otherwise. One parser for `resources.deadline` and `plan --deadline`."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"{text!r} is not {DURATION_HINT}")
    seconds = sum(float(n) * _DURATION_UNIT_S[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r}: a deadline must be longer than zero")
    return seconds


def _check_duration(v: str | None) -> str | None:
    if v is not None:
        parse_duration(v)
        return v.strip()
    return v


Duration = Annotated[str | None, AfterValidator(_check_duration)]


class SlurmSpec(_Strict):
    """Cluster settings for `executor: slurm`; any of them can also come from the user config file
    (~/.config/tunelab/config.yaml or $TUNELAB_CONFIG, under `slurm:`); the spec wins."""

    account: str | None = None
    partition: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gres: str | None = Field(None, description="e.g. 'gpu:a100:1'; default 'gpu:N' from resources.gpus_per_run.")
    cpus_per_task: int | None = Field(None, ge=1)
    mem: str | None = Field(None, pattern=r"^\d+[KMGT]?$", description="e.g. '32G'.")
    time_limit: TimeLimit = Field(None, description="Training job limit; default: the plan's estimate, else 4 h.")
    eval_time_limit: TimeLimit = Field(None, description="Evaluation job limit; default: the plan's predicted evaluation time (its worst case × a margin by source, + 5 min), else 1 h.")
    modules: list[str] = Field(default_factory=list, description="`module load` these in every job.")
    setup: list[str] = Field(default_factory=list, description="Shell lines run before tunelab, e.g. activating an env.")
    extra_sbatch: list[str] = Field(default_factory=list, description="Extra '#SBATCH' options, e.g. '--exclusive'.")
    max_queued: int = Field(50, ge=2, description="Most of this experiment's jobs pending or running at once.")
    submit_delay_s: float = Field(0.2, ge=0, description="Pause between two sbatch calls.")
    poll_interval_s: float = Field(5.0, gt=0, description="How often --wait and status --watch ask squeue/sacct.")
    signal_before_limit_s: int = Field(
        120, ge=0, description="Training jobs get SIGUSR1 this long before their time limit (at most half the "
        "limit): the trainer saves a complete checkpoint and requeues the job, which resumes. 0: off.")
    array_max_running: int | None = Field(
        None, ge=1, description="Submit the first training jobs of runs that share their sbatch options as one "
        "job array, at most this many tasks running at once (Slurm's %N); each evaluation job waits on its task. "
        "Unset: one job per run.")

    pack: Literal["run", "node"] = Field(
        "run", description="run: one training job and one evaluation job per run. node: one job holds a node's "
        "GPUs (pack_gpus) and trains a group of runs on them with the local scheduler (longest first, "
        "CUDA_VISIBLE_DEVICES per run, runs_per_gpu), then evaluates them; retries go out as jobs of their own.")
    pack_gpus: int | None = Field(None, ge=0, description="GPUs a node job holds (pack: node); default 4 when "
                                  "runs use GPUs, none on CPU.")
    pack_runs: int | None = Field(None, ge=1, description="Most runs in one node job (pack: node); default: every "
                                  "pending run of the same job shape in one job.")
    pack_time_limit: TimeLimit = Field(
        None, description="A node job's limit (pack: node); default: the predicted makespan of its runs' training "
        "limits on pack_gpus GPUs, plus eval_time_limit.")

    @field_validator("extra_sbatch")
    @classmethod
    def _sbatch_lines(cls, v: list[str]) -> list[str]:
        out = []
        for line in v:
            line = line.strip().removeprefix("#SBATCH").strip()
            if not line.startswith("-") or "\n" in line:
                raise ValueError(f"{line!r}: each entry is one sbatch option such as '--exclusive'")
            out.append(line)
        return out


class Strategy(Vocabulary):
    """How several processes train one run (resources.distributed; the plan's and the job's choice): DDP, a
    full model per device, or FSDP, the model sharded across them."""

    DDP = "ddp"
    FSDP = "fsdp"


class ExecutorKind(StrEnum):
    """The executors a spec (or `--executor`) may name; the names live here because the spec sits below execute/
    (tests/unit/test_vocabularies.py holds them equal to its registry)."""

    LOCAL = "local"
    SLURM = "slurm"
    RAY = "ray"


class ResourcesSpec(_Strict):
    executor: ExecutorKind = ExecutorKind.LOCAL
    gpus_per_run: int = Field(1, ge=0)
    nproc_per_run: int | None = Field(
        None, ge=1, description="Training processes per run (torchrun; gloo on CPU). Default: gpus_per_run on a "
        "machine with GPUs, 1 on CPU (one per node when the run spans nodes). All the run's processes, over all "
        "its nodes.")
    nodes_per_run: int = Field(
        1, ge=1, description="Nodes one run spans (Slurm: --nodes=N --ntasks-per-node=1, one torchrun per node, "
        "c10d rendezvous on the allocation's first node; rank 0 alone writes run files). gpus_per_run and "
        "nproc_per_run are the run's totals, split evenly over its nodes. The local executor runs one node. The "
        "plan raises it, and says so, when a run needs more GPUs than one node has.")
    node_gpus: int | None = Field(
        None, ge=1, description="GPUs one node of the cluster has: the plan spreads a run whose gpus_per_run exceeds "
        "it over nodes (raising nodes_per_run) and counts the nodes a model too large for one GPU needs. Default: "
        "node_gpus of the user config file, else 8 (assumed: the 8-GPU servers, DGX/HGX, most clusters of "
        "datacenter GPUs are built from; the plan says when it assumes it).")
    distributed: Literal["auto"] | Strategy = Field(
        "auto", description="How a run with several processes trains: DDP (a full model per device) or FSDP "
        "(sharded). auto: FSDP when the plan predicts the model does not fit one device, else DDP.")
    runs_per_gpu: int = Field(
        1, ge=1, description="Local executor: at most this many runs share one GPU, when the plan's memory "
        "estimates say they fit together (on a CPU: cpu_runs_at_once).")
    cpu_runs_at_once: Literal["auto"] | int = Field(
        "auto", description="Local executor without GPUs: this many runs side by side on the CPU, each pinned to "
        "its share of the cores, its processes' threads dividing that share. auto: the plan times the runs' "
        "steps at each share's thread count and picks the number whose predicted makespan is shortest "
        "(plan.md says both; one-process runs only, as many as host RAM holds).")

    @field_validator("cpu_runs_at_once")
    @classmethod
    def _runs_at_once(cls, v: Literal["auto"] | int) -> Literal["auto"] | int:
        if v != "auto" and v < 1:
            raise ValueError("runs side by side: auto or a whole number ≥ 1")
        return v
    max_retries: int = Field(
        2, ge=0, description="Automatic retries of a run (OOM: halve the micro-batch; timeout/preemption: resume)."
    )
    gpu: str | None = Field(
        None, description="The GPU the jobs run on (e.g. H100-80GB, A100-40GB): plan, scaffold and validate "
        "estimate memory, batch and time for it on a machine without one (a login node). Default: `gpu` of the "
        "user config file, else the GPU detected here, else this machine's CPU. `--gpu` overrides it.")
    slurm: SlurmSpec | None = None
    address: str | None = Field(
        None, description="executor: ray: the cluster's job server, e.g. 'http://head:8265' (its dashboard port; "
        "KubeRay: the head service's, http://<cluster>-head-svc.<namespace>.svc:8265). Default: RAY_ADDRESS.")
    deadline: Duration = Field(
        None, description="Wall-clock budget of the whole sweep, training and evaluation ('6h', '90m', '1d'): "
        "plan predicts the sweep's makespan (P10–P90) on the GPUs it may use and says whether it fits at P90, at "
        "P50 only, or not, and what would have to give; training.levers defaults to auto with a deadline. `plan --deadline` overrides "
        "it.")

    @property
    def deadline_s(self) -> float | None:
        """The deadline in seconds (None: no deadline)."""
        return parse_duration(self.deadline) if self.deadline is not None else None

    def cpu_runs(self) -> int:
        """Runs side by side on a CPU: the number set, or the plan's choice written into run.yaml; auto that no plan
        resolved (a spec read without estimates) is one at a time."""
        return self.cpu_runs_at_once if isinstance(self.cpu_runs_at_once, int) else 1

    def processes_per_run(self, cuda_devices: int) -> int:
        """How many processes train one run, over all its nodes: nproc_per_run when set, else one per GPU of
        the run on a machine with GPUs (`cuda_devices` > 0), else one per node (CPU)."""
        if self.nproc_per_run is not None:
            return self.nproc_per_run
        return max(1, self.gpus_per_run) if cuda_devices > 0 else self.nodes_per_run

    def processes_per_node(self, cuda_devices: int) -> int:
        """The processes one node's torchrun starts: the run's processes split evenly over its nodes."""
        return self.processes_per_run(cuda_devices) // self.nodes_per_run

    def run_gpus_per_node(self) -> int:
        """The GPUs a run asks of each of its nodes (Slurm's gres per node)."""
        return self.gpus_per_run // self.nodes_per_run

    def strategy(self, world_size: int) -> Strategy | None:
        """None on one process; else what `distributed` says (the plan resolves `auto` at scaffold time, see
        estimate.runs), on GPUs and CPU alike: FSDP shards over gloo as over NCCL (train/sharding.py)."""
        if world_size <= 1:
            return None
        return Strategy.FSDP if self.distributed == Strategy.FSDP else Strategy.DDP

    @model_validator(mode="after")
    def _split_over_nodes(self) -> ResourcesSpec:
        n = self.nodes_per_run
        if n > 1 and self.gpus_per_run % n:
            raise ValueError(f"gpus_per_run ({self.gpus_per_run}) must split evenly over nodes_per_run ({n})")
        if n > 1 and self.nproc_per_run is not None and self.nproc_per_run % n:
            raise ValueError(f"nproc_per_run ({self.nproc_per_run}) must split evenly over nodes_per_run ({n})")
        return self

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, v: str | None) -> str | None:
        if v is not None:
            from tunelab.catalog import resolve_gpu
            from tunelab.errors import TunelabError

            try:
                resolve_gpu(v)
            except TunelabError as exc:
                raise ValueError(str(exc)) from None
        return v
