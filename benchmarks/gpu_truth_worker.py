"""One process measuring several rows of the GPU kit in turn (gpu_truth_shape.measure_group starts it):
`python benchmarks/gpu_truth_worker.py PLAN.json`. The training stack is imported once (10-25 s a process),
then each row is tunelab's probe (`probe_steps.probe_run`, what `python -m tunelab.train.probe_steps RUN_YAML
--steps=N` runs), its result written beside its run as the probe's own, and a status file for the kit.

What a row could leave to the next is ruled out or said: the first failure ends the process (the rows after it
are the kit's to start again in a fresh one), and so does memory still allocated after a row is freed. NVML's
baseline is the one read before this process touched CUDA, so a later row's NVML used is its process's whole
share as a first row's is; the CUDA context of a later row is not read (it was made by an earlier row), and
its record says none.

A row whose model directory is a build without weights (models/random_init.py: "drawn at load") gets its
weights drawn on its device in this process: `from_pretrained` of such a directory is `draw_random_model`.

The CPU smoke's plan says `"generation": false`: the probe's last part, its generation timing (probe_generate.py,
which the kit records nothing of), is left out there. On the CPU it was two thirds of a row's time (batches of 16
decoding through the 0.5B models' 152k-word head); the GPU grid's rows keep it, as `probe_steps` runs it.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

LEFTOVER_LIMIT_BYTES = 64 * 2**20  # still allocated after a row is freed: the next row would measure it too
STATUS_SUFFIX = ".status.json"


@dataclass(frozen=True)
class RowStatus:
    """What the kit reads of one row besides the probe's results: the error line when it failed, the seconds
    it took in this process (the first row: from the process's start, imports included)."""

    name: str
    error: str | None
    seconds: float
    leftover_bytes: int = 0


def status_path(status_dir: Path, name: str) -> Path:
    return status_dir / f"{name}{STATUS_SUFFIX}"


def read_status(status_dir: Path, name: str) -> RowStatus | None:
    path = status_path(status_dir, name)
    return RowStatus(**json.loads(path.read_text())) if path.is_file() else None


def _draw_or_load(original: Any) -> Any:
    """from_pretrained, except for a build without weights: its weights drawn on the device it trains on."""
    from tunelab.models.random_init import draw_random_model, drawn_at_load

    def load(path: Any, *args: Any, **kwargs: Any) -> Any:
        if not drawn_at_load(path):
            return original(path, *args, **kwargs)
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        return draw_random_model(path, device, kwargs.pop("dtype", torch.float32), **kwargs)

    return load


def install_draws() -> None:
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained = _draw_or_load(AutoModelForCausalLM.from_pretrained)  # type: ignore[method-assign]


def install_one_baseline() -> None:
    """probe_steps' DeviceMemory with the process's first NVML baseline for every row (module docstring)."""
    from tunelab.train import probe_steps
    from tunelab.train.device_memory import DeviceMemory

    class OneBaseline(DeviceMemory):
        first: ClassVar[DeviceMemory | None] = None

        @classmethod
        def start(cls, cuda: bool) -> DeviceMemory:
            if not cuda:
                return DeviceMemory.start(False)
            if cls.first is None:
                cls.first = DeviceMemory.start(True)
                return cls.first
            return DeviceMemory(cuda=True, read_used=cls.first.read_used, baseline=cls.first.baseline)

    probe_steps.DeviceMemory = OneBaseline  # type: ignore[misc]


def skip_generation() -> None:
    """probe_run without its generation timing (the smoke's plan: module docstring): no GenerationSpeed, as for a
    vision-language model."""
    from tunelab.train import probe_steps

    probe_steps._generation = lambda pcfg, cuda: None  # type: ignore[assignment]


def run_row(row: dict[str, Any]) -> str | None:
    """Probe one row and write its results beside its run; the error line when it failed."""
    from tunelab.rundir.config import load_run_config
    from tunelab.rundir.layout import PROBE_RESULTS_FILE, PROBE_RUN_PREFIX
    from tunelab.rundir.probe import write_probe_results
    from tunelab.train.probe_steps import probe_run

    try:
        pcfg = load_run_config(Path(row["run_yaml"]))
        result = probe_run(pcfg, max_batch=row["max_batch"], steps=row["steps"],
                           **({"profile": Path(row["profile"])} if row.get("profile") else {}))
    except Exception as exc:  # noqa: BLE001 (every failure is the row's result; this process ends after it)
        traceback.print_exc()
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    write_probe_results(pcfg.run_dir / PROBE_RESULTS_FILE, [(pcfg.name.removeprefix(PROBE_RUN_PREFIX), result)])
    return None


def leftover_bytes() -> int:
    """Memory a finished row left allocated on the GPU, after collecting and emptying torch's cache."""
    import gc

    import torch

    gc.collect()
    if not torch.cuda.is_available():
        return 0
    torch.cuda.empty_cache()
    return int(torch.cuda.memory_allocated())


def main(argv: list[str]) -> int:
    from tunelab.host.startup import skip_unused_packages
    from tunelab.jobimports import Stack, import_job_stack
    from tunelab.train import TRAINING_STACK
    from tunelab.train.metrics import process_age_s

    plan = json.loads(Path(argv[0]).read_text())
    status_dir = Path(plan["status_dir"])
    skip_unused_packages()  # before TRL is imported
    import_job_stack(*TRAINING_STACK, record_as=Stack.TRAINING)
    install_draws()
    install_one_baseline()
    if not plan.get("generation", True):
        skip_generation()
    since = time.monotonic() - (process_age_s() or 0.0)
    for row in plan["rows"]:
        print(f"==== row {row['name']}", flush=True)
        error = run_row(row)
        left = leftover_bytes() if error is None else 0
        status = RowStatus(row["name"], error, round(time.monotonic() - since, 2), left)
        status_path(status_dir, row["name"]).write_text(json.dumps(asdict(status)))
        since = time.monotonic()
        if error is not None or left > LEFTOVER_LIMIT_BYTES:
            print(f"==== stopping after {row['name']}: {error or f'{left} bytes still allocated'}", flush=True)
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
