"""Scaffolding again over runs that already ran: a run's results must match its config, so a run.yaml that
would change under a run with results is refused unless --force; one that a retry changed (attempt > 1: a
smaller batch after an OOM, a longer time limit) is kept, or the next job would fail the same way again."""

from __future__ import annotations

from pydantic import ValidationError

from tunelab.errors import TunelabError
from tunelab.execute.retry import differs_only_by_retries
from tunelab.fsutil import load_yaml
from tunelab.rundir.config import RUN_FILE, RunConfig


def kept_runs(runs: list[RunConfig], texts: dict[str, str], force: bool) -> dict[str, RunConfig]:
    """The runs whose run.yaml on disk stays (a retry's), by name; raises for a run with results whose config
    would change, unless `force` (which keeps nothing). `texts`: each run's newly designed run.yaml."""
    changed = _changed_configs(runs, texts)
    kept: dict[str, RunConfig] = {}
    for cfg in runs:
        if cfg.name not in changed:
            continue
        old = changed[cfg.name]
        if force:
            continue
        if old is not None and differs_only_by_retries(old, cfg):
            kept[cfg.name] = old  # as a retry left it
            continue
        # the estimate moves with history: not a change of the run
        same = old is not None and old.model_copy(update={"estimate": None}) == cfg.model_copy(update={"estimate": None})
        if not same and ((cfg.run_dir / "status.json").exists() or (cfg.run_dir / "eval").exists()):
            raise TunelabError(
                f"run '{cfg.name}' already has results and its config would change; "
                "use --force to overwrite, or scaffold into another --out directory",
                file=cfg.run_dir / RUN_FILE,
            )
    return kept


def _changed_configs(runs: list[RunConfig], texts: dict[str, str]) -> dict[str, RunConfig | None]:
    """run.yaml files on disk that differ from the newly designed ones, parsed (None: not a valid run config
    any more) and placed where they are (an experiment scaffolded again after a move compares like for like);
    the rest are not parsed at all: re-scaffolding a 1,000-run sweep stays fast."""
    changed: dict[str, RunConfig | None] = {}
    for cfg in runs:
        path = cfg.run_dir / RUN_FILE
        if path.is_file():
            text = path.read_text()
            if text != texts[cfg.name]:
                try:
                    changed[cfg.name] = RunConfig.model_validate(load_yaml(text) or {}).located(path.parent)
                except (ValidationError, TunelabError):
                    changed[cfg.name] = None
    return changed
