"""tunelab's pipeline in the whole-sweep benchmark (issue 66 item 1): what its user types, at its defaults.

The spec (experiment.yaml: the model, the rows, rank × learning rate as factors, the base as a control, packing on
— tunelab packs on a CPU, examples isolated —, exact match on the test split) is written before the clock, as every
peer's configs are; then four timed commands, one after the other, each a phase: `tunelab scaffold`, `tunelab run`
(the runs side by side as the plan places them on this CPU: resources.cpu_runs_at_once auto), `tunelab eval` (one
pass per base: the control and every adapter) and `tunelab report`. The batch is the packs that hold ~micro_batch
rows, as every packed peer's (so each tool takes about as many examples per step, and as many steps); nothing else
is set (but logging_steps 1, so that a run of a few steps still logs its last loss, as torchtune's bar does every
step): levers, threads, evaluation batch are tunelab's own choices. Each run's final loss and score are read
afterwards from `tunelab results --json` (off the clock)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from peerlib.job import Inputs
from peerlib.sweep_data import SYSTEM
from peerlib.sweep_spec import Outcome, Phase, SweepSpec

TASK = "exact_match"


def experiment(inputs: Inputs, sweep: SweepSpec, mean_tokens: float) -> dict:
    """The sweep as tunelab's experiment.yaml: factors rank × learning rate, the base as a control. Packed, tunelab's
    batch_size counts packs: the packs that hold ~micro_batch rows, as every packed peer's (SweepSpec.packed_batch)."""
    return {
        "name": "sweep-peers",
        "models": [{"name": inputs.model, "path": str(inputs.model_dir)}],
        "datasets": [{"name": "passages", "format": "chat",
                      **{s: str(inputs.jsonl(s)) for s in ("train", "validation", "test")}}],
        "system_prompt": SYSTEM,
        "factors": {"lora_rank": list(sweep.ranks), "learning_rate": list(sweep.learning_rates)},
        "controls": True,
        "training": {
            "epochs": sweep.epochs, "batch_size": sweep.packed_batch(mean_tokens), "max_seq_len": sweep.max_seq_len,
            "lora_target_modules": list(sweep.target_modules), "lora_dropout": 0.0, "seed": sweep.seed,
            "packing": True, "dtype": "float32", "logging_steps": 1,  # a final loss even on a few steps
        },
        "eval": {"task": TASK, "split": "test", "max_tokens": sweep.max_new_tokens, "epochs": "last"},
        "resources": {"executor": "local", "gpus_per_run": 0},
    }


def phases(inputs: Inputs, sweep: SweepSpec, out: Path, python: Path, mean_tokens: float) -> list[Phase]:
    """experiment.yaml written under out/experiment; the four commands a user types from there."""
    exp = out / "experiment"
    exp.mkdir(parents=True, exist_ok=True)
    (exp / "experiment.yaml").write_text(yaml.safe_dump(experiment(inputs, sweep, mean_tokens), sort_keys=False))
    tunelab = [str(python), "-m", "tunelab"]
    return [Phase("scaffold", [*tunelab, "scaffold", str(exp / "experiment.yaml"), "--force"]),
            Phase("run", [*tunelab, "run", str(exp)]),
            Phase("eval", [*tunelab, "eval", str(exp)]),
            Phase("report", [*tunelab, "report", str(exp)])]


def _score(record: dict) -> float | None:
    """The headline of one `results --json` record: exact match on the last evaluated checkpoint."""
    value = (record.get("scores") or {}).get(TASK, record.get("score"))
    return float(value) if value is not None else None


def outcomes(out: Path, python: Path, env: dict[str, str]) -> list[Outcome]:
    """Each run's and the control's final loss and score, from `tunelab results --json` (after the clock)."""
    done = subprocess.run([str(python), "-m", "tunelab", "results", str(out / "experiment"), "--json"],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"tunelab results --json failed: {done.stderr.strip()[-500:]}")
    rows = []
    for record in json.loads(done.stdout)["runs"]:
        factors = record.get("factors") or {}
        rows.append(Outcome(name=record["name"], rank=factors.get("lora_rank"),
                            learning_rate=factors.get("learning_rate"), final_loss=record.get("final_loss"),
                            accuracy=_score(record)))
    return rows


class TunelabPipeline:
    """tunelab's sweep as the benchmark runs every pipeline: phases, then outcomes (peerlib/sweep_peer.py's shape)."""

    def __init__(self, python: Path, inputs: Inputs, sweep: SweepSpec, out: Path, mean_tokens: float) -> None:
        self.python, self.inputs, self.sweep, self.out = python, inputs, sweep, out
        self.mean_tokens = mean_tokens  # the training rows' mean token count (the packed batch's size)
        self.env: dict[str, str] = {}  # the pipeline's environment, set by the runner (results reads its ledger)
        self.notes = (f"{len(sweep.configs())} runs placed by its plan (resources.cpu_runs_at_once auto) over "
                      f"{sweep.threads} cores, packed (examples isolated), batch = the packs that hold "
                      "~micro-batch rows, its own eval batch")

    def phases(self) -> list[Phase]:
        return phases(self.inputs, self.sweep, self.out, self.python, self.mean_tokens)

    def outcomes(self, measured: dict) -> list[Outcome]:
        return outcomes(self.out, self.python, self.env)
