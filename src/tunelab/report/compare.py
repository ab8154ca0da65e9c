"""`tunelab compare A B …`: runs of one or several experiments (or single run directories) side by side: each task's
primary metric on the last evaluated checkpoint, and the run.yaml fields that differ — what can explain a difference in
loss or score."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.ledger.results import collect_results
from tunelab.rundir.config import RUN_FILE, RunConfig, flatten
from tunelab.rundir.experiment import load_runs
from tunelab.rundir.layout import RunState

# Fields that differ between any two runs without explaining anything.
IGNORED = ("name", "experiment", "experiment_dir", "attempt", "estimate", "kind")


@dataclass
class ComparedRun:
    label: str  # <experiment dir name>/<run> (the full path where two compared dirs share a name)
    kind: str
    state: RunState  # the ledger's (JSON: its value)
    final_loss: float | None
    final_val_loss: float | None
    scores: dict[str, tuple[float | None, str | None]]  # task -> (score, primary metric), last checkpoint
    config: dict[str, str]  # flattened resolved run.yaml (+ factor.<name>)
    differences: dict[str, str] = field(default_factory=dict)


@dataclass
class Comparison:
    runs: list[ComparedRun]
    tasks: list[str]
    differing: list[str]  # config keys whose values differ across the runs


def _targets(path: Path) -> tuple[Path, set[str] | None]:
    """(experiment dir, run names or None for all) of one argument."""
    path = Path(path)
    if (path / RUN_FILE).is_file():
        return path.parent.parent, {path.name}
    if path.is_dir():
        return path, None
    raise TunelabError("neither an experiment directory nor a run directory", file=path)


def _config(cfg: RunConfig) -> dict[str, str]:
    data = cfg.model_dump(mode="json", exclude=set(IGNORED) | {"factors"})
    flat = flatten(data)
    flat.update({f"factor.{k}": str(v) for k, v in cfg.factors.items()})
    return flat


def compare(paths: list[Path]) -> Comparison:
    """Collect the runs named by the arguments (in order, each once) and their config differences."""
    runs: list[ComparedRun] = []
    seen: set[tuple[Path, str]] = set()
    targets = [_targets(p) for p in paths]
    dirs = {exp.resolve() for exp, _ in targets}
    short = len({d.name for d in dirs}) == len(dirs)  # experiment dir names tell them apart
    for exp, names in targets:
        configs = {c.name: c for c in load_runs(exp)}
        for rec in collect_results(exp):
            key = (exp.resolve(), rec.name)
            if (names is not None and rec.name not in names) or key in seen:
                continue
            seen.add(key)
            label = f"{exp.resolve().name if short else exp.resolve()}/{rec.name}"
            scores = {e.task: (e.score, e.primary_metric) for e in rec.last_evals()}
            runs.append(ComparedRun(label, rec.kind, rec.state, rec.final_loss, rec.final_val_loss, scores,
                                    _config(configs[rec.name])))
    if len(runs) < 2:
        raise TunelabError(f"{len(runs)} run(s) found: name at least two runs or experiments to compare")
    keys = list(dict.fromkeys(k for r in runs for k in r.config))
    # a field that only some runs have (training: controls have none) differs only where those runs differ
    differing = [k for k in keys if len({r.config[k] for r in runs if k in r.config}) > 1]
    for r in runs:
        r.differences = {k: r.config.get(k, "—") for k in differing}
    tasks = list(dict.fromkeys(t for r in runs for t in r.scores))
    return Comparison(runs, tasks, differing)
