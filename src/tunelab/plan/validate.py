"""validate: catch before submission what would fail or waste a GPU: predicted OOM, warm-up longer
than training, packing off on short examples, a GPU left mostly idle. A sweep for this machine's CPU (no GPU
named or here) gets every check but the GPU's memory ones: host memory is not modelled, the RAM is reported, or a
warning says the OS did not tell it.
`tunelab run` makes the same checks of the runs it is about to start (`check_runs`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict

from tunelab.catalog import GPU, planning_gpu
from tunelab.errors import TunelabError
from tunelab.estimate.batch import largest_batch, optimizer_steps, should_pack
from tunelab.estimate.dataset import simulate_bfd_packing
from tunelab.estimate.memory import MemoryInputs
from tunelab.estimate.peak import fits, step_shape
from tunelab.estimate.simulator import StepShape
from tunelab.execute import executors  # executors.cluster_facts, looked up when called (tests inject a cluster)
from tunelab.execute.executors import executor_class
from tunelab.forecast.gpus import NodeSize, describe, fewest_gpus, gpus_needed
from tunelab.forecast.runs import device_peak
from tunelab.fsutil import load_yaml
from tunelab.host.cgroup import host_memory_gib
from tunelab.plan.planner import Truncation, make_plan, measure_lengths, split_lengths, truncation
from tunelab.plan.storage import dtype_rule, sweep_storage
from tunelab.rundir.config import RunConfig, load_run_config
from tunelab.rundir.experiment import load_runs, select_runs, training_state
from tunelab.rundir.layout import RunState
from tunelab.spec.resources import ResourcesSpec


def cluster_lines(resources: ResourcesSpec) -> list[str]:
    """plan.md's "Cluster" section: the nodes read now, or why they could not be ([] where no cluster is read)."""
    read = executors.cluster_facts(resources)
    if read is None:
        return []
    lines = ["## Cluster", ""]
    if read.facts is None:
        return lines + [f"The cluster at {read.address or '(no address)'} could not be reached ({read.problem}): "
                        "this plan goes by the spec alone — every run at once, and no run is checked against the "
                        "nodes. `tunelab validate` and `tunelab run` read it again.", ""]
    facts = read.facts
    lines += [f"Read from {facts.source} when this plan was made: {len(facts.nodes)} alive node(s). The schedule "
              "places each run on one node that has the CPUs and GPUs it asks for.", "",
              "| Node | CPUs | GPUs | Memory (GiB) |", "|---|---|---|---|"]
    lines += [f"| {n.name} | {n.cpus} | {n.gpus} | {n.memory_gib:.1f} |" for n in facts.nodes]
    return lines + [""]


def cluster_refusals(runs: list[RunConfig]) -> dict[str, str]:
    """{run: its one error} for each run its cluster cannot hold: the run, what it asks of one node (of each, for a
    run spanning nodes) and what the cluster's nodes have. {} where the cluster is not read or could not be."""
    out = {}
    for cfg in runs:
        read = executors.cluster_facts(cfg.resources)
        ask = executors.node_ask(cfg)
        facts = read.facts if read is not None else None
        why = facts.refusal(ask, cfg.resources.nodes_per_run) if facts is not None and ask is not None else None
        if why is not None:
            out[cfg.name] = f"{cfg.name}: {why}"
    return out


def nodes_text(devices: list[str]) -> str:
    """A run's place on a cluster's nodes in words ('node 10.0.0.1'), from the forecast's 'node:<name>:<i>' devices."""
    names = dict.fromkeys(d.split(":", 1)[1].rsplit(":", 1)[0] for d in devices)
    return ", ".join(f"node {n}" for n in names)


NEAR_LIMIT = 0.90
IDLE_BELOW = 0.25


@dataclass
class RunCheck:
    """One run's checks: its predicted memory against the GPU's, what would fail and what would waste it."""

    # each field's docstring is its key's description in `validate --json`'s schema (pydantic reads them)
    __pydantic_config__ = ConfigDict(use_attribute_docstrings=True)

    run: str
    """The run checked."""
    tokens_per_microbatch: int
    """Tokens in its largest micro-batch (what memory depends on)."""
    peak_memory_gib: float | None
    """Predicted peak per GPU: reserved + CUDA context, GiB (None on CPU: host memory is not modelled)."""
    device_memory_gib: float | None
    """The memory of the device checked (`device`), GiB: the GPU's, or on cpu this machine's RAM (None: the OS does not
    say, which a warning states)."""
    steps: int | None
    """Optimizer steps it will train (None: the data's lengths unknown)."""
    max_batch_size: int | None
    """The largest micro-batch that fits within 90 % of the GPU's memory (per GPU, on the run's GPUs; None on
    CPU)."""
    gpus_needed: int | None = None
    """The fewest GPUs whose FSDP-sharded peak fits, when the run does not fit its own (None: it fits)."""
    errors: list[str] = field(default_factory=list)
    """What would fail (predicted OOM, a missing split or field, ...): validate exits 1."""
    warnings: list[str] = field(default_factory=list)
    """What would waste the GPU or come near its limit (exit 0)."""
    device: str = "cpu"
    """What it was checked for: the GPU's name, or cpu (this machine's CPU, no GPU named or here)."""

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def check_run(cfg: RunConfig, gpu: GPU | None, lengths: list[int] | None = None,
              truncated: list[Truncation] | None = None) -> RunCheck:
    """One run's checks on this GPU (None: this machine's CPU, without the memory checks)."""
    t = cfg.training
    if t is None:
        raise TunelabError("is a control: nothing to validate for training", field=cfg.name)
    nproc = cfg.resources.processes_per_run(1 if gpu is not None else 0)
    steps = None
    if lengths:
        rows = simulate_bfd_packing(lengths, t.max_seq_len).sequences if t.packing else len(lengths)
        steps = optimizer_steps(rows, t.batch_size, t.gradient_accumulation_steps, t.epochs, t.max_steps, nproc)
    longest = max(lengths) if lengths else None
    shape = step_shape(t.batch_size, t.max_seq_len, t.packing, longest)
    check = _memory_check(cfg, gpu, shape, nproc, steps, longest) if gpu is not None else _cpu_check(cfg, shape, steps)
    check.errors[:0] = _node_errors(cfg)
    for cut in truncated or []:
        if cut.cut and cut.split in ("train", "validation"):
            check.errors.append(
                f"{cfg.name}: {cut.cut} of {cut.examples} {cut.split} examples are longer than max_seq_len "
                f"{t.max_seq_len} (longest: {cut.longest} tokens), so their answers would be cut"
                + (f"; {cut.no_answer_left} keep no answer at all" if cut.no_answer_left else "")
                + f"; raise max_seq_len to {cut.longest} or drop those examples")
    if t.warmup_steps is not None and steps is not None and t.warmup_steps > steps:
        check.errors.append(f"{cfg.name}: warmup_steps {t.warmup_steps} exceeds the run's {steps} optimizer steps")
    if lengths and not t.packing and should_pack(sum(lengths) / len(lengths), t.max_seq_len):
        check.warnings.append(f"{cfg.name}: packing is off although the mean example ({sum(lengths) / len(lengths):.0f} "
                              f"tokens) is short next to max_seq_len {t.max_seq_len}")
    cpus = executor_class(cfg.resources.executor).job_cpus(cfg.resources)
    if cpus and t.dataloader_workers and t.dataloader_workers * nproc > cpus - nproc:
        check.warnings.append(f"{cfg.name}: dataloader_workers {t.dataloader_workers} × {nproc} process(es) and the "
                              f"processes themselves need more than the job's cpus_per_task {cpus}: workers would "
                              f"share CPUs with training (raise resources.slurm.cpus_per_task or leave "
                              f"dataloader_workers unset to fit them)")
    return check


def _cpu_check(cfg: RunConfig, shape: StepShape, steps: int | None) -> RunCheck:
    """A run checked for this machine's CPU: no memory check (host memory is not modelled), the RAM reported, or a
    warning where the OS does not tell it."""
    try:
        return RunCheck(cfg.name, shape.tokens, None, round(host_memory_gib(), 1), steps, None)
    except OSError as exc:
        return RunCheck(cfg.name, shape.tokens, None, None, steps, None,
                        warnings=[f"{cfg.name}: this machine's RAM is unknown ({exc}): nothing checks this CPU run's "
                                  "memory (host memory is not modelled); watch the job's memory yourself"])


def _memory_check(cfg: RunConfig, gpu: GPU, shape: StepShape, nproc: int, steps: int | None,
                  longest: int | None) -> RunCheck:
    """The run's predicted peak per GPU against the GPU's memory: an OOM is an error (with the fewest GPUs that
    fit), near the limit or a mostly idle GPU a warning."""
    t = cfg.training
    assert t is not None
    inputs = MemoryInputs.of_training(t, t.planned_dtype(gpu.compute_capability))
    figure, strategy = device_peak(cfg, gpu, inputs, shape, nproc)  # per device: sharded when FSDP is chosen
    peak = figure.required_gib
    max_b = largest_batch(cfg.model.path, inputs, gpu.memory_gib * NEAR_LIMIT, t.max_seq_len, t.packing,
                          longest, processes=nproc, strategy=strategy)  # the same step as the peak's
    check = RunCheck(cfg.name, shape.tokens, round(peak, 2), gpu.memory_gib, steps, max_b, device=gpu.name)
    where = f"{cfg.name}: batch_size {t.batch_size}{' packed' if t.packing else ''} × max_seq_len {t.max_seq_len}"
    if not fits(figure, gpu.memory_gib):
        check.errors.append(
            f"{where} = {shape.tokens:,} tokens per micro-batch: peak {peak:.1f} GiB ({figure.source}; reserved + "
            f"CUDA context) exceeds the "
            f"{gpu.name}'s {gpu.memory_gib:.1f} GiB; largest micro-batch that fits: {max_b}"
            + (" (packing multiplies tokens per row: lower batch_size and raise gradient_accumulation_steps)"
               if t.packing else ""))
        check.errors += _gpu_count_errors(check, cfg, gpu, inputs, shape, nproc)
    elif not fits(figure, gpu.memory_gib, NEAR_LIMIT):
        check.warnings.append(f"{where}: predicted peak {peak:.1f} GiB is within 10 % of {gpu.memory_gib:.1f} GiB")
    elif peak < IDLE_BELOW * gpu.memory_gib and max_b > t.batch_size:
        check.warnings.append(f"{where}: predicted peak {peak:.1f} GiB uses {peak / gpu.memory_gib:.0%} of the GPU; "
                              f"a micro-batch up to {max_b} fits (keep the effective batch with accumulation)")
    return check


def _node_errors(cfg: RunConfig) -> list[str]:
    """A run over several nodes where its executor runs jobs on this machine (not detached): one node only."""
    res = cfg.resources
    if res.nodes_per_run > 1 and not executor_class(res.executor).detached:
        node = NodeSize.of(res)
        return [f"{cfg.name}: resources.nodes_per_run is {res.nodes_per_run}, but the {res.executor} executor runs "
                f"every job on this machine, one node: use a scheduler (resources.executor) or at most "
                f"{node.gpus} GPUs per run (resources.gpus_per_run; {node.gpus} GPUs a node, {node.source})"]
    return []


def _gpu_count_errors(check: RunCheck, cfg: RunConfig, gpu: GPU, inputs: MemoryInputs, shape: StepShape,
                      nproc: int) -> list[str]:
    """The run asks for fewer GPUs than the fewest whose FSDP-sharded peak fits its micro-batch: name the field
    and the count (recorded in the check)."""
    search = fewest_gpus(cfg.model.path, inputs, shape, gpu.memory_gib)
    if search is None or search.gpus <= nproc:
        return []
    check.gpus_needed = search.gpus
    need = gpus_needed(search, shape.micro_batch, gpu.memory_gib, NodeSize.of(cfg.resources))
    return [f"{cfg.name}: resources.gpus_per_run is {cfg.resources.gpus_per_run}, below the fewest GPUs that fit "
            f"({search.gpus}): {describe(need)}; set resources.gpus_per_run: {need.gpus_per_run}"
            + (f" (the plan spreads it over {need.nodes} nodes)" if need.nodes > 1 else "")]


def check_staged_run(cfg: RunConfig, gpu: GPU | None, lengths: list[list[int] | None],
                     truncated: list[list[Truncation] | None]) -> RunCheck:
    """A staged run: each stage checked as the run it trains (its own steps, warm-up, data and batch), then one
    check whose memory and batch advice are the worst stage's and whose steps are the sum."""
    parts = [check_run(cfg.stage_config(i).model_copy(update={"name": f"{cfg.name} (stage {s.name})"}), gpu,
                       lengths[i], truncated[i]) for i, s in enumerate(cfg.stages)]
    worst = max(parts, key=lambda c: c.peak_memory_gib or 0.0)
    steps = [c.steps for c in parts]
    needed = [c.gpus_needed for c in parts if c.gpus_needed is not None]
    return RunCheck(cfg.name, worst.tokens_per_microbatch, worst.peak_memory_gib, worst.device_memory_gib,
                    sum(n for n in steps if n is not None) if None not in steps else None, worst.max_batch_size,
                    max(needed) if needed else None,
                    [m for c in parts for m in c.errors], [m for c in parts for m in c.warnings], worst.device)


def validate_path(path: str | Path, gpu: GPU | None) -> list[RunCheck]:
    """Validate an experiment.yaml (all its runs) or one run.yaml, for this GPU (None: this machine's CPU)."""
    path = Path(path)
    if path.is_dir():
        path = path / "run.yaml" if (path / "run.yaml").is_file() else path / "experiment.yaml"

    try:
        head = load_yaml(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        head = None
    if isinstance(head, dict) and "kind" in head and "experiment_dir" in head:
        runs = [load_run_config(path)]
    else:
        runs = make_plan(path, gpu=gpu, estimates=False).finetune_runs
    return check_runs(runs, gpu, path)


def check_runs(runs: list[RunConfig], gpu: GPU | None, source: Path, cuda: bool | None = None) -> list[RunCheck]:
    """Every fine-tuned run's checks and the sweep's storage (validate; `tunelab run` before its first job).
    QLoRA where the jobs have no GPU (`cuda`, default: a GPU is named or here) or bitsandbytes is missing is
    refused here, naming the source file."""
    for cfg in runs:
        cfg.check_quantize(gpu is not None if cuda is None else cuda, source)
    # lengths need the model's tokenizer: a well-known model name without a local dir has none
    checks = []
    for cfg in runs:
        if cfg.training is None:
            continue
        local = Path(cfg.model.path).is_dir()
        parts = [cfg.stage_config(i) for i in range(len(cfg.stages))] or [cfg]
        lengths = [measure_lengths(part)[0] if local else None for part in parts]
        cuts = [truncation(part) if local else None for part in parts]
        checks.append(check_staged_run(cfg, gpu, lengths, cuts) if cfg.stages else
                      check_run(cfg, gpu, lengths[0], cuts[0]))
    _check_storage(runs, checks, gpu)
    for run, refusal in cluster_refusals([c for c in runs if c.training is not None]).items():  # Ray: its nodes
        next(c for c in checks if c.run == run).errors.append(refusal)
    return checks


def _check_storage(runs: list[RunConfig], checks: list[RunCheck], gpu: GPU | None) -> None:
    """The sweep against its filesystem's free space and quota (plan/storage.py): a sweep that cannot fit is an
    error, on the check of the run that needs most, naming the runs and the field that would make it fit."""
    storage = sweep_storage(runs, dtype_rule(gpu), split_lengths, None, gpu_job=gpu is not None)
    problem = storage.problem() if storage is not None else None
    if storage is not None and problem:
        biggest = max(storage.runs, key=lambda r: r.needs).run
        next(c for c in checks if c.run == biggest).errors.append(problem)


def checks_before_run(experiment_dir: str | Path, names: list[str] | None, force: bool) -> list[str]:
    """validate's errors for the runs `tunelab run` is about to start (fine-tuned, neither completed nor
    running; with force the completed too), for the GPU their run.yaml names or this machine has, else this
    machine's CPU: the same checks as `tunelab validate`, made before the first job starts. [] when all pass."""
    skip = {RunState.RUNNING} | (set() if force else {RunState.COMPLETED})
    runs = [c for c in select_runs(load_runs(experiment_dir), names)
            if c.kind == "finetune" and training_state(c.run_dir) not in skip]
    if not runs:
        return []
    gpu = planning_gpu(None, runs[0].resources.gpu)
    # a scheduler's jobs get the GPUs they ask for, wherever this coordinator runs (a login node has none)
    elsewhere = executor_class(runs[0].resources.executor).detached and runs[0].resources.gpus_per_run > 0
    checks = check_runs(runs, gpu, Path(experiment_dir), cuda=gpu is not None or elsewhere)
    return [e for c in checks for e in c.errors]
