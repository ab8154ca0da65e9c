"""plan: verify every resource a sweep needs and lay out its runs, before any job is queued.

Estimates (batch size, memory, time) come from the planner's estimators; until they exist the
plan says so instead of guessing.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.catalog import GPU
from tunelab.data.formatting import ChatMode, PromptFormat
from tunelab.data.images import example_images
from tunelab.data.splits import load_data
from tunelab.data.verify import DatasetInfo, verified_dataset
from tunelab.diskcache import cached_json, file_stamps
from tunelab.errors import TunelabError
from tunelab.estimate.dataset import first_answer_index
from tunelab.evaluate.usertasks import check_sweep_tasks
from tunelab.execute.executors import executor_class
from tunelab.forecast import cpu_sharing, levers, loopcost, planscope, sweeptime
from tunelab.forecast.cpu_sharing import CpuSharing, cpu_threads
from tunelab.forecast.gpus import NodeSize, sized_estimate
from tunelab.forecast.ranged import contention_warnings, ranged_training, recorded_estimates
from tunelab.forecast.runs import RunLengths
from tunelab.forecast.tunecost import SearchCost
from tunelab.host.adapt import watch_load
from tunelab.ledger import history, predictions
from tunelab.models.check import ModelInfo, check_model_dir
from tunelab.models.loss_positions import kept_share
from tunelab.models.vlm import is_vision_language
from tunelab.plan.attention import attention_notes, resolve_runs_attention
from tunelab.plan.design import expand_runs, resolve_dataset
from tunelab.plan.image_checks import SplitImages, image_token_delta, run_image_facts
from tunelab.plan.nodes import NodeRaise, node_size, spread_over_nodes
from tunelab.plan.stage_checks import check_orders, dataset_error, stage_dataset_needs
from tunelab.plan.storage import plan_storage
from tunelab.plan.tuned import with_default_twins, with_tuned_rates
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import LeverChoice, RunEstimate
from tunelab.spec import DatasetSpec, ExperimentSpec, load_spec, resolve_path
from tunelab.stats.power import detectable_difference

ACCURACY_BUILTINS = ("exact_match", "includes", "choice")


def resolution_notes(spec: ExperimentSpec, datasets: dict[str, DatasetInfo]) -> list[str]:
    """One line per accuracy task × dataset split: the difference under which two runs cannot be told apart."""
    notes = []
    for t in spec.eval.resolved_tasks():
        if t.builtin not in ACCURACY_BUILTINS:
            continue
        for name in [t.dataset] if t.dataset else spec.dataset_levels():
            info = datasets.get(name)
            n = info.counts.get(t.split) if info else None
            limit = t.limit or spec.eval.limit
            if not n:
                continue
            n = min(n, limit) if limit else n
            det = detectable_difference(n)
            if det.paired is None or det.unpaired is None:
                notes.append(f"{t.name} on {name} / {t.split}, {n} test samples: too few to resolve any difference "
                             "in accuracy between two runs (alpha 0.05, power 0.8)")
                continue
            notes.append(f"{t.name} on {name} / {t.split}, {n} test samples: differences in accuracy under "
                         f"~{100 * det.paired:.0f} pp between two runs are not resolvable (paired on the same "
                         f"samples, assuming {det.discordant:.0%} of them change answer; ~{100 * det.unpaired:.0f} pp "
                         f"unpaired at {det.baseline:.0%} accuracy); alpha {det.alpha}, power {det.power}")
    return notes


if TYPE_CHECKING:
    from tunelab.forecast.deadline import DeadlinePlan
    from tunelab.forecast.evalrun import RunEvalPrediction


@dataclass
class Plan:
    spec: ExperimentSpec
    spec_path: Path
    experiment_dir: Path
    runs: list[RunConfig]
    models: dict[str, ModelInfo]
    datasets: dict[str, DatasetInfo]
    recipe: str
    warnings: list[str] = field(default_factory=list)
    gpu: GPU | None = None
    estimates: dict[str, RunEstimate] = field(default_factory=dict)
    truncation: dict[str, list[Truncation]] = field(default_factory=dict)  # run -> per split
    images: dict[str, list[SplitImages]] = field(default_factory=dict)  # VLM run -> per split (plan/image_checks.py)
    forecast: DeadlinePlan | None = None  # the sweep's predicted makespan and where each run goes (sweeptime.py)
    node: NodeSize = field(default_factory=NodeSize.assumed)  # GPUs a node has, and where that came from
    node_raises: list[NodeRaise] = field(default_factory=list)  # runs spread over more nodes (plan/nodes.py)
    levers: dict[str, list[LeverChoice]] = field(default_factory=dict)  # run -> its levers (forecast/levers.py)
    deadline: DeadlinePlan | None = None  # the sweep against resources.deadline / --deadline (forecast/deadline.py)
    storage_problem: str | None = None  # the sweep does not fit its filesystem: why (plan/storage.py); scaffold refuses
    search: list[SearchCost] = field(default_factory=list)  # tune: each combination's search, priced (forecast/tunecost.py)
    cpu_sharing: CpuSharing | None = None  # local CPU: runs side by side and threads each (forecast/cpu_sharing.py)
    evaluations: dict[str, RunEvalPrediction] = field(default_factory=dict)  # each run's (forecast/evalrun.py)
    recorded: dict[str, RunEstimate] = field(default_factory=dict)  # each run's estimate as run.yaml records it
    resolution: list[str] = field(default_factory=list)  # what the evaluation can resolve (resolution_notes)

    def totals(self) -> dict[str, Any]:
        secs = [e.seconds for e in self.estimates.values()]
        known = [x for x in secs if x is not None]
        gpu_h = [e.gpu_hours for e in self.estimates.values() if e.gpu_hours is not None]
        return {"seconds": round(sum(known), 1) if known else None, "runs_without_time": len(secs) - len(known),
                "gpu_hours": round(sum(gpu_h), 3) if gpu_h else None}

    @property
    def finetune_runs(self) -> list[RunConfig]:
        return [r for r in self.runs if r.kind == "finetune"]

    @property
    def controls(self) -> list[RunConfig]:
        return [r for r in self.runs if r.kind == "control"]


def verify_resources(spec: ExperimentSpec, spec_path: Path, experiment_dir: Path
                     ) -> tuple[dict[str, ModelInfo], dict[str, DatasetInfo]]:
    """Check model dirs, datasets, their splits and rows; errors name the spec file and the field at fault.
    A split the spec asks for is made here, once, and recorded in the experiment directory."""
    base = spec_path.parent
    models: dict[str, ModelInfo] = {}
    for i, m in enumerate(spec.models):
        if m.name not in spec.model_levels():
            continue
        try:
            models[m.name] = check_model_dir(resolve_path(base, m.path))
        except TunelabError as exc:
            raise TunelabError(str(exc), file=spec_path, field=f"models[{i}].path") from None
    needed = _needed_splits(spec)
    datasets: dict[str, DatasetInfo] = {}
    for i, d in enumerate(spec.datasets):
        if d.name not in needed:
            continue
        try:
            datasets[d.name] = verified_dataset(resolve_dataset(d, base), spec.prompt_levels(), spec.system_prompt,
                                                experiment_dir, needed[d.name])
        except TunelabError as exc:
            raise dataset_error(spec, i, exc, spec_path) from None
    return models, datasets


def _needed_splits(spec: ExperimentSpec) -> dict[str, set[str]]:
    """Dataset -> the splits some run, stage or task reads from it."""
    needed = stage_dataset_needs(spec)
    for name in spec.dataset_levels():
        needed.setdefault(name, {"train"})
        if spec.training.validation_every_steps or "validation_every_steps" in spec.factors:
            needed[name].add("validation")
    for t in spec.eval.resolved_tasks():
        if t.builtin is None:
            continue
        for name in [t.dataset] if t.dataset else spec.dataset_levels():
            needed.setdefault(name, set()).add(t.split)
    return needed


@dataclass(frozen=True)
class LengthKey:
    """Everything a run's token lengths depend on: the tokenizer's model, the data (and its files' stamps, so a
    rewritten file is measured again) and the prompt format. Hashable: the in-process cache's key."""

    model: str
    dataset_json: str
    experiment_dir: str
    prompt: str | None
    system_prompt: str | None
    chat_template: ChatMode
    chat_template_date: str
    train_on_input: bool
    stamps: tuple[tuple[str, int, int], ...]
    min_pixels: int | None = None  # a VLM's image tokens depend on these (training.min_pixels / max_pixels)
    max_pixels: int | None = None

    @classmethod
    def of(cls, cfg: RunConfig) -> LengthKey:
        stamps = tuple((p, (st := Path(p).stat()).st_mtime_ns, st.st_size) for p in cfg.dataset.split_files().values())
        t = cfg.training
        return cls(cfg.model.path, cfg.dataset.model_dump_json(), cfg.experiment_dir, cfg.prompt, cfg.system_prompt,
                   cfg.chat_template, cfg.chat_template_date, bool(t and t.train_on_input), stamps,
                   t.min_pixels if t else None, t.max_pixels if t else None)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt")


@lru_cache(maxsize=32)
def _split_masks(key: LengthKey) -> dict[str, tuple[tuple[int, int], ...]]:
    """Per split: (tokens, position of the first answer token) of every example, as training encodes it;
    kept on disk (diskcache.py) under the inputs and the tokenizer's files, so a second plan skips the tokenizer."""
    tokenizer = file_stamps([Path(key.model) / f for f in TOKENIZER_FILES])
    measured = cached_json("token-lengths", [list(astuple(key)), tokenizer], lambda: _measure_split_masks(key))
    return {split: tuple((int(n), int(a)) for n, a in rows) for split, rows in measured.items()}


def _measure_split_masks(key: LengthKey) -> dict[str, list[tuple[int, int]]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(key.model)
    fmt = PromptFormat(key.chat_template, key.chat_template_date, key.train_on_input)
    data = load_data(DatasetSpec.model_validate_json(key.dataset_json), key.experiment_dir)
    reader = data.reader(key.prompt, key.system_prompt)
    out = {}
    for split in data.splits:
        examples = data.examples(split, reader)
        enc = fmt.encode_examples(examples, tok)
        out[split] = [(len(e["input_ids"]), first_answer_index(e["completion_mask"])) for e in enc]
        if is_vision_language(key.model):  # each image's placeholder becomes its image tokens (in the prompt)
            extra = [image_token_delta(example_images(e.messages), key.model, key.min_pixels, key.max_pixels)
                     for e in examples]
            out[split] = [(n + x, a + x) for (n, a), x in zip(out[split], extra)]
    return out


def split_lengths(cfg: RunConfig) -> dict[str, tuple[tuple[int, int], ...]]:
    """(tokens, first answer position) per example and split, measured once per model x data x format."""
    return _split_masks(LengthKey.of(cfg))


def measure_lengths(cfg: RunConfig) -> RunLengths:
    """Token lengths of train and validation as training will format them (real tokenizer), and the share of a
    micro-batch's logits its loss keeps (models/loss_positions.py: what the plan's timing of a step keeps)."""
    per_split = split_lengths(cfg)
    train = per_split.get("train", ())
    t = cfg.training
    kept = kept_share(train, t.batch_size, t.packing, t.max_seq_len) if t is not None else 1.0
    return RunLengths([n for n, _ in train], [n for n, _ in per_split.get("validation", ())], kept)


@dataclass(frozen=True)
class Truncation:
    """Examples of a split that max_seq_len cuts: their answers lose tokens (or vanish)."""

    split: str
    examples: int
    cut: int
    no_answer_left: int
    longest: int
    stage: str | None = None  # a staged run: the stage whose dataset and max_seq_len these are


def truncation(cfg: RunConfig) -> list[Truncation]:
    """Per split, the examples longer than the run's max_seq_len (never silent: plan shows it, validate fails);
    a staged run's per stage, on each stage's dataset at its max_seq_len."""
    if cfg.stages:
        return [replace(t, stage=s.name) for i, s in enumerate(cfg.stages) for t in truncation(cfg.stage_config(i))]
    assert cfg.training is not None
    limit = cfg.training.max_seq_len
    return [Truncation(split, len(rows), sum(1 for n, _ in rows if n > limit), sum(1 for _, a in rows if a >= limit),
                       max(n for n, _ in rows)) for split, rows in split_lengths(cfg).items() if rows]


def estimate_runs(runs: list[RunConfig], gpu: GPU | None, node: NodeSize | None = None,
                  threads: int | None = None) -> dict[str, RunEstimate]:
    """Estimates for every fine-tuned run (a staged run's per stage, summed), with the fewest GPUs that fit a
    run that does not fit its own (nodes counted at `node`); on a CPU at `threads` per run (default: the job's
    rule on all the cores); datasets measured once per model x dataset x prompt."""
    past, errors = history.load(), predictions.load()
    threads = (threads or cpu_threads()) if gpu is None else None
    node = node or NodeSize.assumed()
    device = gpu.name if gpu is not None else "cpu"
    return {cfg.name: ranged_training(sized_estimate(cfg, gpu, measure_lengths, past, node, threads), errors, device)
            for cfg in runs if cfg.training is not None}


def make_plan(spec_path: str | Path, experiment_dir: str | Path | None = None, gpu: GPU | None = None,
              estimates: bool = True, deadline: str | None = None, spec: ExperimentSpec | None = None) -> Plan:
    """The plan of a spec (`spec`: the one the caller loaded from `spec_path` already): its runs, checks and (with
    `estimates`) every prediction. On a CPU with nothing kept of the job's loop, the loop's measuring job starts
    first, importing while the plan reads (forecast/loopjob.py)."""
    with loopcost.ahead(gpu is None and estimates):
        return _make_plan(spec_path, experiment_dir, gpu, estimates, deadline, spec)


def _make_plan(spec_path: str | Path, experiment_dir: str | Path | None, gpu: GPU | None, estimates: bool,
               deadline: str | None, spec: ExperimentSpec | None) -> Plan:
    watch_load()  # others' load while this plan is made: a job starting now fits its threads to it (host/adapt.py)
    spec_path = Path(spec_path).resolve()
    spec = spec or load_spec(spec_path)
    deadline, deadline_s = sweeptime.sweep_deadline(spec, deadline)
    exp_dir = Path(experiment_dir).resolve() if experiment_dir else spec_path.parent
    models, datasets = verify_resources(spec, spec_path, exp_dir)
    runs = with_tuned_rates(spec, with_default_twins(spec, expand_runs(spec, spec_path.parent, exp_dir)),
                            exp_dir)  # tunelab tune's rates; each tuned run's twin at the default rate beside it
    check_orders(runs, spec_path)  # curriculum fields exist in the rows they order (each stage's own dataset)
    levers.resolve_effective_batches(runs, spec, spec_path, gpu is not None)
    attention = resolve_runs_attention(runs)  # auto → the kernel for each run's batches, written into run.yaml
    check_sweep_tasks(spec, spec_path, runs, exp_dir)
    for cfg in runs:  # QLoRA needs a GPU and bitsandbytes: refused here
        cfg.check_quantize(gpu is not None, spec_path)
    node = node_size(spec.resources)
    node_raises, warnings = spread_over_nodes(runs, node)  # before estimates and scaffold: run.yaml says it
    res = spec.resources
    nproc = res.processes_per_run(1 if gpu is not None else 0)
    how = res.distributed.upper() if res.distributed != "auto" else "DDP, or FSDP where a run does not fit one GPU"
    recipe = "single process" if nproc <= 1 else (
        f"distributed: {nproc} processes per run (torchrun over "
        + (f"NCCL on {gpu.name}: {how})" if gpu is not None else f"gloo on CPU: {how})"))
    recipe += ", validation loss every " + (
        f"{spec.training.validation_every_steps} steps" if spec.training.validation_every_steps else "— (off)"
    )
    for name, info in models.items():
        if spec.chat_template == "always" and not info.has_chat_template:
            raise TunelabError(f"chat_template is 'always' but model '{name}' has no chat template", file=spec_path,
                               field="chat_template")
    tiny = any((Path(i.path) / "tunelab_tiny.json").is_file() for i in models.values())
    if tiny and any(r.training and not r.training.modules_to_save for r in runs):
        warnings.append("random-init tiny models barely learn with LoRA alone: add modules_to_save: [embed_tokens, lm_head]")
    warnings += attention_notes(attention)
    plan = Plan(spec, spec_path, exp_dir, runs, models, datasets, recipe, warnings, gpu, node=node,
                node_raises=node_raises)
    if estimates:
        with planscope.one_plan():  # what this plan times under contention it keeps to its end
            _estimate(plan, deadline, deadline_s)
    return plan


def _share_cpu(plan: Plan) -> int:
    """Runs side by side on this CPU, chosen (or kept as set) and written into the runs: the threads each gets."""
    if executor_class(plan.spec.resources.executor).detached:
        return cpu_threads(under_load_now=False)  # a detached executor's jobs (Slurm) run elsewhere: the rule there
    plan.cpu_sharing = cpu_sharing.share_cpu(plan.finetune_runs, plan.runs, plan.spec.resources,
                                             lambda t: estimate_runs(plan.runs, None, plan.node, t))
    if plan.cpu_sharing.load:
        plan.warnings.append(plan.cpu_sharing.load[0].upper() + plan.cpu_sharing.load[1:])
    return plan.cpu_sharing.chosen.threads_each


def _estimate(plan: Plan, deadline: str | None, deadline_s: float | None) -> None:
    """A plan's estimates and what follows from them: truncation, images, levers, times, the deadline verdict,
    the search's price, storage, the local schedule and their warnings."""
    spec, runs, gpu, node, spec_path = plan.spec, plan.runs, plan.gpu, plan.node, plan.spec_path
    plan.truncation = {cfg.name: truncation(cfg) for cfg in plan.finetune_runs}
    for name, rows in plan.truncation.items():
        for t in rows:
            if t.cut and t.split in ("train", "validation"):
                plan.warnings.append(f"{name}{f' (stage {t.stage})' if t.stage else ''}: {t.cut} of {t.examples} {t.split} examples are longer than "
                                     f"max_seq_len (longest {t.longest} tokens): their answers are cut")
    plan.images = {k: v for cfg in plan.finetune_runs if is_vision_language(cfg.model.path)
                   for k, v in run_image_facts(cfg, split_lengths).items()}
    threads = _share_cpu(plan) if gpu is None else None  # runs side by side on this CPU: threads each
    predicted = sweeptime.predict_sweep(  # the levers go into the runs' training; every time figure, once
        sweeptime.Sweep(spec, runs, {}, gpu, node, spec_path=spec_path), (deadline, deadline_s), lambda: estimate_runs(
            runs, gpu, node, threads), measure_lengths, split_lengths, threads)
    plan.levers, plan.estimates, plan.deadline = predicted.levers, predicted.estimates, predicted.deadline
    plan.search, plan.forecast, plan.evaluations = predicted.search, predicted.forecast, predicted.evaluations
    storage = plan_storage(plan, split_lengths)  # each estimate's disk; a sweep that cannot fit: why
    # + each run's evaluation and the sweep's makespan, as scaffold records them (the report checks them)
    plan.recorded = recorded_estimates(runs, plan.estimates, plan.evaluations, plan.forecast)
    plan.resolution = resolution_notes(spec, plan.datasets)  # the evaluation's power, priced with the estimates
    plan.storage_problem = storage[0] if storage else None
    plan.warnings += storage
    plan.warnings += contention_warnings(plan.estimates)
    for e in plan.estimates.values():
        if (gpu is not None and e.peak_memory_gib is not None and e.gpu_memory_gib
                and e.peak_memory_gib > e.gpu_memory_gib):
            fewest = (f"; it fits {e.gpus_needed.gpus} GPUs FSDP-sharded: set resources.gpus_per_run: "
                      f"{e.gpus_needed.gpus_per_run}" if e.gpus_needed is not None else "")
            plan.warnings.append(f"{e.run}: predicted peak {e.peak_memory_gib} GiB exceeds {gpu.name}'s "
                                 f"{e.gpu_memory_gib:.1f} GiB (run `tunelab validate` for a batch that fits)"
                                 + fewest)
