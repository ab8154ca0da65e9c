"""A user's inspect-ai task file (`{name, file, task?, args?}`): imported, its @task found and called.

Its own dataset, solver and scorer are used; tunelab only supplies the model. Everything that can be
known before a job starts (the file imports, the @task exists and is unambiguous, the args bind, the
prompt template only names {input}) is checked by `check_tasks`, which `plan` calls once per input
(`check_sweep_tasks`).
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from tunelab.data.splits import DATA_DIR
from tunelab.data.verify import code_stamps, dataset_stamps
from tunelab.diskcache import cached_json, file_stamps
from tunelab.errors import TunelabError
from tunelab.evaluate.task_rows import builtin_rows
from tunelab.rundir.config import RunConfig
from tunelab.spec import ExperimentSpec, TaskSpec, resolve_path
from tunelab.spec.evaluation import GraderSpec

_MODULES: dict[tuple[str, int, int], ModuleType] = {}  # (path, mtime, size) -> module, imported once
TASK_CHECKING_CODE = ("data", "evaluate", "spec")  # tunelab packages whose code decides whether the tasks pass


@dataclass(frozen=True)
class UserTask:
    spec: TaskSpec
    path: Path
    function: str  # the @task's registered name
    factory: Callable[..., Any]

    @property
    def where(self) -> str:
        return f"task file {self.path} (task {self.function})"

    def build(self) -> Any:
        """Call the @task with the spec's args: the inspect Task."""
        try:
            return self.factory(**self.spec.args)
        except TunelabError:
            raise
        except Exception as exc:
            raise TunelabError(f"{self.where}: the task raised {_exception_line(exc, self.path)}") from None


def import_task_file(path: str | Path) -> ModuleType:
    """Import a task file by path (its directory importable meanwhile, so it may import its siblings)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise TunelabError("task file not found", file=path)
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key in _MODULES:
        return _MODULES[key]
    name = f"tunelab_task_{abs(hash(key)):x}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TunelabError("cannot be imported as a Python file", file=path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise TunelabError(f"task file does not import: {_exception_line(exc, path)}", file=path) from None
    finally:
        sys.path.remove(str(path.parent))
    _MODULES[key] = module
    return module


def _exception_line(exc: BaseException, path: Path) -> str:
    """'ValueError: msg (line 12: code)' — the deepest frame inside the user's file, when there is one."""
    text = f"{type(exc).__name__}: {exc}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == path.resolve()]
    if frames and not isinstance(exc, SyntaxError):  # a SyntaxError's message already names the line
        f = frames[-1]
        text += f" (line {f.lineno}: {(f.line or '').strip()})"
    return text


def task_functions(module: ModuleType) -> dict[str, Callable[..., Any]]:
    """The @task functions a module defines, by registered name (and by Python name when it differs)."""
    from inspect_ai.util import registry_info

    found: dict[str, Callable[..., Any]] = {}
    for attr, obj in vars(module).items():
        if not callable(obj) or getattr(obj, "__module__", None) != module.__name__:
            continue
        try:
            info = registry_info(obj)
        except ValueError:
            continue
        if info.type == "task":
            found[info.name.split("/")[-1]] = obj
            found.setdefault(attr, obj)
    return found


def resolve_user_task(spec: TaskSpec, base_dir: Path | None = None) -> UserTask:
    """Import the file, pick the @task (`task:` or the only one), check that `args:` bind."""
    assert spec.file is not None
    path = Path(spec.file)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    path = path.resolve()
    funcs = task_functions(import_task_file(path))
    unique: dict[int, str] = {}  # one entry per function: its registered name (listed first)
    for fname, f in funcs.items():
        unique.setdefault(id(f), fname)
    if not funcs:
        raise TunelabError("no @task function in the task file (decorate one with inspect_ai's @task)", file=path)
    if spec.task is None:
        if len(unique) > 1:
            raise TunelabError(f"task '{spec.name}': the file has several @task functions "
                               f"({', '.join(sorted(unique.values()))}); choose one with task:", file=path)
        func = next(iter(funcs.values()))
    elif spec.task in funcs:
        func = funcs[spec.task]
    else:
        raise TunelabError(f"task '{spec.name}': no @task '{spec.task}' in the file (it has: "
                           f"{', '.join(sorted(unique.values()))})", file=path)
    name = unique[id(func)]
    params = inspect.signature(func).parameters
    try:
        inspect.signature(func).bind(**spec.args)
    except TypeError as exc:
        raise TunelabError(f"task '{spec.name}': args {sorted(spec.args)} do not fit {name}"
                           f"({', '.join(params)}): {exc}", file=path, field=f"eval.tasks.{spec.name}.args") from None
    return UserTask(spec, path, name, func)


def check_tasks(source: Any, spec_dir: str | Path | None = None) -> None:
    """Before any job starts: every task of a RunConfig (task files import, their @task is found, args
    bind, the prompt template fits; built-ins build on their dataset split: options, numeric answers),
    or every task file of an ExperimentSpec (paths relative to spec_dir; templates of all prompts).
    Raises the first problem as a TunelabError naming the file (and task). Built-ins are checked on their rows
    (task_rows.py): only a task file imports inspect-ai here."""
    if isinstance(source, RunConfig):
        for spec in source.eval.resolved_tasks():
            if spec.file:
                ut = resolve_user_task(spec)
                _check_template(spec.prompt if spec.prompt is not None else source.prompt, ut.where)
                _check_grader(spec, None)
            else:
                builtin_rows(source, spec)
        return
    base = Path(spec_dir) if spec_dir is not None else None
    prompts = [*source.prompt_levels(), *(e.prompt for e in source.eval_only if e.prompt is not None)]
    for spec in source.eval.resolved_tasks():
        if spec.file:
            ut = resolve_user_task(spec, base)
            _check_grader(spec, base)
            for template in [spec.prompt] if spec.prompt is not None else prompts:
                _check_template(template, ut.where)


def _check_template(template: str | None, where: str) -> None:
    from tunelab.evaluate.provider import check_input_template  # inspect-ai's import: a task file has made it

    check_input_template(template, where)


def check_sweep_tasks(spec: ExperimentSpec, spec_path: Path, runs: list[RunConfig], experiment_dir: Path) -> None:
    """Before any job: task files import and bind, built-ins build on their dataset split — once per distinct
    dataset x prompt (the split records exist by now). Skipped when they passed for this very spec, data, task
    files, split records and checking code (diskcache.py): a second plan costs no inspect-ai import."""
    base = spec_path.parent
    datasets = [dataset_stamps(d, base) for d in spec.datasets]
    data_dir = experiment_dir / DATA_DIR
    splits: list[str | Path] = [*sorted(data_dir.glob("*.split.json"))] if data_dir.is_dir() else []
    task_files: list[str | Path] = [resolve_path(base, t.file) for t in spec.eval.tasks if t.file]
    key = [spec.model_dump_json(), str(spec_path), str(experiment_dir), file_stamps(task_files), datasets,
           file_stamps(splits), code_stamps(TASK_CHECKING_CODE)]
    cached_json("eval-tasks-checked", key, lambda: _checked_tasks(spec, base, runs))


def _checked_tasks(spec: ExperimentSpec, spec_dir: Path, runs: list[RunConfig]) -> bool:
    check_tasks(spec, spec_dir)
    seen = set()
    for cfg in runs:
        if (cfg.dataset.name, cfg.prompt) not in seen:
            seen.add((cfg.dataset.name, cfg.prompt))
            check_tasks(cfg)
    return True


def _check_grader(spec: TaskSpec, base: Path | None) -> None:
    """A grader given as a local model directory must be one (a model string is only known at eval time)."""
    if isinstance(spec.grader, GraderSpec):
        path = Path(spec.grader.path)
        check_grader_dir(path if path.is_absolute() or base is None else base / path, spec.name)


def check_grader_dir(path: Path, task: str) -> None:
    """A grader's local model directory holds a model (checked at validate time and before an eval loads it)."""
    if not (path / "config.json").is_file():
        raise TunelabError(f"task '{task}': the grader's model directory has no config.json", file=path,
                           field=f"eval.tasks.{task}.grader.path")
