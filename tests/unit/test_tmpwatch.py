"""tests/tmpwatch.py: the line a session's end prints on what it left in the temp dir."""

from __future__ import annotations

import tempfile

import tmpwatch


def test_the_line_names_what_appeared_largest_first_and_leaves_pytests_own_dirs_out(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    (tmp_path / "there-before").write_bytes(b"x" * 4096)
    before = tmpwatch.entries()
    (tmp_path / "leak-a").write_bytes(b"x" * 2**20)
    (tmp_path / "leak-b" / "deeper").mkdir(parents=True)
    (tmp_path / "leak-b" / "deeper" / "model.bin").write_bytes(b"x" * 2**21)
    (tmp_path / "pytest-of-someone" / "pytest-0").mkdir(parents=True)
    assert tmpwatch.report(before) == (f"left in {tmp_path} by this session (or beside it): 2 entries, 3.0 MiB: "
                                       "leak-b (2.0 MiB), leak-a (1.0 MiB)")


def test_nothing_new_is_no_line(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    (tmp_path / "there-before").mkdir()
    assert tmpwatch.report(tmpwatch.entries()) is None
