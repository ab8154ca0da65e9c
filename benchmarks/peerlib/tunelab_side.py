"""tunelab's side of the training comparison: the same job as a one-run experiment, trained by `tunelab train
run.yaml` (the job program its job scripts start as `python -m tunelab.train.job`), measured like every peer.

The spec is written before the clock starts (as every peer's config is written before its command runs); the timed
command is what a user types from there: `tunelab scaffold experiment.yaml` then `tunelab train runs/NAME/run.yaml`
(issue 66: scaffolding ran off the clock before, while every peer's clock holds its own preprocessing), so the wall
and the first step count from scaffold's start. The run's step lines ("[tunelab train] step N/M ... tok/s T")
give the step times and tunelab's own tokens/s."""

from __future__ import annotations

import re
import shlex
import statistics
import sys
from pathlib import Path

import yaml

from peerlib.job import SYSTEM, Inputs, Job
from peerlib.measure import Measured, installed_version
from peerlib.result import StepLog

STEP_LINE = re.compile(r"\[tunelab train\] step (\d+)/(\d+) epoch \S+ loss ([0-9.]+) tok/s ([0-9.]+)")
RUN_NAME = "peer-job"


def spec(inputs: Inputs, job: Job) -> dict:
    """The job as an experiment.yaml: one model, one dataset, no controls, no factor."""
    return {
        "name": "peers",
        "models": [{"name": inputs.model, "path": str(inputs.model_dir)}],
        "datasets": [{"name": "caps", "format": "chat", **{s: str(inputs.jsonl(s)) for s in
                                                           ("train", "validation", "test")}}],
        "system_prompt": SYSTEM,
        "controls": False,
        "training": {
            "epochs": job.epochs, "learning_rate": job.learning_rate, "lr_scheduler": job.scheduler,
            "warmup_steps": job.warmup_steps, "batch_size": job.micro_batch, "max_seq_len": job.max_seq_len,
            "lora_rank": job.rank, "lora_alpha": job.alpha, "lora_dropout": job.dropout,
            "lora_target_modules": list(job.target_modules), "dtype": job.dtype, "seed": job.seed,
            "packing": False, "logging_steps": 1,
        },
        "resources": {"executor": "local", "gpus_per_run": 1 if job.cuda else 0},
    }


class TunelabSide:
    name = "tunelab"
    env = ""

    def version(self, python: Path) -> str:
        return installed_version(python, "tunelab")

    def run_yaml(self, out: Path) -> Path:
        found = sorted((out / "experiment" / "runs").glob("*/run.yaml"))
        if len(found) != 1:
            raise RuntimeError(f"tunelab scaffold wrote {len(found)} runs under {out / 'experiment'}; expected one")
        return found[0]

    def train_command(self, inputs: Inputs, job: Job, out: Path, python: Path) -> list[str]:
        """Write experiment.yaml; return `scaffold && train` as one shell command (the run's name is scaffold's:
        the glob finds its one run.yaml, which adapter_dir checks afterwards)."""
        exp = out / "experiment"
        exp.mkdir(parents=True, exist_ok=True)
        (exp / "experiment.yaml").write_text(yaml.safe_dump(spec(inputs, job), sort_keys=False))
        tunelab = f"{shlex.quote(str(python))} -m tunelab"
        runs = shlex.quote(str(exp / "runs"))
        return ["sh", "-c", f"{tunelab} scaffold {shlex.quote(str(exp / 'experiment.yaml'))} --force && "
                f"exec {tunelab} train {runs}/*/run.yaml"]

    def adapter_dir(self, out: Path) -> Path:
        return self.run_yaml(out).parent / "checkpoints" / "epoch_0"  # epochs count from 0 (1 epoch: epoch_0)

    def parse(self, measured: Measured, out: Path) -> StepLog:
        log = StepLog()
        rates = []
        for line in measured.lines:
            m = STEP_LINE.search(line.text)
            if m:
                log.step_times.append(line.t)
                log.losses.append(float(m.group(3)))
                rates.append(float(m.group(4)))
        log.own_tokens_per_s = statistics.median(rates[2:]) if len(rates) > 2 else None
        return log


PEER = TunelabSide()

if __name__ == "__main__":  # python peerlib/tunelab_side.py OUT MODEL: write the spec, print the command
    from peerlib.job import prepare
    target = Path(sys.argv[1])
    print(shlex.join(PEER.train_command(prepare(target / "inputs", sys.argv[2]), Job(), target, Path(sys.executable))))
