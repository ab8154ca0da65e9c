"""Each writer on a real full filesystem (a small tmpfs the test mounts, smallfs.py): one NoSpaceError naming the
file and the bytes it needed, and nothing half-written left as if it were complete."""

from __future__ import annotations

import json
import sqlite3

import pytest
from smallfs import fill, small_filesystem

from tunelab.errors import NoSpaceError
from tunelab.fsutil import append_text, atomic_write_text, human_bytes, is_disk_full, space_guard, sqlite_session
from tunelab.host.diskspace import parse_quota
from tunelab.rundir.metrics import MetricRow, append_metric, read_metrics

SIZE_KIB = 1024


@pytest.fixture
def full_fs(tmp_path, request):
    """A 1 MiB filesystem with files already on it, then filled: no room for another block."""
    mnt = small_filesystem(tmp_path, request, SIZE_KIB)
    (mnt / "kept.json").write_text('{"old": true}\n')
    fill(mnt, 0)
    return mnt


def test_atomic_write_on_a_full_disk_names_the_file_and_keeps_the_old_one(full_fs):
    text = json.dumps({"new": "x" * 20_000})
    with pytest.raises(NoSpaceError) as caught:
        atomic_write_text(full_fs / "kept.json", text, check_unchanged=False)
    err = caught.value
    assert str(err) == (f"no space left on {full_fs / 'kept.json'} (needs ~{human_bytes(len(text))}, 0 B free): "
                        "free space, then run the command again")
    assert (err.needed, err.free) == (len(text), 0)
    assert (full_fs / "kept.json").read_text() == '{"old": true}\n'  # the old file stays whole
    assert sorted(p.name for p in full_fs.iterdir()) == ["filler", "kept.json"]  # no temp file left


def test_a_metrics_row_that_does_not_fit_is_one_error_and_no_row(full_fs):
    run_dir = full_fs / "run"
    run_dir.mkdir()
    (full_fs / "filler").unlink()
    append_metric(run_dir, MetricRow(step=1, loss=2.0))
    fill(full_fs, 0)  # the first row's block is full too after enough rows: fill what is left of it
    with pytest.raises(NoSpaceError) as caught:
        for step in range(2, 10_000):
            append_metric(run_dir, MetricRow(step=step, loss=1.0 / step))
    assert caught.value.path == str(run_dir / "metrics.jsonl")
    rows = read_metrics(run_dir)  # a row cut off mid-line is no row
    assert [r.step for r in rows] == list(range(1, len(rows) + 1)) and rows


def test_a_torch_save_and_a_safetensors_save_on_a_full_disk_are_no_space_errors(full_fs):
    import torch
    from safetensors.torch import save_file

    tensors = {"w": torch.zeros(50_000)}
    for name, save in (("optimizer.pt", torch.save), ("adapter.safetensors", save_file)):
        with pytest.raises(NoSpaceError) as caught, space_guard(full_fs / "ckpt", 200_000):
            save(tensors, str(full_fs / name))
        assert caught.value.path == str(full_fs / "ckpt") and caught.value.needed == 200_000, name
        assert isinstance(caught.value.__cause__, Exception)  # the library's own error, kept as the cause


def test_other_errors_pass_the_guard_unchanged(tmp_path):
    with pytest.raises(ValueError), space_guard(tmp_path):
        raise ValueError("not a disk matter")
    # torch's unexplained write failure counts as a full disk only where the disk is full
    assert not is_disk_full(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),
                            tmp_path)
    append_text(tmp_path / "a.log", "line\n")
    assert (tmp_path / "a.log").read_text() == "line\n"


def test_the_ledger_on_a_full_disk_is_a_no_space_error(full_fs):
    (full_fs / "filler").unlink()
    db = full_fs / "tunelab.db"
    with sqlite_session(db) as conn:
        conn.execute("CREATE TABLE t (x TEXT)")
    fill(full_fs, 0)
    with pytest.raises(NoSpaceError) as caught, sqlite_session(db) as conn:
        for _ in range(200):
            conn.execute("INSERT INTO t VALUES (?)", ("x" * 10_000,))
    assert caught.value.path == str(db)
    assert isinstance(caught.value.__cause__, sqlite3.Error)


def test_an_epoch_publish_that_does_not_fit_leaves_no_half_copy(full_fs):
    from tunelab.train.checkpoints import publish_epoch_checkpoint

    (full_fs / "filler").unlink()
    src = full_fs / "trainer_state" / "checkpoint-4"
    src.mkdir(parents=True)
    (src / "adapter_model.safetensors").write_bytes(b"\1" * 300_000)
    (src / "adapter_config.json").write_text("{}")
    fill(full_fs, 100_000)
    with pytest.raises(NoSpaceError) as caught:
        publish_epoch_checkpoint(src, full_fs, 0)
    assert caught.value.path == str(full_fs / "checkpoints" / "epoch_0")
    assert caught.value.needed == 300_002
    assert list((full_fs / "checkpoints").iterdir()) == []  # neither epoch_0 nor its half-made .epoch_0.tmp


def test_a_report_figure_on_a_full_disk_is_a_no_space_error(full_fs):
    from tunelab.report.figures import _new, _save

    fig = _new(4, 3)
    fig.add_subplot().plot(range(100), [x * x for x in range(100)])
    with pytest.raises(NoSpaceError) as caught:
        _save(fig, full_fs / "figures", "loss_curves", "caption")
    assert caught.value.path == str(full_fs / "figures" / "loss_curves.png")


# `quota -w -p -u UID` (quota-tools) and `lfs quota -q -u UID MOUNT` (Lustre) as their manuals show them: KiB
QUOTA = """Disk quotas for user alice (uid 1000):
     Filesystem   blocks   quota   limit   grace   files   quota   limit   grace
      /dev/sdb1  4000000 5000000 6000000       0   12000       0       0       0
      /dev/sdc1     1000       0       0       0      10       0       0       0
"""
LFS = """     /lustre/scratch
                 9000*   8000   10000   6d23h      50       0       0       -
"""


def test_quota_rows_are_read_for_the_experiments_filesystem():
    q = parse_quota(QUOTA, "/scratch", "quota", "/dev/sdb1")
    assert q is not None and (q.used, q.limit, q.left) == (4000000 * 1024, 5000000 * 1024, 1000000 * 1024)
    assert parse_quota(QUOTA, "/data", "quota", "/dev/sdc1") is None  # no limit set: no quota
    lustre = parse_quota(LFS, "/lustre/scratch", "lfs quota")
    assert lustre is not None and (lustre.used, lustre.limit, lustre.left) == (9000 * 1024, 8000 * 1024, 0)
