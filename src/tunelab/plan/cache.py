"""What `plan` (and `scaffold`, which plans first) may skip the second time: checks that passed for exactly the
same inputs. A 1,000-run spec planned again costs the reading of the spec, not `datasets`, inspect-ai and the
tokenizer (seconds of imports alone). Keys hold everything a check reads — the spec, the stamps (mtime, size)
of the data, task and split files, and of tunelab's own checking code — so any change checks again; only a
check that passed is remembered (diskcache.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tunelab.diskcache import cached_json, file_stamps
from tunelab.evaluate.usertasks import check_tasks
from tunelab.rundir.config import RunConfig
from tunelab.spec import DatasetSpec, ExperimentSpec, resolve_path

_CHECKING_CODE = ("data", "evaluate", "spec")  # tunelab packages whose code decides what passes


def code_stamps() -> list:
    root = Path(__file__).parent
    files: list[str | Path] = [*sorted(p for pkg in _CHECKING_CODE for p in (root / pkg).glob("*.py"))]
    return file_stamps(files)


def dataset_stamps(d: DatasetSpec, base: Path) -> list:
    """Stamps of a dataset's files (a save_to_disk directory: of the files in it)."""
    paths: list[str | Path] = []
    for f in d.split_files().values():
        p = resolve_path(base, f)
        paths += sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
    return file_stamps(paths)


def verified_dataset(key_parts: list, compute: Callable[[], Any], load: Callable[[dict], Any]) -> Any:
    """A dataset's verification (DatasetInfo), remembered under key_parts + the checking code's stamps."""
    return load(cached_json("verified-dataset", [*key_parts, code_stamps()], lambda: asdict(compute())))


def tasks_checked(spec: ExperimentSpec, spec_path: Path, experiment_dir: Path, check: Callable[[], None]) -> None:
    """Run the evaluation-task checks unless they passed for this very spec, data, task files and splits."""
    base = spec_path.parent
    task_files: list[str | Path] = [resolve_path(base, t.file) for t in spec.eval.tasks if t.file]
    splits: list[str | Path] = [*sorted((experiment_dir / "data").glob("*.split.json"))] if (experiment_dir / "data").is_dir() else []
    key = [spec.model_dump_json(), str(spec_path), str(experiment_dir), file_stamps(task_files),
           [dataset_stamps(d, base) for d in spec.datasets], file_stamps(splits), code_stamps()]

    def run() -> bool:
        check()
        return True

    cached_json("eval-tasks-checked", key, run)


def check_eval_tasks(spec: ExperimentSpec, spec_path: Path, runs: list[RunConfig], experiment_dir: Path) -> None:
    """Before any job: task files import and bind, built-ins build on their dataset split — once per
    distinct dataset x prompt (the split records exist by now); skipped when they passed for the same inputs."""
    def check() -> None:

        check_tasks(spec, spec_path.parent)
        seen = set()
        for cfg in runs:
            key = (cfg.dataset.name, cfg.prompt)
            if key not in seen:
                seen.add(key)
                check_tasks(cfg)

    tasks_checked(spec, spec_path, experiment_dir, check)
