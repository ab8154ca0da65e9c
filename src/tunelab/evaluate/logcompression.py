"""inspect-ai's `.eval` log compression, sized for what tunelab writes: one small member per sample.

inspect-ai compresses each member with zstd on a pool of threads (a private setting), started and stopped for every
few-kilobyte sample: most of the log writing (docs/evaluation.md). One thread writes the same format."""

from __future__ import annotations

from tunelab.evaluate.inspect_internals import set_zstd_threads

# zstandard's `threads=0`: compress in the calling thread, no worker pool.
LOG_ZSTD_THREADS = 0


def compress_logs_in_one_thread() -> None:
    """Set inspect-ai's zstd threads for `.eval` members to one, before every eval and log tunelab writes."""

    set_zstd_threads(LOG_ZSTD_THREADS)
