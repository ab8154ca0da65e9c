"""The planner's estimate of one run, as run.yaml carries it (`estimate:`): written by scaffold, read by field by the
time limits, placement, the watch view, the history and the report. One model for writer and readers, so a renamed field
fails mypy instead of reading as None; older files load (defaults; unknown keys kept). Every field is described: `plan
--json` and the MCP plan tool's schema document it."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tunelab.fsutil import human_seconds
from tunelab.spec.resources import Strategy


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class StageEstimate(_Record):
    """One stage's share of its run's estimate (run.yaml's estimate.stages)."""

    name: str = Field("", description="The stage's name.")
    dataset: str = Field("", description="The dataset it trains on.")
    steps: int = Field(0, description="Its optimizer steps.")
    train_tokens: int = Field(0, description="Tokens it trains on.")
    tokens_per_microbatch: int = Field(0, description="Tokens in its largest micro-batch.")
    peak_memory_gib: float | None = Field(None, description="Its predicted peak per device, GiB.")
    seconds: float | None = Field(None, description="Its estimated time, s.")
    time_source: str = Field("", description="Where its time came from.")


class LeverSource(StrEnum):
    """Where a lever's choice came from: the memory simulator, measured costs (probe or history), an assumption, the
    spec (a field the user set wins), or the job itself."""

    SIMULATED = "simulated"
    PROBED = "probed"
    HISTORY = "history"
    ASSUMED = "assumed"
    SPEC = "spec"
    JOB = "job"


class LeverChoice(_Record):
    """One lever the plan set for a run (training.levers: auto, forecast/levers.py): the value, whether run.yaml
    carries it, its predicted effect on time and memory against the spec's own setting, and its source."""

    lever: str = Field("", description="micro_batch_split, gradient_checkpointing, packing, dataloader_workers, "
                       "eval_batch, checkpoint_every or placement.")
    value: str = Field("", description="The setting chosen, in the spec's words (e.g. '4 × 4 × 1').")
    applied: bool = Field(False, description="Written into run.yaml (the job uses it); False: shown only — a "
                          "setting that would change results, or one no run.yaml field carries.")
    seconds_delta: float | None = Field(None, description="Predicted change of the run's training time against "
                                        "the spec's own setting, s (negative: faster; None: not predicted).")
    peak_memory_gib: float | None = Field(None, description="Predicted peak per device with the choice, GiB "
                                          "(None: not modelled, e.g. on CPU).")
    effect: str = Field("", description="The predicted effect on time and memory, in words.")
    source: LeverSource = Field(LeverSource.ASSUMED, description="Where the choice and its effect came from.")
    why: str = Field("", description="The rule that decided, in words.")


class GpusNeeded(_Record):
    """A run (or one `tunelab estimate` configuration) that does not fit the GPUs it has: the fewest GPUs whose
    simulated FSDP-sharded peak fits, the nodes they take, and the time on them. Set only where it does not fit."""

    gpus: int = Field(0, description="The fewest GPUs whose FSDP-sharded peak per GPU fits (reserved + CUDA "
                      "context within the GPU's memory).")
    micro_batch: int = Field(0, description="The micro-batch the peaks are for (the run's).")
    peak_memory_gib: float | None = Field(None, description="Peak per GPU on that many GPUs, GiB.")
    fewer_peak_memory_gib: float | None = Field(None, description="Peak per GPU on one GPU fewer, which does not "
                                                "fit, GiB (None: one GPU fits).")
    gpu_memory_gib: float | None = Field(None, description="The GPU's memory, GiB.")
    strategy: Strategy | None = Field(None, description="fsdp on more than one GPU.")
    node_gpus: int = Field(0, description="GPUs one node has.")
    node_gpus_source: str = Field("", description="Where node_gpus came from: the spec, the user config, or "
                                  "assumed.")
    nodes: int = Field(1, description="Nodes those GPUs take: ceil(gpus / node_gpus).")
    gpus_per_run: int = Field(0, description="What to set resources.gpus_per_run to: gpus, rounded up to split "
                              "evenly over the nodes.")
    seconds: float | None = Field(None, description="Wall time of the training on gpus_per_run GPUs, s.")
    time_source: str = Field("", description="Where that time came from, the scaling efficiency assumed where "
                             "no history measured it.")
    gpu_hours: float | None = Field(None, description="That time × gpus_per_run.")


class DiskEstimate(_Record):
    """What a run will write to disk (estimate/storage.py), each part with how it was found. Sizes in bytes."""

    adapter_bytes: int = Field(0, description="One adapter_model.safetensors: exact, from the LoRA shapes (and "
                               "modules_to_save) on the model's config.json, the rank and the training dtype.")
    epoch_checkpoint_bytes: int = Field(0, description="One checkpoints/epoch_N: the adapter, its config and the "
                                        "tokenizer files (the model directory's sizes).")
    epoch_checkpoints: int = Field(0, description="epoch_N directories the run keeps (every epoch trained).")
    optimizer_bytes: int = Field(0, description="optimizer.pt of one trainer checkpoint: AdamW's two moments per "
                                 "trainable parameter in its dtype, plus torch's per-tensor file overhead.")
    trainer_state_bytes: int = Field(0, description="One trainer_state/checkpoint-STEP: adapter, optimizer, "
                                     "scheduler, RNG and trainer state, tokenizer.")
    trainer_states_kept: int = Field(0, description="Trainer checkpoints on disk when the run ends "
                                     "(training.keep_checkpoints, else one per epoch).")
    trainer_states_peak: int = Field(0, description="The most at once: during a save, before the retention "
                                     "drops the oldest.")
    log_bytes: int = Field(0, description="metrics.jsonl, the job's log, data_order.jsonl, status and summary: an "
                           "estimate per logged row, line and example.")
    eval_bytes: int = Field(0, description="eval/: an .eval log and scores.json per target and task, an estimate "
                            "per sample scored.")
    total_bytes: int = Field(0, description="The run directory when the run and its evaluation are done.")
    peak_bytes: int = Field(0, description="The most the run directory holds at once (total + the extra trainer "
                            "state of a save in progress).")
    source: str = Field("", description="How the figures were found, and what is only estimated.")


class SourceKind(StrEnum):
    """How a predicted time was obtained, best first: what its interval's width starts from
    (forecast/interval.py) and what the history's recorded errors are kept by (ledger/predictions.py)."""

    MEASURED = "measured"  # finished runs (or evaluations) of this model on this device
    CARRIED = "carried"  # runs of another model or shape on this device, carried over by FLOPs and layers
    PROBED = "probed"  # `tunelab probe`'s few real steps (or timed generations) of this shape
    TIMED = "timed"  # the plan's own few seconds of this shape's own work timed here (its forward and backward)
    MODEL = "model"  # a FLOPs model at an assumed utilisation or bandwidth (over a matmul timed here, or not)
    ASSUMED = "assumed"  # a stated constant

    @classmethod
    def of_eval_source(cls, source: str) -> SourceKind:
        """An evaluation's source (forecast/evaltime.py EvalSource's words) as a kind."""
        return {"history": cls.MEASURED, "probed": cls.PROBED, "timed": cls.TIMED}.get(source, cls.MODEL)


class TimeRange(_Record):
    """A predicted time as an interval (forecast/interval.py): the P10, P50 and P90 seconds — a measured time
    falls below P10 or above P90 one time in ten each, if the interval is honest — and what its width rests on."""

    p10_s: float = Field(0.0, description="10th percentile, s.")
    p50_s: float = Field(0.0, description="Median, s: the prediction itself.")
    p90_s: float = Field(0.0, description="90th percentile, s.")
    basis: str = Field("", description="What the width rests on: the source's kind, the spread of its "
                       "measurements, the recorded errors of that source on this device.")

    def covers(self, seconds: float) -> bool:
        return self.p10_s <= seconds <= self.p90_s

    def text(self) -> str:
        return f"{human_seconds(self.p50_s)} (P10–P90 {human_seconds(self.p10_s)}–{human_seconds(self.p90_s)})"


class RunEstimate(_Record):
    """Steps, tokens, peak memory, time and a SLURM limit for one run, each with its source."""

    run: str = Field("", description="The run.")
    packed: bool = Field(False, description="Sequences packed (padding-free).")
    micro_batch: int = Field(0, description="Rows per micro-batch (training.batch_size).")
    gradient_accumulation_steps: int = Field(1, description="Micro-batches per optimizer step.")
    tokens_per_microbatch: int = Field(0, description="Tokens in the largest micro-batch (what memory depends on).")
    steps: int = Field(0, description="Optimizer steps the run trains.")
    tokens_per_epoch: int = Field(0, description="Tokens per epoch (a staged run: one epoch of every stage, "
                                  "summed).")
    peak_memory_gib: float | None = Field(None, description="Predicted peak per device: reserved + CUDA "
                                          "context, GiB.")
    gpu_memory_gib: float | None = Field(None, description="The GPU's memory, GiB (None: planned for CPU).")
    memory_source: str = Field("", description="Where the peak came from (simulated step, measured history, "
                               "the analytic model).")
    tokens_per_s: float | None = Field(None, description="Training tokens per second per device.")
    startup_s: float | None = Field(None, description="Model load and tokenization before the first step, s.")
    seconds: float | None = Field(None, description="Wall time of all the run's processes together, s.")
    time_source: str = Field("", description="Where the time came from (history, a FLOPs model, none).")
    saves_in_time: bool = Field(False, description="Its mid-epoch saves are in `seconds` already: a first-contact "
                                "estimate prices them, reference runs' overhead carries theirs.")
    finish_s: float | None = Field(None, description="Of `seconds`, the step-cost calibration the job takes after "
                                   "training, s (a search's trial skips it: forecast/tunecost.py; None: none).")
    gpu_hours: float | None = Field(None, description="Time × processes.")
    slurm_time_limit: str | None = Field(None, description="Estimate × margin, rounded up: the SLURM limit "
                                         "used when the user sets none.")
    processes: int = Field(1, description="Training processes (devices) of the run.")
    nodes: int = Field(1, description="Nodes the run spans (resources.nodes_per_run, as the plan resolved it).")
    strategy: Strategy | None = Field(None, description="ddp or fsdp with several processes (None: one).")
    effective_batch: int = Field(0, description="Micro-batch × accumulation × processes.")
    scaling_efficiency: float | None = Field(None, description="Throughput of N devices / (N × one device's), "
                                             "as assumed.")
    train_tokens: int = Field(0, description="Tokens the whole run trains on (every epoch, cut at max_steps).")
    stages: list[StageEstimate] = Field([], description="A staged run: each stage's own estimate, in order "
                                        "(steps and time above are their sums, memory their max).")
    gpus_needed: GpusNeeded | None = Field(None, description="Set when the run does not fit its GPUs: the fewest "
                                           "that fit, their nodes and the time on them.")
    disk: DiskEstimate | None = Field(None, description="What the run will write to disk (plan's storage "
                                      "check: plan/storage.py).")
    levers: list[LeverChoice] = Field([], description="training.levers: auto: each lever the plan set for this "
                                      "run, its predicted effect and its source (empty: levers off).")
    eval_seconds: float | None = Field(None, description="Predicted evaluation of every target × task on loaded "
                                       "weights, s (forecast/evaltime.py; None: not predicted).")
    eval_load_s: float | None = Field(None, description="Predicted weights' load of the evaluation, once per "
                                      "target, s.")
    eval_upper_s: float | None = Field(None, description="The evaluation if every batch decodes to max_tokens, "
                                       "load included, s: what its time limit allows for.")
    eval_targets: int | None = Field(None, description="Targets (checkpoints) eval_seconds prices: an evaluation "
                                     "that scores fewer is recorded as partial (None: a plan from before it).")
    eval_samples: int | None = Field(None, description="Samples of one target, every task, that eval_seconds prices.")
    eval_source: str = Field("", description="Where the evaluation's speed came from: history, probed or assumed.")
    eval_time_source: str = Field("", description="The evaluation's source in words.")
    eval_slurm_time_limit: str | None = Field(None, description="eval_upper_s × the margin of its source (history "
                                              "1.5, probed 2, assumed 3) + 5 min, rounded up to 15 min: the Slurm "
                                              "evaluation job's limit when slurm.eval_time_limit is unset.")
    makespan_s: float | None = Field(None, description="The plan's predicted wall time of the whole sweep, s (the "
                                     "same in every run of a plan; the report checks it).")
    makespan_source: str = Field("", description="Where the makespan came from.")
    time_kind: str = Field("", description="The kind of the training time's source (forecast/interval.py "
                           "SourceKind): measured, carried, probed, timed, model or assumed.")
    startup_kind: str = Field("", description="The kind of the start-up's source.")
    time_spread: float = Field(0.0, description="The spread of the measurements the speed came from (a log-space "
                               "standard deviation; 0: one measurement).")
    seconds_raw: float | None = Field(None, description="The training time before the recorded errors of its "
                                      "source corrected it, s (what the history compares with the measured "
                                      "time: corrections never compound).")
    startup_raw_s: float | None = Field(None, description="The start-up before correction, s.")
    time_range: TimeRange | None = Field(None, description="The training time's interval (start-up included).")
    eval_raw_s: float | None = Field(None, description="The evaluation before correction, s.")
    eval_range: TimeRange | None = Field(None, description="The evaluation's interval (on loaded weights).")
    makespan_range: TimeRange | None = Field(None, description="The sweep's makespan as an interval.")
