"""Daily use on a real finished sweep (the shared finished_sweep of tests/e2e/conftest.py: two tiny runs trained 4
epochs, every epoch evaluated, + their base-model control, reported): `tunelab export --to mlflow` read back through
MLflow's own client from a SQLite store, `--to wandb` read back from W&B's offline transaction logs, and `tunelab
archive` checked file by file, including a failed and a corrupted copy. Tests that change the sweep change a copy."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tunelab.cli import app

pytestmark = pytest.mark.slow
runner = CliRunner()


def _ok(args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, f"{args}: {res.output}"
    return res


@pytest.fixture(scope="module")
def sweep(finished_sweep) -> Path:
    return finished_sweep.exp


@pytest.fixture(scope="module")
def names(finished_sweep) -> list[str]:
    """Every run of the sweep: the fine-tuned ones, then the control."""
    return [*finished_sweep.runs, finished_sweep.control]


def _scores(sweep: Path, label: str, run: str = "runs/tiny_r4") -> dict[str, Any]:
    return json.loads((sweep / run / "eval" / label / "exact_match" / "scores.json").read_text())


def _tree(root: Path) -> dict[str, str]:
    """Every file under root -> sha256 (what must not change when an archive fails)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".tunelab.lock"}


def test_export_to_mlflow_sqlite_store_is_complete_and_idempotent(sweep, names, finished_sweep, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = _ok(["export", sweep, "--to", "mlflow", "--tracking-uri", uri]).output
    assert f"{len(names)} run(s) created" in out
    client = MlflowClient(tracking_uri=uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "t"]
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == sorted(["t", *names])
    parent = runs["t"]
    for name in names:
        assert runs[name].data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert runs[name].info.status == "FINISHED"
    r4 = runs["tiny_r4"]
    assert r4.data.params["factor.lora_rank"] == "4" and r4.data.params["training.lora_rank"] == "4"
    assert r4.data.params["training.epochs"] == str(finished_sweep.epochs) and r4.data.params["model.name"] == "tiny"
    # per-step loss: exactly the rows of metrics.jsonl
    rows = [json.loads(line) for line in (sweep / "runs/tiny_r4/metrics.jsonl").read_text().splitlines()]
    want = sorted((r["step"], r["loss"]) for r in rows if r.get("loss") is not None)
    got = sorted((m.step, m.value) for m in client.get_metric_history(r4.info.run_id, "loss"))
    assert got == want and len(got) >= 6
    # eval scores: what each scores.json says, at its checkpoint's epoch (every epoch was evaluated)
    history = client.get_metric_history(r4.info.run_id, "eval.exact_match.accuracy")
    assert sorted((m.step, m.value) for m in history) == [
        (e, _scores(sweep, f"epoch_{e}")["metrics"]["accuracy"]) for e in range(finished_sweep.epochs)]
    base = _scores(sweep, "base", "controls/tiny_base")
    assert runs["tiny_base"].data.metrics["eval.exact_match.accuracy"] == base["metrics"]["accuracy"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {"report/report.md",
                                                                                     "report/report.html"}
    # idempotent: the same runs, no point logged twice
    out = _ok(["export", sweep, "--to", "mlflow", "--tracking-uri", uri]).output
    assert f"0 run(s) created, {len(names)} brought up to date, 0 metric point(s)" in out
    again = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in runs.values())
    assert len(client.get_metric_history(r4.info.run_id, "loss")) == len(want)


def test_export_to_mlflow_defaults_to_a_sqlite_store_in_the_experiment_and_names_file_stores(sweep, names, tmp_path,
                                                                                               monkeypatch):
    from mlflow.tracking import MlflowClient

    exp = tmp_path / "exp"
    shutil.copytree(sweep, exp)  # the store is written into the experiment: a copy, the shared sweep stays as trained
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # the default store lives with the experiment, not where the command runs
    store = exp / "mlflow"
    out = _ok(["export", exp, "--to", "mlflow"]).output
    uri = f"sqlite:///{store / 'mlflow.db'}"
    assert uri in " ".join(out.split()) and f"{len(names)} run(s) created" in out and not list(cwd.iterdir())
    client = MlflowClient(tracking_uri=uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "t"]
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == sorted(["t", *names])
    assert {a.path for a in client.list_artifacts(runs["t"].info.run_id, "report")} >= {"report/report.md"}
    assert (store / "mlartifacts" / "t").is_dir()
    for uri in ((tmp_path / "mlruns").as_uri(), "mlruns"):  # MLflow >= 3.10 refuses file stores: one line
        monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
        res = runner.invoke(app, ["export", str(exp), "--to", "mlflow", "--tracking-uri", uri])
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1 and "sqlite:///" in res.output and uri in res.output


def test_export_refuses_unknown_trackers(sweep):
    res = runner.invoke(app, ["export", str(sweep), "--to", "neptune"])
    assert res.exit_code == 1 and "unknown tracker" in res.output and "Traceback" not in res.output


def _wandb_log(path: Path) -> Iterator[Any]:
    """The records of a .wandb file, read by the format wandb-core writes (a 7-byte ':W&B' header, then a LevelDB
    log: 32 KiB blocks of chunks, each crc32 | length | type, FULL=1 FIRST=2 MIDDLE=3 LAST=4) into wandb's own
    protobuf Record: independent of the exporter, which only calls wandb's public API."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32 * 1024
    assert data[:4] == b":W&B"
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block  # a block's zero-filled tail
            continue
        crc, size, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if (crc, size, kind) == (0, 0, 0):
            pos += block - pos % block
            continue
        payload = data[pos + 7:pos + 7 + size]
        assert zlib.crc32(bytes([kind]) + payload) == crc
        pos += 7 + size
        parts = payload if kind in (1, 2) else parts + payload
        if kind in (1, 4):
            yield pb.Record.FromString(parts)


def _offline_run(run_dir: Path) -> dict[str, Any]:
    (log,) = run_dir.glob("run-*.wandb")
    out: dict[str, Any] = {"history": [], "summary": {}, "files": set(), "exit": None}
    for rec in _wandb_log(log):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out.update(id=rec.run.run_id, project=rec.run.project, group=rec.run.run_group,
                       name=rec.run.display_name, config={i.key: json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            out["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                   for i in rec.summary.update})
        elif kind == "files":
            out["files"] |= {f.path for f in rec.files.files}
        elif kind == "exit":
            out["exit"] = rec.exit.exit_code
    return out


def test_export_to_wandb_offline_runs_read_back_and_idempotent(sweep, names, finished_sweep, tmp_path):
    dest = tmp_path / "wb"
    out = _ok(["export", sweep, "--to", "wandb", "--wandb-dir", dest]).output
    assert f"{len(names)} run(s) written, 0 unchanged" in out and f"wandb sync {dest}" in out
    dirs = sorted(dest.glob("offline-run-*"))
    runs = {r["name"]: r for r in map(_offline_run, dirs)}
    assert sorted(runs) == sorted(names) and len({r["id"] for r in runs.values()}) == len(names)
    assert {(r["project"], r["group"], r["exit"]) for r in runs.values()} == {("t", "t", 0)}
    r4 = runs["tiny_r4"]
    assert r4["config"]["training"]["lora_rank"] == 4 and r4["config"]["factors"]["lora_rank"] == 4
    rows = [json.loads(line) for line in (sweep / "runs/tiny_r4/metrics.jsonl").read_text().splitlines()]
    want = sorted((r["step"], r["loss"]) for r in rows if r.get("loss") is not None)
    got = sorted((h["_step"], h["loss"]) for h in r4["history"] if "loss" in h)
    assert got == want and len(got) >= 6
    # the summary holds the last evaluated epoch's score, and each epoch's under its own key
    epochs = range(finished_sweep.epochs)
    assert r4["summary"]["eval.exact_match.accuracy"] == _scores(sweep, f"epoch_{epochs[-1]}")["metrics"]["accuracy"]
    assert [r4["summary"][f"eval.exact_match.accuracy/epoch_{e}"] for e in epochs] == [
        _scores(sweep, f"epoch_{e}")["metrics"]["accuracy"] for e in epochs]
    base = _scores(sweep, "base", "controls/tiny_base")
    assert runs["tiny_base"]["summary"]["eval.exact_match.accuracy"] == base["metrics"]["accuracy"]
    assert {"report/report.md", "tunelab/run.yaml"} <= r4["files"]
    r4_dir = next(d for d in dirs if d.name.endswith(r4["id"]))
    assert (r4_dir / "files/report/report.md").read_bytes() == (sweep / "report/report.md").read_bytes()
    # wandb's own `sync` finds exactly these runs to upload (--dry-run: no login, no network)
    sync = subprocess.run([sys.executable, "-m", "wandb", "sync", "--dry-run", str(dest)], capture_output=True,
                          text=True, timeout=120)
    assert f"Would sync {len(names)} run(s)" in sync.stdout + sync.stderr, sync.stdout + sync.stderr

    # again: nothing changed, nothing written
    out = _ok(["export", sweep, "--to", "wandb", "--wandb-dir", dest]).output
    assert f"0 run(s) written, {len(names)} unchanged" in out and sorted(dest.glob("offline-run-*")) == dirs
    # again without the manifest: every run rewritten, in place of its previous directory (one per run id)
    (dest / "wandb-export.json").unlink()
    out = _ok(["export", sweep, "--to", "wandb", "--wandb-dir", dest]).output
    assert f"{len(names)} run(s) written" in out
    again = {r["id"]: r for r in map(_offline_run, dest.glob("offline-run-*"))}
    assert sorted(again) == sorted(r["id"] for r in runs.values()) and len(list(dest.iterdir())) == len(names) + 1
    assert sorted((h["_step"], h["loss"]) for h in again[r4["id"]]["history"] if "loss" in h) == want


def test_archive_copies_verifies_then_frees_space(sweep, finished_sweep, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(sweep, exp)
    before = _tree(exp)
    last = finished_sweep.epochs - 1  # --keep last-epoch: every run's trainer state and earlier epochs go
    dropped = tuple(f"runs/{run}/{d}/" for run in finished_sweep.runs
                    for d in ("trainer_state", *(f"checkpoints/epoch_{e}" for e in range(last))))
    heavy = [p for p in before if p.startswith(dropped)]
    assert heavy and any("optimizer" in p for p in heavy)
    freed = sum((exp / p).stat().st_size for p in heavy)

    out = _ok(["archive", exp, "--to", tmp_path / "arch", "--keep", "last-epoch", "--dry-run"]).output
    assert "would remove runs/tiny_r4/trainer_state" in out and _tree(exp) == before
    assert not (tmp_path / "arch").exists()

    out = _ok(["archive", exp, "--to", tmp_path / "arch", "--keep", "last-epoch"]).output
    copy = tmp_path / "arch" / "exp"
    kept = {p: h for p, h in before.items() if p not in heavy and p != ".runs-cache.json"}
    assert _tree(copy) == {**kept, "archive.json": _tree(copy)["archive.json"]}  # every kept file, same bytes
    assert _tree(exp) == {**kept, ".runs-cache.json": _tree(exp)[".runs-cache.json"],
                          "archive.json": _tree(exp)["archive.json"]}  # the heavy files, and only they, are gone
    for must in ("experiment.yaml", "runs/tiny_r4/run.yaml", "runs/tiny_r4/metrics.jsonl", "runs/tiny_r4/summary.json",
                 f"runs/tiny_r4/checkpoints/epoch_{last}/adapter_model.safetensors", "report/report.md", "tunelab.db"):
        assert must in kept
    manifest = json.loads((exp / "archive.json").read_text())
    assert manifest["bytes_removed"] == freed and manifest["files"] == kept
    from tunelab.fsutil import human_bytes
    assert f"storage saved here: {human_bytes(freed)}" in out

    from tunelab.report.build import build_report
    report = build_report(exp).markdown.read_text()
    assert "**Archived**" in report and str(copy) in report and human_bytes(freed) in report


@pytest.mark.parametrize("fault", ["disk_full", "corrupt"])
def test_failed_copy_leaves_the_working_dir_intact(sweep, tmp_path, fault):
    from tunelab.errors import TunelabError
    from tunelab.export.archive import plan_archive, run_archive

    exp = tmp_path / "exp"
    shutil.copytree(sweep, exp)
    before = _tree(exp)
    copied = []

    def faulty_copy(src: Path, dest: Path) -> None:
        if len(copied) == 5:
            if fault == "disk_full":
                raise OSError(errno.ENOSPC, "No space left on device", str(dest))
            dest.write_bytes(src.read_bytes()[:-1] + b"!")  # a bit flipped on the way
            return
        copied.append(src)
        shutil.copyfile(src, dest)

    plan = plan_archive(exp, tmp_path / "arch", "none")
    assert plan.remove
    with pytest.raises(OSError if fault == "disk_full" else TunelabError) as info:
        run_archive(plan, copy_file=faulty_copy)
    if fault == "corrupt":
        assert "does not match its source" in str(info.value)
    assert _tree(exp) == before
    assert not (tmp_path / "arch" / "exp" / "archive.json").exists()
    assert not list((tmp_path / "arch").rglob("*.tmp"))  # no half-written file left behind


def test_archive_refuses_while_a_run_trains(sweep, tmp_path):
    import os
    import socket

    exp = tmp_path / "exp"
    shutil.copytree(sweep, exp)
    status = exp / "runs/tiny_r4/status.json"
    data = json.loads(status.read_text())
    status.write_text(json.dumps({**data, "state": "running", "host": socket.gethostname(), "pid": os.getpid()}))
    before = _tree(exp)
    res = runner.invoke(app, ["archive", str(exp), "--to", str(tmp_path / "arch")])
    assert res.exit_code == 1 and "tiny_r4 is training" in res.output
    assert _tree(exp) == before and not (tmp_path / "arch").exists()


def test_compare_reports_the_runs_real_losses_and_scores(sweep, finished_sweep):
    res = runner.invoke(app, ["compare", str(sweep / "runs" / "tiny_r4"), str(sweep / "controls" / "tiny_base"),
                              "--json"])
    assert res.exit_code == 0, res.output
    r4, base = json.loads(res.stdout)["runs"]
    summary = json.loads((sweep / "runs/tiny_r4/summary.json").read_text())
    assert (r4["final_loss"], r4["final_val_loss"]) == (summary["final_loss"], summary["final_val_loss"])
    scores = _scores(sweep, f"epoch_{finished_sweep.epochs - 1}")  # the last epoch's
    assert r4["scores"]["exact_match"] == {"score": scores["score"], "metric": "accuracy"}
    control = _scores(sweep, "base", "controls/tiny_base")
    assert base["scores"]["exact_match"]["score"] == control["score"] and base["final_loss"] is None


def test_status_watch_shows_progress_and_exits_on_a_failure(sweep, names, tmp_path):
    """tiny_r4 made 'running at a logged step halfway' (this process as its live pid), then failing while watched."""
    import io
    import os
    import re
    import socket

    from rich.console import Console

    from tunelab.execute.status import clock, status_rows
    from tunelab.execute.watch import watch
    from tunelab.rundir.metrics import RECENT_ROWS

    exp = tmp_path / "exp"
    shutil.copytree(sweep, exp)
    for db in exp.glob("tunelab.db*"):  # no coordinator's jobs (they say completed): the run's files tell its state,
        db.unlink()  # as when each run is trained with `tunelab train`
    run = exp / "runs" / "tiny_r4"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    total = json.loads((run / "summary.json").read_text())["steps"]
    validated = {r["step"] for r in rows if r.get("val_loss") is not None}
    step = max(r["step"] for r in rows if r.get("loss") is not None and r["step"] <= total // 2
               and r["step"] not in validated)  # so the last row kept is a training row
    kept = [r for r in rows if r["step"] <= step]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    (run / "summary.json").unlink()
    status = json.loads((run / "status.json").read_text())
    status.update(state="running", step=step, total_steps=total, host=socket.gethostname(), pid=os.getpid())
    (run / "status.json").write_text(json.dumps(status))
    train_rows = [r for r in kept if r.get("loss") is not None]
    timed = [r for r in kept if r.get("step") and r.get("elapsed_s")]
    first, last_row = timed[-1 - RECENT_ROWS], timed[-1]  # the live pace: over the last logged rows, not the mean
    eta = clock((last_row["elapsed_s"] - first["elapsed_s"]) / (last_row["step"] - first["step"]) * (total - step))

    looks = [0]

    def rows_then_fail():
        """The run fails between the watch's second and third look: once the running frame was drawn, however slow
        a look is on a loaded machine (a fixed sleep here failed on CI when the first look alone took longer)."""
        looks[0] += 1
        if looks[0] == 3:
            (run / "status.json").write_text(json.dumps({**status, "state": "failed", "error": "CUDA out of memory"}))
        return status_rows(exp)

    out = io.StringIO()
    last = watch(exp, rows_then_fail, Console(file=out, width=200, force_terminal=True), interval_s=0.3)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # the words, without the terminal's styling
    assert looks[0] == 3  # the watch stopped at the look that found nothing running: the failure, no look after
    assert f"{step}/{total}" in text and f"{train_rows[-1]['loss']:.4f}" in text and eta in text  # the running frame
    n = len(names)
    assert "tiny_r4: FAILED" in text and f"{n - 1}/{n} completed, 1 failed" in text  # the failure, as it happened
    assert {r.name: r.state for r in last}["tiny_r4"] == "failed"
