"""A peer's pipeline in the whole-sweep benchmark (issue 66 item 1): its trainer once per configuration, one after
the other with every thread (none of these trainers places runs side by side on a CPU), then every adapter and the
base evaluated by lm-eval's Python API in ONE process (peerlib/lmeval_sweep.py: the base loaded once, adapters
swapped; faster than one CLI process a target, peers.py's evaluation comparison) on the same test rows, prompt,
greedy decoding, stop and token limit as tunelab's exact match (peerlib/lmeval.py's task).

Each trainer's config is peerlib's one-job mapping (peerlib/<tool>.py, the same mapping peers.py's training
comparison checks) with the sweep's rank, alpha, learning rate, max_seq_len and epochs; packing is switched on
where the tool packs on a CPU (PACKING: the config keys set), and the notes say where it is not."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from peerlib import axolotl, llamafactory, lmeval, torchtune
from peerlib.job import Inputs
from peerlib.measure import Measured
from peerlib.registry import Found, env_python
from peerlib.sweep_spec import Outcome, Phase, SweepSpec, run_name
from peerlib.tunelab_answers import EvalJob, Row, Target

BATCH = 16  # lm-eval's batch (peers.py's evaluation comparison uses the same)
TASK = "exact_match"


def torchtune_packed(config: dict, sweep: SweepSpec, mean_tokens: float) -> dict:
    """torchtune packs on a CPU (PackedDataset: packs of max_seq_len tokens, a block-causal mask)."""
    config["dataset"]["packed"] = True
    config["batch_size"] = sweep.packed_batch(mean_tokens)
    return config


def llamafactory_packed(config: dict, sweep: SweepSpec, mean_tokens: float) -> dict:
    """LLaMA-Factory's neat_packing: packs of cutoff_len tokens whose rows see only themselves (off flash
    attention its collator turns the packs' sequence ids into a block-diagonal 4D mask: eager or sdpa on a CPU)."""
    config.update(packing=True, neat_packing=True, per_device_train_batch_size=sweep.packed_batch(mean_tokens))
    return config


def axolotl_packed(config: dict, sweep: SweepSpec, mean_tokens: float) -> dict:
    """axolotl's sample_packing (multipack bins of sequence_len tokens); sdpa is one of the attention backends its
    validation names as isolating a pack's samples."""
    config.update(sample_packing=True, attn_implementation="sdpa", micro_batch_size=sweep.packed_batch(mean_tokens))
    return config


@dataclass(frozen=True)
class Packing:
    """How one tool's config is rewritten to pack: the rewrite, the config file it applies to, what the notes say."""
    patch: Callable[[dict, SweepSpec, float], dict]
    config: str
    notes: str


# a tool not here is not packed (UNPACKED says why)
PACKING = {
    "torchtune": Packing(torchtune_packed, torchtune.CONFIG,
                         "packed (torchtune's PackedDataset, block-causal mask, batch = the packs that hold "
                         "~micro-batch rows)"),
    "llamafactory": Packing(llamafactory_packed, llamafactory.CONFIG,
                            "packed (neat_packing: block-diagonal 4D mask, batch = the packs that hold ~micro-batch "
                            "rows)"),
    "axolotl": Packing(axolotl_packed, axolotl.CONFIG,
                       "packed (sample_packing with sdpa, batch = the packs that hold ~micro-batch rows)"),
}
UNPACKED = {"oumi": "not packed: Oumi's data.train.pack cuts streamed text into fixed chunks for pretraining (rows "
                    "not isolated, no answer-only labels); padded batches of micro-batch rows"}


def eval_job(inputs: Inputs, sweep: SweepSpec) -> EvalJob:
    """The test rows as lm-eval's task reads them: the prompt messages (system, user) and the answer."""
    rows = [Row(i, r["messages"][:-1], r["messages"][-1]["content"]) for i, r in enumerate(inputs.rows("test"))]
    return EvalJob(TASK, rows, sweep.max_new_tokens)


def _patched(run_dir: Path, packing: Packing, sweep: SweepSpec, mean_tokens: float) -> None:
    """The tool's config (JSON or YAML, read as YAML) rewritten for packing."""
    config = run_dir / packing.config
    config.write_text(yaml.safe_dump(packing.patch(yaml.safe_load(config.read_text()), sweep, mean_tokens),
                                     sort_keys=False))


class PeerPipeline:
    """One peer's sweep: a training phase per configuration, then one lm-eval API phase over every target."""

    def __init__(self, found: Found, inputs: Inputs, sweep: SweepSpec, out: Path, mean_tokens: float) -> None:
        assert found.peer is not None and found.python is not None
        self.found, self.inputs, self.sweep, self.out = found, inputs, sweep, out
        self.mean_tokens = mean_tokens  # the training rows' mean token count (a packed batch's size)
        self.packing = PACKING.get(found.name)

    @property
    def notes(self) -> str:
        pack = self.packing.notes if self.packing else UNPACKED.get(self.found.name, "not packed")
        return (f"{len(self.sweep.configs())} runs one after the other, {self.sweep.threads} threads each, {pack}; "
                f"lm-eval {BATCH}-row batches, one process")

    def phases(self) -> list[Phase]:
        """Every config written now (before the clock, as tunelab's spec is); the evaluation's command is made when
        it starts, from the adapters the runs wrote."""
        peer, python = self.found.peer, self.found.python
        assert peer is not None and python is not None
        out: list[Phase] = []
        for rank, lr in self.sweep.configs():
            run_dir = self.out / "runs" / run_name(rank, lr)
            command = peer.train_command(self.inputs, self.sweep.job(rank, lr), run_dir, python)
            if self.packing:
                _patched(run_dir, self.packing, self.sweep, self.mean_tokens)
            out.append(Phase(f"train {run_name(rank, lr)}", command, run_dir))
        tasks = self.out / "lm-task"
        lmeval.write_task(tasks, eval_job(self.inputs, self.sweep), [self.inputs.model_dir])
        out.append(Phase("eval (lm-eval API)", lambda: lmeval.api_command(
            self.targets(), tasks, self.out / "eval", env_python(lmeval.ENV), BATCH), self.out))
        return out

    def targets(self) -> list[Target]:
        assert self.found.peer is not None
        base = Target("base", self.inputs.model_dir, None, self.out, "base")
        return [base] + [Target(name, self.inputs.model_dir, self.found.peer.adapter_dir(self.out / "runs" / name),
                                self.out / "runs" / name, "last")
                         for name in (run_name(r, lr) for r, lr in self.sweep.configs())]

    def outcomes(self, measured: dict[str, Measured]) -> list[Outcome]:
        """Each run's last logged loss (the tool's own parser on its output) and every target's exact match (lm-eval's
        results file)."""
        assert self.found.peer is not None
        accuracy = lmeval.parse_accuracy(self.out / "eval")
        rows = [Outcome("base", accuracy=accuracy.get("base"))]
        for rank, lr in self.sweep.configs():
            name = run_name(rank, lr)
            run = measured.get(f"train {name}")
            losses = self.found.peer.parse(run, self.out / "runs" / name).losses if run else []
            rows.append(Outcome(name, rank, lr, losses[-1] if losses else None, accuracy.get(name)))
        return rows


def lmeval_ready() -> str:
    """'' when lm-eval's environment exists, else why a peer's pipeline cannot end."""
    stamp = env_python(lmeval.ENV).parent.parent / ".tunelab-peer-env"
    return "" if stamp.exists() else f"no lm-eval environment for its evaluation: run scripts/peer-env {lmeval.ENV}"
