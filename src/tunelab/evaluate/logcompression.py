"""inspect-ai's `.eval` log compression, sized for what tunelab writes: one small member per sample.

inspect-ai (0.3.285) compresses each member of a `.eval` zip with zstd on 12 threads (a private setting, read at
each member's write: inspect_internals.set_zstd_threads). A sample's member is a few kilobytes, so every write
starts and stops a 12-thread pool for nothing, and that pool was most of the demo evaluation's "log writing"
phase (the figures: docs/evaluation.md). One
thread writes the same zstd format: inspect, `inspect view` and tunelab read the logs as before.
"""

from __future__ import annotations

from tunelab.evaluate.inspect_internals import set_zstd_threads

# zstandard's `threads=0`: compress in the calling thread, no worker pool.
LOG_ZSTD_THREADS = 0


def compress_logs_in_one_thread() -> None:
    """Set inspect-ai's zstd thread count for `.eval` members to one (the calling thread). Called before every
    inspect eval tunelab starts (runner.evaluate_task, waves.run_wave) and every log tunelab writes itself."""

    set_zstd_threads(LOG_ZSTD_THREADS)
