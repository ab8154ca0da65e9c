"""Fuzz targets (hypothesis) for everything tunelab reads from users: experiment.yaml, run.yaml, dataset
files and foreign training logs. Inputs are random or mutated from valid ones; each must end either
accepted or in tunelab's own error (TunelabError; a log is skipped with its reason), never another
exception, and must leave no half-written file or directory behind.

Used by tests/unit/test_fuzz.py (few examples, derandomized, asserting) and benchmarks/fuzz.py (many
examples, seeded, counting).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from fuzz_mutations import ROW_KEYS, TEMPLATES, mutated_bytes, mutated_tree, values
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from tunelab.errors import TunelabError

FIXTURE_LOGS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "logs"
# ------------------------------------------------------------------------------------ outcomes
@dataclass
class Tally:
    """What the fuzzed inputs did, per target."""

    tried: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    tracebacks: list[str] = field(default_factory=list)
    half_written: list[str] = field(default_factory=list)


def _leftovers(root: Path, before: set[Path]) -> list[str]:
    """New files or dirs that are unfinished: temp files of atomic writes, empty dirs, unparsable JSON."""
    bad = []
    for p in sorted(set(root.rglob("*")) - before):
        if p.name.endswith(".tmp") or (p.is_dir() and not any(p.iterdir())):
            bad.append(str(p.relative_to(root)))
        elif p.suffix == ".json" and p.is_file():
            try:
                json.loads(p.read_text())
            except (ValueError, UnicodeDecodeError):
                bad.append(str(p.relative_to(root)))
    return bad


def judge(target: str, work: Path, call: Callable[[], Any], tally: Tally, strict: bool) -> None:
    """Run one input: accepted, or rejected with TunelabError; anything else is a traceback. strict
    (the CI test) raises at the first bad outcome, so hypothesis shrinks it to a minimal example."""
    before = set(work.rglob("*"))
    tally.tried[target] += 1
    problem = None
    try:
        if call() is False:  # a target's own "rejected with a reason" (a skipped log)
            tally.rejected[target] += 1
    except TunelabError:
        tally.rejected[target] += 1
    except Exception:  # noqa: BLE001 - exactly what the fuzzer looks for
        problem = f"{target}: {traceback.format_exc()}"
        tally.tracebacks.append(problem)
        tally.rejected[target] += 1
    left = _leftovers(work, before)
    if left:
        tally.half_written.append(f"{target}: {left}")
        problem = problem or f"{target}: half-written {left}"
    if strict and problem:
        raise AssertionError(problem)


@contextmanager
def workdir():
    path = Path(tempfile.mkdtemp(prefix="tunelab-fuzz-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def as_yaml(tree: Any) -> bytes:
    try:
        return yaml.safe_dump(tree, allow_unicode=True, sort_keys=False).encode("utf-8", "surrogatepass")
    except (yaml.YAMLError, UnicodeEncodeError):
        return json.dumps(tree, default=str).encode()  # JSON is YAML too


# -------------------------------------------------------------------------------------- targets
def valid_spec() -> dict:
    return {
        "name": "fz", "description": "fuzz base",
        "models": [{"name": "tiny", "path": "models/tiny"}, {"name": "tiny2", "path": "/abs/tiny2"}],
        "datasets": [{"name": "caps", "path": "data/caps.json", "split": {"validation": 0.1, "seed": 1}},
                     {"name": "qa", "train": "qa/train.csv", "test": "qa/test.csv", "format": "fields",
                      "input_field": "question", "output_field": "answer"}],
        "prompt": "Capitalize: {input}", "system_prompt": "Be brief.",
        "factors": {"lora_rank": [4, 8], "learning_rate": [0.001, 0.002], "prompt": ["A {input}", "B {input}"]},
        "naming": "{model}_{dataset}_r{lora_rank}_lr{learning_rate}_{prompt}",
        "training": {"epochs": 2, "batch_size": 8, "max_seq_len": 64, "logging_steps": 5,
                     "validation_every_steps": 10, "modules_to_save": ["lm_head"], "packing": True},
        "eval": {"max_tokens": 8, "epochs": "all", "tasks": [
            {"name": "em", "builtin": "exact_match", "split": "test", "dataset": "qa"},
            {"name": "choice", "builtin": "choice", "options": ["A", "B"], "limit": 5}]},
        "resources": {"executor": "slurm", "max_retries": 2, "slurm": {"partition": "gpu", "time_limit": "01:00:00"}},
    }


def spec_inputs() -> st.SearchStrategy[bytes]:
    base = as_yaml(valid_spec())
    return (st.builds(as_yaml, values) | st.builds(as_yaml, mutated_tree(valid_spec())) | mutated_bytes(base)
            | st.binary(max_size=64))


def spec_file(work: Path, content: bytes) -> Path:
    return write(work / "exp" / "experiment.yaml", content)


def load_spec_input(path: Path) -> None:
    """What every command does first: read experiment.yaml, then design its runs (names, resolved paths)."""
    from tunelab.plan.design import expand_runs
    from tunelab.spec import load_spec

    expand_runs(load_spec(path), path.parent, path.parent)


_RUN_BASE: dict | None = None


def valid_run_config() -> dict:
    global _RUN_BASE
    if _RUN_BASE is None:
        from tunelab.plan.design import expand_runs
        from tunelab.spec import parse_spec

        spec = parse_spec(valid_spec())
        _RUN_BASE = expand_runs(spec, Path("/exp"), Path("/exp"))[0].model_dump(mode="json")
    return _RUN_BASE


def run_yaml_inputs() -> st.SearchStrategy[bytes]:
    return (st.builds(as_yaml, mutated_tree(valid_run_config())) | mutated_bytes(as_yaml(valid_run_config()))
            | st.builds(as_yaml, values))


def run_yaml_file(work: Path, content: bytes) -> Path:
    """At its place in an experiment's layout (<experiment>/runs/<name>: a run.yaml elsewhere is refused in one
    line), the experiment's directory its own: every load then reads it as written."""
    name = _run_name(content)
    return write(work / "runs" / name / "run.yaml", content)


def _run_name(content: bytes) -> str:
    try:
        name = yaml.safe_load(content).get("name")
    except Exception:  # a mutated file that is no mapping of YAML: any place will do
        return "r"
    return name if isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", name) and name not in (".", "..") else "r"


def load_run_yaml_input(path: Path) -> None:
    from tunelab.rundir.config import load_run_config

    load_run_config(path)


# ---- dataset files
_messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "bot"]),
                                            "content": st.text(max_size=8) | st.integers() | st.none()}),
                     max_size=3)
_cell = st.text(max_size=10) | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.none() | st.booleans()
rows_strategy = st.lists(st.dictionaries(st.sampled_from(ROW_KEYS) | st.text(min_size=1, max_size=5),
                                         _cell | _messages | values, max_size=4), min_size=0, max_size=6)


def good_rows(n: int = 12) -> list[dict]:
    return [{"input": f"word{i}", "output": f"Word{i}"} for i in range(n)]


def encode_rows(rows: list[dict], kind: str) -> bytes:
    """rows as a file of one format (what a lab's export might hold)."""
    if kind == "json":
        return json.dumps(rows, default=str).encode()
    if kind == "splits":
        return json.dumps({"train": rows, "test": rows[:2]}, default=str).encode()
    if kind == "jsonl":
        return "".join(json.dumps(r, default=str) + "\n" for r in rows).encode()
    if kind == "csv":
        out = io.StringIO()
        keys = list(dict.fromkeys(k for r in rows for k in r)) or ["input"]
        w = csv.DictWriter(out, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in keys})
        return out.getvalue().encode("utf-8", "surrogatepass")
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    try:
        pq.write_table(pa.Table.from_pylist(rows), buf)
    except (pa.ArrowException, ValueError, TypeError, OverflowError):  # arrow cannot type it: a broken file
        return b"PAR1" + json.dumps(rows, default=str).encode()[:64]
    return buf.getvalue()


SUFFIX = {"json": ".json", "splits": ".json", "jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet"}


@st.composite
def dataset_inputs(draw) -> tuple[str, bytes, dict, str | None]:
    """(file kind, file bytes, dataset spec fields, prompt template)."""
    kind = draw(st.sampled_from(list(SUFFIX)))
    valid = draw(st.booleans())  # a good file and spec, maybe damaged below; else random rows and spec
    content = encode_rows(good_rows() if valid else draw(rows_strategy), kind)
    if draw(st.booleans()):
        content = draw(mutated_bytes(content))
    fields = {"format": "auto", "input_field": "input", "output_field": "output"} if valid else {
        "format": draw(st.sampled_from(["auto", "auto", "chat", "prompt_completion", "fields"])),
        "input_field": draw(st.sampled_from(["input", "question", "prompt"])),
        "output_field": draw(st.sampled_from(["output", "answer", "completion"]))}
    if kind != "splits" and draw(st.booleans()):
        fields["split"] = {"validation": draw(st.sampled_from([0.1, 0.5, 0.9])), "seed": 0}
    return kind, content, fields, "Capitalize: {input}" if valid else draw(st.sampled_from(TEMPLATES))


def dataset_file(work: Path, case: tuple[str, bytes, dict, str | None]) -> tuple[Path, dict, str | None, Path]:
    kind, content, fields, template = case
    return write(work / "data" / f"rows{SUFFIX[kind]}", content), fields, template, work / "exp"


def load_dataset_input(case: tuple[Path, dict, str | None, Path]) -> None:
    """What plan, the training job and evaluation do with a dataset: its splits (a split recorded in the
    experiment dir), the row format, and every row as an Example."""
    from tunelab.data.splits import load_data
    from tunelab.spec import DatasetSpec

    path, fields, template, exp = case
    spec = DatasetSpec(name="d", path=str(path), **fields)  # valid by construction
    data = load_data(spec, exp, create_split=True)
    reader = data.reader(template, None)
    for split in data.splits:
        data.examples(split, reader)


# ---- foreign training logs
def log_inputs() -> st.SearchStrategy[bytes]:
    bases = [p.read_bytes() for p in sorted(FIXTURE_LOGS.glob("*.out"))]
    numbers = st.sampled_from([b"1.2.3", b"e", b"-", b"nan", b"inf", b"1e999", b"..", b"+", b"9" * 30, b""])
    return (st.sampled_from(bases).flatmap(mutated_bytes)
            | st.sampled_from(bases).flatmap(lambda b: st.tuples(st.just(b), numbers, st.integers(0, 10**6))
                                              .map(_corrupt_number))
            | st.sampled_from(bases).flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n])))


def _corrupt_number(case: tuple[bytes, bytes, int]) -> bytes:
    """Replace one number of a log by garbage that its regexes still match (a damaged progress line)."""
    import re

    text, junk, pick = case
    spans = [m.span() for m in re.finditer(rb"\d+(?:\.\d+)?", text)]
    if not spans:
        return text
    a, b = spans[pick % len(spans)]
    return text[:a] + junk + text[b:]


def log_file(work: Path, content: bytes) -> Path:
    return write(work / "logs" / "slurm-1.out", content)


def ingest_log_input(log: Path) -> bool:
    """`tunelab ingest` of one log into a fresh history: imported whole, or skipped with a reason (False);
    a skipped log adds no row."""
    from tunelab.ingest import ingest_logs
    from tunelab.ledger import history

    db = log.parent.parent / "history.db"
    old = os.environ.get("TUNELAB_HISTORY")
    os.environ["TUNELAB_HISTORY"] = str(db)
    try:
        [result] = ingest_logs([log])
        with history.connect(db) as conn:
            rows = conn.execute("SELECT count(*) FROM history").fetchone()[0]
    finally:
        if old is None:
            os.environ.pop("TUNELAB_HISTORY", None)
        else:
            os.environ["TUNELAB_HISTORY"] = old
    if rows != int(result.imported):
        raise AssertionError(f"history holds {rows} row(s) after {'an import' if result.imported else 'a skip'}")
    if not result.imported and not result.reason:
        raise AssertionError("a skipped log without a reason")
    return result.imported


# name: (inputs, write the input files into a work dir, the call under test)
TARGETS: dict[str, tuple[Callable[[], st.SearchStrategy], Callable[[Path, Any], Any], Callable[[Any], Any]]] = {
    "spec": (spec_inputs, spec_file, load_spec_input),
    "run.yaml": (run_yaml_inputs, run_yaml_file, load_run_yaml_input),
    "data": (dataset_inputs, dataset_file, load_dataset_input),
    "ingest": (log_inputs, log_file, ingest_log_input),
}


def fuzz(name: str, max_examples: int, tally: Tally, *, strict: bool, seed: int | None = None) -> None:
    """Feed `max_examples` inputs of one target. strict: derandomized, raising on the first bad outcome
    (CI); otherwise seeded, every outcome counted (the benchmark)."""
    strategy, prepare, call = TARGETS[name]

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=seed is None,
              suppress_health_check=list(HealthCheck), print_blob=strict)
    @given(strategy())
    def run(case: Any) -> None:
        with workdir() as work:
            given_input = prepare(work, case)
            judge(name, work, lambda: call(given_input), tally, strict)

    if seed is not None:
        run = hypothesis_seed(seed)(run)
    run()
