"""The planner's estimate of one run, as run.yaml carries it (`estimate:`): written by scaffold from the plan
(estimate/runs.py makes it) and read back, by field, by the SLURM time limit, local placement, node packing,
the watch view, the history and the report. One model for writer and readers, so a renamed field fails mypy
instead of reading as None. Files from older versions load: missing keys take the defaults, unknown keys are
kept (and written back). Every field says what it is: `plan --json` and the MCP plan tool carry these records,
and their output schema documents every key."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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


class RunEstimate(_Record):
    """Steps, tokens, peak memory, time and a SLURM limit for one run, each with its source."""

    run: str = Field("", description="The run.")
    packed: bool = Field(False, description="Sequences packed (padding-free).")
    micro_batch: int = Field(0, description="Rows per micro-batch (training.batch_size).")
    gradient_accumulation_steps: int = Field(1, description="Micro-batches per optimizer step.")
    tokens_per_microbatch: int = Field(0, description="Tokens in the largest micro-batch (what memory depends "
                                       "on).")
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
