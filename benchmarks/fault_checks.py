"""What must hold after a sweep was killed and its commands rerun (benchmarks/faults.py): each check
compares the interrupted experiment with an uninterrupted reference run of the same spec, or the
ledger and the report with the files they are built from, and returns the problems found."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tunelab.evaluate.scores import read_scores
from tunelab.fsutil import read_json, read_jsonl, sha256_of
from tunelab.rundir.checkpoints import complete_epochs
from tunelab.rundir.config import load_run_config
from tunelab.rundir.identity import training_key
from tunelab.rundir.layout import COUNTERS_FILE

COUNTED = ("step", "tokens", "nonpad_tokens", "examples")  # what a resume must reproduce exactly
# and, as the trainer restores optimizer, scheduler and RNG state, the very same losses (CPU, same threads)
LOSSES = ("loss", "val_loss")
SUMMARY_KEYS = ("steps", "tokens", "nonpad_tokens", "checkpoints", "train_examples")


def _rows(run_dir: Path) -> list[tuple]:
    """(step, is_eval, tokens, nonpad tokens, examples, loss, val_loss) of every metrics.jsonl row, in order."""
    return [(r["step"], r.get("val_loss") is not None, *(r.get(k) for k in COUNTED[1:] + LOSSES))
            for r in read_jsonl(run_dir / "metrics.jsonl")]


def _final_counters(run_dir: Path, steps: int) -> dict:
    data = read_json(run_dir / "trainer_state" / f"checkpoint-{steps}" / COUNTERS_FILE, default={}) or {}
    return {k: data.get(k) for k in COUNTED[1:]}


def check_training(ref_dir: Path, run_dir: Path) -> list[str]:
    """Every step logged exactly once, with the reference's token counters, summary and epochs."""
    problems = []
    ref, got = _rows(ref_dir), _rows(run_dir)
    keys = [(r[0], r[1]) for r in got]
    if len(keys) != len(set(keys)):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        problems.append(f"metrics.jsonl: steps logged more than once: {dup[:5]}")
    if got != ref:
        missing = sorted({(r[0], r[1]) for r in ref} - set(keys))
        problems.append(f"metrics.jsonl differs from the uninterrupted run ({len(got)} vs {len(ref)} rows; "
                        f"missing {missing[:5]}; first difference "
                        f"{next(((a, b) for a, b in zip(got, ref) if a != b), None)})")
    ref_sum = read_json(ref_dir / "summary.json", default={}) or {}
    got_sum = read_json(run_dir / "summary.json", default=None)
    if not got_sum:
        return problems + ["summary.json missing"]
    for key in SUMMARY_KEYS:
        if got_sum.get(key) != ref_sum.get(key):
            problems.append(f"summary {key}: {got_sum.get(key)} != uninterrupted {ref_sum.get(key)}")
    steps = ref_sum.get("steps")
    if not isinstance(steps, int):
        return problems + [f"the uninterrupted run's summary.json has no step count ({steps!r})"]
    if _final_counters(run_dir, steps) != _final_counters(ref_dir, steps):
        problems.append(f"checkpoint-{steps} counters {_final_counters(run_dir, steps)} != "
                        f"uninterrupted {_final_counters(ref_dir, steps)}")
    if complete_epochs(run_dir) != complete_epochs(ref_dir):
        problems.append(f"epoch checkpoints {complete_epochs(run_dir)} != {complete_epochs(ref_dir)}")
    for epoch in complete_epochs(ref_dir):
        name = f"checkpoints/epoch_{epoch}/adapter_model.safetensors"
        if (run_dir / name).is_file() and sha256_of(run_dir / name) != sha256_of(ref_dir / name):
            problems.append(f"{name} differs from the uninterrupted run's")
    return problems


def _score_map(run_dir: Path) -> dict[tuple[str, str], tuple]:
    return {(s.label, s.task): (s.score, s.samples, s.metrics) for s in read_scores(run_dir)}


def check_eval(ref_dir: Path, run_dir: Path) -> list[str]:
    """Every checkpoint x task the reference scored is scored once, on the same samples (and, as training
    resumed exactly, to the same score)."""
    ref, got = _score_map(ref_dir), _score_map(run_dir)
    problems = []
    if set(got) != set(ref):
        problems.append(f"scores for {sorted(got)} != uninterrupted {sorted(ref)}")
    for key in sorted(set(got) & set(ref)):
        if got[key][1] != ref[key][1]:
            problems.append(f"{key}: {got[key][1]} samples != {ref[key][1]}")
        elif got[key][0] != ref[key][0]:
            problems.append(f"{key}: score {got[key][0]} != uninterrupted {ref[key][0]}")
    return problems


def _query(db: Path, sql: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def check_ledger(exp: Path, run_dirs: dict[str, Path]) -> list[str]:
    """tunelab.db holds one row per run, exactly the metric rows of metrics.jsonl and exactly the scores
    files, no duplicate or missing row, and passes SQLite's integrity check with no hot journal left."""
    db = exp / "tunelab.db"
    problems = []
    if (exp / "tunelab.db-journal").exists():
        problems.append("tunelab.db-journal left behind after a clean command")
    if _query(db, "PRAGMA integrity_check")[0][0] != "ok":
        problems.append("tunelab.db fails PRAGMA integrity_check")
    runs = [r["name"] for r in _query(db, "SELECT name, state FROM runs WHERE state = 'completed'")]
    if sorted(runs) != sorted(run_dirs):
        problems.append(f"ledger completed runs {sorted(runs)} != {sorted(run_dirs)}")
    for name, run_dir in run_dirs.items():
        want = sorted((r["step"], int(r.get("val_loss") is not None), r.get("tokens"))
                      for r in read_jsonl(run_dir / "metrics.jsonl"))
        have = sorted((r["step"], r["is_eval"], r["tokens"])
                      for r in _query(db, f"SELECT step, is_eval, tokens FROM metrics WHERE run = '{name}'"))
        if have != want:
            problems.append(f"ledger metrics of {name}: {len(have)} rows != metrics.jsonl's {len(want)}")
        want_e = sorted((s.label, s.task, m, v) for s in read_scores(run_dir) for m, v in s.metrics.items())
        have_e = sorted(tuple(r) for r in _query(
            db, f"SELECT label, task, metric, value FROM evals WHERE run = '{name}'"))
        if have_e != want_e:
            problems.append(f"ledger evals of {name}: {len(have_e)} rows != scores files' {len(want_e)}")
    return problems


TRAINED = "[tunelab train] completed:"  # the training's last line (train/runner.py), once it completed
EVALUATED = "Ray eval job on"  # ray-eval.sh's first line: the job's evaluation started (execute/ray_jobs.py)
ONE_JOB_PREFIX = "tl-run-"  # the submission id of a Ray job that trains, then evaluates, its run


def check_one_job_each_attempt(jobs: list[dict], logs: dict[str, str]) -> list[str]:
    """A run trained, then evaluated, by one Ray job per attempt: its ledger rows (`jobs`, in order) pair each training
    job with an evaluation row of the same id, only the last of either completed, and over the jobs' logs (`logs`, by
    job id) the training completed once and its evaluation started once, both in the last job's — a resubmitted job's
    evaluation neither lost nor run twice."""
    train = [j["job_id"] for j in jobs if j["kind"] == "train"]
    evals = [j for j in jobs if j["kind"] == "eval"]
    problems = [f"training job {jid} is not one job for training and evaluation ({ONE_JOB_PREFIX}…)"
                for jid in train if not jid.startswith(ONE_JOB_PREFIX)]
    if [j["job_id"] for j in evals] != train:
        problems.append(f"evaluation rows of jobs {[j['job_id'] for j in evals]} != the training jobs {train}")
    done = [j["failure"] == "completed" for j in evals]
    if done != [False] * (len(done) - 1) + [True]:
        problems.append(f"evaluation rows ended {[j['failure'] for j in evals]}, not the last one alone completed")
    for marker, what in ((TRAINED, "training completed"), (EVALUATED, "evaluation started")):
        where = [jid for jid in train for _ in range(logs.get(jid, "").count(marker))]
        if where != train[-1:]:
            problems.append(f"{what} in the logs of jobs {where}, not once in the last job's {train[-1:]}")
    return problems


def check_history(history_db: Path, run_dirs: dict[str, Path]) -> list[str]:
    """The history ledger holds each completed run once (keyed by its training's identity, rundir/identity.py)."""
    rows = [r["key"] for r in _query(history_db, "SELECT key FROM history WHERE source = 'tunelab'")]
    want = sorted(training_key(load_run_config(d)) for d in run_dirs.values())
    return [] if sorted(rows) == want else [f"history rows {sorted(rows)} != {want}"]


def _png_complete(path: Path) -> bool:
    data = path.read_bytes() if path.is_file() else b""
    return data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82")


def check_report(exp: Path, run_dirs: dict[str, Path]) -> list[str]:
    """report.md and report.html exist, whole, with every figure they cite, and state each run's steps and
    each checkpoint's score as the run's files do."""
    md_path, html_path = exp / "report" / "report.md", exp / "report" / "report.html"
    if not md_path.is_file() or not html_path.is_file():
        return ["report.md or report.html missing"]
    md, html = md_path.read_text(), html_path.read_text()
    problems = [] if html.rstrip().endswith("</html>") else ["report.html is cut off"]
    for name in ("figures/" + f.split("figures/", 1)[1].split(")")[0] for f in md.split("](")[1:]
                 if "figures/" in f):
        if not _png_complete(exp / "report" / name):
            problems.append(f"report cites {name}, which is missing or incomplete")
    evaluated = all(read_scores(d) for d in run_dirs.values())
    if evaluated and "partial" in md.split("## At a glance")[0].lower():
        problems.append("report says the sweep is partial")
    for name, run_dir in run_dirs.items():
        steps = (read_json(run_dir / "summary.json", default={}) or {}).get("steps")
        if not any(line.startswith(f"| {name} |") and f"| completed | {steps} |" in line for line in md.splitlines()):
            problems.append(f"report.md: no training row of {name} with {steps} steps")
        for s in read_scores(run_dir):
            shown = f"{100 * s.score:.1f} %"
            if not any(line.startswith(f"| {name} |") and f"| {s.label} |" in line and shown in line
                       for line in md.splitlines()):
                problems.append(f"report.md: no row of {name} {s.label} with score {shown}")
    return problems


def leftover_temp_files(exp: Path) -> list[str]:
    """Temporary files of atomic writes a kill interrupted (harmless: never read, named .<file>.*.tmp)."""
    return sorted(str(p.relative_to(exp)) for p in exp.rglob(".*.tmp") if p.is_file())


def describe(problems: list[str]) -> str:
    return json.dumps(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
