"""Daily use on a real finished sweep (one tiny run trained 2 epochs + its base-model control, evaluated,
reported): `tunelab export --to mlflow` read back through MLflow's own client from a SQLite store, `--to wandb`
read back from W&B's offline transaction logs, and `tunelab archive` checked file by file, including a failed and a
corrupted copy."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from typer.testing import CliRunner

from tunelab.cli import app

pytestmark = pytest.mark.slow
runner = CliRunner()


def _ok(args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, f"{args}: {res.output}"
    return res


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_model) -> Path:
    """A finished experiment dir: tiny_r4 (2 epochs: checkpoints epoch_0, epoch_1, trainer_state) + tiny_base."""
    from tunelab.data.capitalization import make_capitalization_dataset
    from tunelab.evaluate.sweep import evaluate_experiment
    from tunelab.experiment import load_runs
    from tunelab.report.build import build_report
    from tunelab.scaffold import scaffold
    from tunelab.train.runner import train_run

    root = tmp_path_factory.mktemp("daily")
    data = make_capitalization_dataset(5, 60, root / "data", 0.8, seed=0)
    spec = {"name": "t", "models": [{"name": "tiny", "path": str(tiny_model)}],
            "datasets": [{"name": "caps", "path": str(data)}], "prompt": "Capitalize: {input}",
            "factors": {"lora_rank": [4]},
            "training": {"epochs": 2, "learning_rate": 0.002, "batch_size": 8, "max_seq_len": 64, "logging_steps": 2,
                         "validation_every_steps": 4},
            "eval": {"max_tokens": 8, "limit": 4}}
    path = root / "exp" / "experiment.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    scaffold(path)
    for cfg in load_runs(path.parent):
        if cfg.kind == "finetune":
            train_run(cfg)
    evaluate_experiment(path.parent)
    build_report(path.parent)
    return path.parent


def _tree(root: Path) -> dict[str, str]:
    """Every file under root -> sha256 (what must not change when an archive fails)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".tunelab.lock"}


def test_export_to_mlflow_sqlite_store_is_complete_and_idempotent(sweep, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = _ok(["export", sweep, "--to", "mlflow", "--tracking-uri", uri]).output
    assert "2 run(s) created" in out
    client = MlflowClient(tracking_uri=uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "t"]
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["t", "tiny_base", "tiny_r4"]
    parent = runs["t"]
    for name in ("tiny_r4", "tiny_base"):
        assert runs[name].data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert runs[name].info.status == "FINISHED"
    r4 = runs["tiny_r4"]
    assert r4.data.params["factor.lora_rank"] == "4" and r4.data.params["training.lora_rank"] == "4"
    assert r4.data.params["training.epochs"] == "2" and r4.data.params["model.name"] == "tiny"
    # per-step loss: exactly the rows of metrics.jsonl
    rows = [json.loads(line) for line in (sweep / "runs/tiny_r4/metrics.jsonl").read_text().splitlines()]
    want = sorted((r["step"], r["loss"]) for r in rows if r.get("loss") is not None)
    got = sorted((m.step, m.value) for m in client.get_metric_history(r4.info.run_id, "loss"))
    assert got == want and len(got) >= 6
    # eval scores: what scores.json says, at the checkpoint's epoch
    scores = json.loads((sweep / "runs/tiny_r4/eval/epoch_1/exact_match/scores.json").read_text())
    (acc,) = client.get_metric_history(r4.info.run_id, "eval.exact_match.accuracy")
    assert (acc.step, acc.value) == (1, scores["metrics"]["accuracy"])
    base = json.loads((sweep / "controls/tiny_base/eval/base/exact_match/scores.json").read_text())
    assert runs["tiny_base"].data.metrics["eval.exact_match.accuracy"] == base["metrics"]["accuracy"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {"report/report.md",
                                                                                     "report/report.html"}
    # idempotent: the same runs, no point logged twice
    out = _ok(["export", sweep, "--to", "mlflow", "--tracking-uri", uri]).output
    assert "0 run(s) created, 2 brought up to date, 0 metric point(s)" in out
    again = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in runs.values())
    assert len(client.get_metric_history(r4.info.run_id, "loss")) == len(want)


def test_export_to_mlflow_defaults_to_a_sqlite_store_in_the_experiment_and_names_file_stores(sweep, tmp_path,
                                                                                               monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # the default store lives with the experiment, not where the command runs
    store = sweep / "mlflow"
    try:
        out = _ok(["export", sweep, "--to", "mlflow"]).output
        uri = f"sqlite:///{store / 'mlflow.db'}"
        assert uri in " ".join(out.split()) and "2 run(s) created" in out and not list(tmp_path.iterdir())
        client = MlflowClient(tracking_uri=uri)
        (experiment,) = [e for e in client.search_experiments() if e.name == "t"]
        runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
        assert sorted(runs) == ["t", "tiny_base", "tiny_r4"]
        assert {a.path for a in client.list_artifacts(runs["t"].info.run_id, "report")} >= {"report/report.md"}
        assert (store / "mlartifacts" / "t").is_dir()
    finally:
        shutil.rmtree(store, ignore_errors=True)  # the archive tests below see the sweep as trained
    for uri in ((tmp_path / "mlruns").as_uri(), "mlruns"):  # MLflow >= 3.10 refuses file stores: one line
        monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
        res = runner.invoke(app, ["export", str(sweep), "--to", "mlflow", "--tracking-uri", uri])
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


def test_export_to_wandb_offline_runs_read_back_and_idempotent(sweep, tmp_path):
    dest = tmp_path / "wb"
    out = _ok(["export", sweep, "--to", "wandb", "--wandb-dir", dest]).output
    assert "2 run(s) written, 0 unchanged" in out and f"wandb sync {dest}" in out
    dirs = sorted(dest.glob("offline-run-*"))
    runs = {r["name"]: r for r in map(_offline_run, dirs)}
    assert sorted(runs) == ["tiny_base", "tiny_r4"] and len({r["id"] for r in runs.values()}) == 2
    assert {(r["project"], r["group"], r["exit"]) for r in runs.values()} == {("t", "t", 0)}
    r4 = runs["tiny_r4"]
    assert r4["config"]["training"]["lora_rank"] == 4 and r4["config"]["factors"]["lora_rank"] == 4
    rows = [json.loads(line) for line in (sweep / "runs/tiny_r4/metrics.jsonl").read_text().splitlines()]
    want = sorted((r["step"], r["loss"]) for r in rows if r.get("loss") is not None)
    got = sorted((h["_step"], h["loss"]) for h in r4["history"] if "loss" in h)
    assert got == want and len(got) >= 6
    scores = json.loads((sweep / "runs/tiny_r4/eval/epoch_1/exact_match/scores.json").read_text())
    assert r4["summary"]["eval.exact_match.accuracy"] == scores["metrics"]["accuracy"]
    base = json.loads((sweep / "controls/tiny_base/eval/base/exact_match/scores.json").read_text())
    assert runs["tiny_base"]["summary"]["eval.exact_match.accuracy"] == base["metrics"]["accuracy"]
    assert {"report/report.md", "tunelab/run.yaml"} <= r4["files"]
    r4_dir = next(d for d in dirs if d.name.endswith(r4["id"]))
    assert (r4_dir / "files/report/report.md").read_bytes() == (sweep / "report/report.md").read_bytes()
    # wandb's own `sync` finds exactly these runs to upload (--dry-run: no login, no network)
    sync = subprocess.run([sys.executable, "-m", "wandb", "sync", "--dry-run", str(dest)], capture_output=True,
                          text=True, timeout=120)
    assert "Would sync 2 run(s)" in sync.stdout + sync.stderr, sync.stdout + sync.stderr

    # again: nothing changed, nothing written
    out = _ok(["export", sweep, "--to", "wandb", "--wandb-dir", dest]).output
    assert "0 run(s) written, 2 unchanged" in out and sorted(dest.glob("offline-run-*")) == dirs
    # again without the manifest: every run rewritten, in place of its previous directory (one per run id)
    (dest / "wandb-export.json").unlink()
    out = _ok(["export", sweep, "--to", "wandb", "--wandb-dir", dest]).output
    assert "2 run(s) written" in out
    again = {r["id"]: r for r in map(_offline_run, dest.glob("offline-run-*"))}
    assert sorted(again) == sorted(r["id"] for r in runs.values()) and len(list(dest.iterdir())) == 3
    assert sorted((h["_step"], h["loss"]) for h in again[r4["id"]]["history"] if "loss" in h) == want


def test_archive_copies_verifies_then_frees_space(sweep, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(sweep, exp)
    before = _tree(exp)
    heavy = [p for p in before if p.startswith(("runs/tiny_r4/trainer_state/", "runs/tiny_r4/checkpoints/epoch_0/"))]
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
                 "runs/tiny_r4/checkpoints/epoch_1/adapter_model.safetensors", "report/report.md", "tunelab.db"):
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
    from tunelab.archive import plan_archive, run_archive
    from tunelab.errors import TunelabError

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


def test_compare_reports_the_runs_real_losses_and_scores(sweep):
    res = runner.invoke(app, ["compare", str(sweep / "runs" / "tiny_r4"), str(sweep / "controls" / "tiny_base"),
                              "--json"])
    assert res.exit_code == 0, res.output
    r4, base = json.loads(res.stdout)["runs"]
    summary = json.loads((sweep / "runs/tiny_r4/summary.json").read_text())
    assert (r4["final_loss"], r4["final_val_loss"]) == (summary["final_loss"], summary["final_val_loss"])
    scores = json.loads((sweep / "runs/tiny_r4/eval/epoch_1/exact_match/scores.json").read_text())
    assert r4["scores"]["exact_match"] == {"score": scores["score"], "metric": "accuracy"}
    control = json.loads((sweep / "controls/tiny_base/eval/base/exact_match/scores.json").read_text())
    assert base["scores"]["exact_match"]["score"] == control["score"] and base["final_loss"] is None


def test_status_watch_shows_progress_and_exits_on_a_failure(sweep, tmp_path):
    """tiny_r4 made 'running at step 6 of 12' (this process as its live pid), then failing while watched."""
    import io
    import os
    import socket
    import threading
    import time

    from rich.console import Console

    from tunelab.execute.progress import clock
    from tunelab.execute.slurm import status_rows
    from tunelab.execute.watch import watch

    exp = tmp_path / "exp"
    shutil.copytree(sweep, exp)
    run = exp / "runs" / "tiny_r4"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    kept = [r for r in rows if r["step"] <= 6]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    (run / "summary.json").unlink()
    status = json.loads((run / "status.json").read_text())
    status.update(state="running", step=6, total_steps=12, host=socket.gethostname(), pid=os.getpid())
    (run / "status.json").write_text(json.dumps(status))
    train_rows = [r for r in kept if r.get("loss") is not None]
    eta = clock(train_rows[-1]["elapsed_s"] / 6 * 6)

    def fail_soon():
        time.sleep(1.5)
        (run / "status.json").write_text(json.dumps({**status, "state": "failed", "error": "CUDA out of memory"}))

    out = io.StringIO()
    threading.Thread(target=fail_soon, daemon=True).start()
    start = time.perf_counter()
    last = watch(exp, lambda: status_rows(exp), Console(file=out, width=200, force_terminal=True), interval_s=0.3)
    text = out.getvalue()
    assert time.perf_counter() - start < 30
    assert "6/12" in text and f"{train_rows[-1]['loss']:.4f}" in text and eta in text  # the running frame
    assert "tiny_r4: failed" in text and "1/2 completed, 1 failed" in text  # the failure, as it happened
    assert {r["name"]: r["state"] for r in last}["tiny_r4"] == "failed"
