"""Which counter a recorded peak memory figure is: one vocabulary for the job, the probe, ingested logs, the
history and the report, so a figure recorded by one is labelled and compared like the same figure from another."""

from __future__ import annotations

from collections.abc import Iterable

from tunelab.vocabulary import Vocabulary

# names older tunelab versions wrote for a counter, read as today's
_OLD_NAMES = {"cpu_max_rss": "host_max_rss"}


class MemoryKind(Vocabulary):  # read(): old names included (_missing_)
    CUDA_MAX_ALLOCATED = "cuda_max_allocated"  # torch.cuda.max_memory_allocated: tensors live at the peak
    CUDA_MAX_RESERVED = "cuda_max_reserved"  # torch.cuda.max_memory_reserved: the caching allocator's pool
    CUDA_MAX_ACTIVE = "cuda_max_active"  # allocated plus blocks freed but not yet reusable (torchtune)
    NVML_USED = "nvml_used"  # what the driver reports the process uses (CUDA context included)
    HOST_MAX_RSS = "host_max_rss"  # the process's max resident set size (a CPU run, a CPU probe)

    @classmethod
    def _missing_(cls, value: object) -> MemoryKind | None:
        old = _OLD_NAMES.get(value) if isinstance(value, str) else None
        return cls(old) if old else None

    @property
    def label(self) -> str:
        """How a report names the counter (figure axes, captions)."""
        return _LABELS[self]

    @property
    def on_gpu(self) -> bool:
        return self is not MemoryKind.HOST_MAX_RSS


_LABELS = {
    MemoryKind.CUDA_MAX_ALLOCATED: "CUDA max allocated", MemoryKind.CUDA_MAX_RESERVED: "CUDA max reserved",
    MemoryKind.CUDA_MAX_ACTIVE: "CUDA max active", MemoryKind.NVML_USED: "NVML used",
    MemoryKind.HOST_MAX_RSS: "host max RSS",
}


def memory_labels(kinds: Iterable[MemoryKind | None], sep: str = " / ") -> str:
    """The counters a set of peaks was recorded as, named for a reader, each once ("" for none)."""
    return sep.join(sorted({k.label for k in kinds if k is not None}))
