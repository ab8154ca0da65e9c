"""The `.eval` log's members are compressed in the calling thread (evaluate/inspect_internals.py) and stay zstd
members that inspect-ai reads back."""

from __future__ import annotations

import json
import zipfile

from tunelab.evaluate.inspect_internals import LOG_ZSTD_THREADS, compress_logs_in_one_thread


def test_the_setting_is_set():
    from tunelab.evaluate.inspect_internals import set_zstd_threads, zstd_threads

    before = zstd_threads()  # an inspect-ai upgrade that moves it fails here and in test_inspect_internals.py
    try:
        set_zstd_threads(12)
        compress_logs_in_one_thread()
        assert zstd_threads() == LOG_ZSTD_THREADS == 0
    finally:
        set_zstd_threads(before)


def test_a_member_written_after_it_is_a_zstd_member_read_back_whole(tmp_path):
    from inspect_ai._util.zipfile import zipfile_compress_kwargs

    compress_logs_in_one_thread()
    sample = {"id": 7, "output": "Hello " * 500, "scores": {"exact_match": {"value": "C"}}}
    path = tmp_path / "log.eval"
    with zipfile.ZipFile(path, "w", **zipfile_compress_kwargs) as zf:
        zf.writestr("samples/7_epoch_1.json", json.dumps(sample))
    with zipfile.ZipFile(path) as zf:
        [info] = zf.infolist()
        assert info.compress_type == zipfile_compress_kwargs["compression"]  # zstd, as inspect writes it
        assert info.compress_size < info.file_size / 10  # compressed, not stored
        assert json.loads(zf.read(info)) == sample
