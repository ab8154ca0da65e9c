"""Fresh caches and history for every tool in every repeat (issue 66): a run finds nothing an earlier run left.

Before, tunelab's disk cache (~/.cache/tunelab: dataset stamps, tokenized data) and history ledger
(~/.local/share/tunelab/history.db) carried over between its repeats — a cold first repeat, then warm ones — while
a peer kept whatever its own caches held (the datasets library's under ~/.cache/huggingface). Every timed command
now runs with a home of its own, made empty under the run's directory: HOME and the XDG directories, the Hugging
Face caches, tunelab's cache and history, the compilers' caches (Triton, TorchInductor, CUDA's under HOME). Every
repeat of every tool is therefore a cold start, as a user's first run of each is; no tool is warm. The models and
data are local directories (offline), so no cache is needed to find them."""

from __future__ import annotations

from pathlib import Path

# variable -> the directory under the fresh home it points at
CACHE_DIRS = {
    "HOME": "",
    "XDG_CACHE_HOME": ".cache",
    "XDG_CONFIG_HOME": ".config",
    "XDG_DATA_HOME": ".local/share",
    "HF_HOME": ".cache/huggingface",
    "HF_DATASETS_CACHE": ".cache/huggingface/datasets",
    "TUNELAB_CACHE": ".cache/tunelab",
    "TRITON_CACHE_DIR": ".triton",
    "TORCHINDUCTOR_CACHE_DIR": ".cache/torchinductor",
}
HISTORY = ".local/share/tunelab/history.db"  # TUNELAB_HISTORY: a file, made by tunelab on first use


def fresh_home(where: Path) -> dict[str, str]:
    """The environment of a run that starts cold: `where` made (it must not hold anything yet) and every cache
    variable pointed under it. Raises FileExistsError when `where` exists: a reused home would be warm."""
    return _home(where, exist_ok=False)


def kept_home(where: Path) -> dict[str, str]:
    """The environment of a run on warm caches (`--warm-caches`): the same variables, pointed under `where`, which an
    untimed run of the same tool filled first (made here if it does not exist yet)."""
    return _home(where, exist_ok=True)


def _home(where: Path, exist_ok: bool) -> dict[str, str]:
    """`where` made, and every cache variable pointed under it."""
    where = where.resolve()
    where.mkdir(parents=True, exist_ok=exist_ok)
    env = {name: str(where / sub) if sub else str(where) for name, sub in CACHE_DIRS.items()}
    env["TUNELAB_HISTORY"] = str(where / HISTORY)
    return env


def home_env(where: Path, warm: bool) -> dict[str, str]:
    """kept_home where `warm`, else fresh_home."""
    return kept_home(where) if warm else fresh_home(where)
