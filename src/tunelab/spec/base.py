"""Shared pieces of every spec file: strict models, names, YAML loading with errors that name the
file and the field at fault."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from tunelab.errors import TunelabError
from tunelab.fsutil import load_yaml

M = TypeVar("M", bound=BaseModel)
SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _check_slug(v: str) -> str:
    if not SLUG.match(v):
        raise ValueError("must be a short name of letters, digits, '.', '_' or '-'")
    return v


# A name that ends up in file and directory names.
Slug = Annotated[str, AfterValidator(_check_slug)]


def unique_name(base: str, taken: set[str]) -> str:
    """base, else base-2, base-3, …: the first not in taken (two things named alike stay apart)."""
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _loc_to_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


_FIELD_PREFIX = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.*)$", re.S)


def format_validation_error(exc: ValidationError, file: str | Path) -> TunelabError:
    """Turn pydantic's error list into one message: 'file: field.path: what was expected'."""
    lines = []
    for err in exc.errors():
        field = _loc_to_path(err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see `tunelab schema` for the allowed keys)"
        elif "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict):
            msg = f"{msg} (got {err['input']!r})"
        # Cross-field checks raise 'field.path: message' from the top level: lift the path out.
        lifted = _FIELD_PREFIX.match(msg) if field == "(top level)" else None
        if lifted:
            field, msg = lifted.group(1), lifted.group(2)
        lines.append(f"{file}: {field}: {msg}")
    return TunelabError("\n".join(lines))


def load_yaml_model(path: str | Path, model: type[M], what: str) -> M:
    """Read a YAML file into a pydantic model; every failure names the file (and line or field)."""
    path = Path(path)
    if not path.is_file():
        raise TunelabError(f"{what} not found", file=path)
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise TunelabError(f"line {line}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                           "save the file as UTF-8", file=path) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise TunelabError(f"{where}not valid YAML: {problem}", file=path) from None
    return validate_mapping(data, model, path, what)


def validate_mapping(data: Any, model: type[M], source: str | Path, what: str) -> M:
    if not isinstance(data, dict):
        raise TunelabError(f"the {what} must be a YAML mapping (key: value), not a list or a scalar", file=source)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, source) from None


def resolve_path(base_dir: Path, value: str) -> Path:
    """Paths in a spec are relative to the spec file, so an experiment directory can be moved whole."""
    p = Path(value).expanduser()
    return (p if p.is_absolute() else (base_dir / p)).resolve()
