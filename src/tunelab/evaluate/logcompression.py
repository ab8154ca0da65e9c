"""inspect-ai's `.eval` log compression, sized for what tunelab writes: one small member per sample.

inspect-ai (0.3.285) compresses each member of a `.eval` zip with zstd on 12 threads (`_ZSTD_THREADS` in
`inspect_ai._util.zipfile`, read at each member's write). A sample's member is a few kilobytes, so every write
starts and stops a 12-thread pool for nothing: measured here, 6.9 ms a member against 0.19 ms single-threaded
(12 KB of JSON, zstd level 3) — most of the demo evaluation's "log writing" phase (docs/evaluation.md). One
thread writes the same zstd format: inspect, `inspect view` and tunelab read the logs as before.
"""

from __future__ import annotations

# zstandard's `threads=0`: compress in the calling thread, no worker pool.
LOG_ZSTD_THREADS = 0


def compress_logs_in_one_thread() -> None:
    """Set inspect-ai's zstd thread count for `.eval` members to one (the calling thread). Called before every
    inspect eval tunelab starts (runner.evaluate_task, waves.run_wave); a no-op on an inspect-ai without the
    setting (tests/unit/test_eval_log_compression.py fails there, so an upgrade is noticed)."""
    from inspect_ai._util import zipfile as inspect_zipfile

    if hasattr(inspect_zipfile, "_ZSTD_THREADS"):
        inspect_zipfile._ZSTD_THREADS = LOG_ZSTD_THREADS
