"""Every private name of inspect-ai that tunelab uses, behind this one door: code inspect's own loop runs (so tunelab's
.eval logs cannot drift from it), a setting it offers no option for, or its vLLM provider.

A private name can move in any release, so no other module imports one: tests/unit/test_inspect_internals.py checks each
and pyproject.toml allows only the versions it passed on. Every import is lazy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# zstandard's `threads=0`: compress in the calling thread, no worker pool.
LOG_ZSTD_THREADS = 0


def compress_logs_in_one_thread() -> None:
    """Set inspect-ai's zstd threads for `.eval` members to one, before every eval and log tunelab writes."""
    set_zstd_threads(LOG_ZSTD_THREADS)


if TYPE_CHECKING:  # type-checked against the real class; imported at run time by __getattr__ below
    from inspect_ai.model._providers.vllm import VLLMAPI

# The inspect-ai versions tests/unit/test_inspect_internals.py has passed on (pyproject.toml's range).
INSPECT_AI_TESTED = ("0.3.285",)

# Each private name: where it lives in inspect-ai (the test checks every one).
PRIVATE_NAMES = (
    "inspect_ai._eval.task.results.eval_results",
    "inspect_ai.scorer._scorer.unique_scorer_name",
    "inspect_ai._util.registry.registry_unqualified_name",
    "inspect_ai._util.zipfile._ZSTD_THREADS",
    "inspect_ai.model._providers.vllm.VLLMAPI",
    "inspect_ai.model._providers._vllm_lora._vllm_servers",
    "inspect_ai.solver._task_state.sample_state",
    "inspect_ai.agent._acp.server.acp_server",
)

# Modules inspect-ai's eval() imports at its first call (its ACP agent server, whose pydantic schema models cost
# ~0.4 s here), which an evaluation process imports with its stack instead (evaluate/__init__.py EVALUATION_STACK):
# then the import is the stack's, timed and recorded by the job (tunelab/jobimports.py) and priced by the plan
# (forecast/jobstart.py), not a part of the first task's measured duration, which the plan prices as generation.
EVAL_CALL_IMPORTS = ("inspect_ai.agent._acp.server",)


def eval_results(samples: int, scores: list[dict[str, Any]], reducers: Any, scorers: Any, metrics: Any,
                 completed_samples: int) -> tuple[Any, Any]:
    """A task's EvalResults and its reductions, computed by the function inspect's loop ends a task with."""
    from inspect_ai._eval.task.results import eval_results as inspect_eval_results

    return inspect_eval_results(samples, scores, reducers, scorers, metrics, completed_samples=completed_samples)


def unique_scorer_name(scorer: Any, already_used: list[str]) -> str:
    """The name a scorer's scores go under in a log (its registry name, numbered when already used)."""
    from inspect_ai.scorer._scorer import unique_scorer_name as inspect_unique_scorer_name

    return inspect_unique_scorer_name(scorer, already_used)


def registry_unqualified_name(obj: Any) -> str:
    """A registered object's name without its package prefix (what a SampleScore's `scorer` holds)."""
    from inspect_ai._util.registry import registry_unqualified_name as inspect_registry_unqualified_name

    return inspect_registry_unqualified_name(obj)


def zstd_threads() -> int:
    """The threads inspect's zstd compressor uses for each `.eval` member."""
    from inspect_ai._util import zipfile as inspect_zipfile

    return int(inspect_zipfile._ZSTD_THREADS)


def set_zstd_threads(threads: int) -> None:
    """Set the threads inspect's zstd compressor uses for each `.eval` member (read at every member's write)."""
    from inspect_ai._util import zipfile as inspect_zipfile

    inspect_zipfile._ZSTD_THREADS = threads


def forget_vllm_server(base_model: str) -> None:
    """Drop inspect's record of the vLLM server for a base model (its VLLMAPI instances share one per base, with
    its URL), so that the next provider made for that base resolves the server tunelab names."""
    from inspect_ai.model._providers._vllm_lora import _vllm_servers

    _vllm_servers.pop(base_model, None)


def sample_state() -> Any:
    """The TaskState of the inspect sample running in this context (None outside one); inspect has no public
    accessor for the sample id and epoch a provider's generate() call is made for."""
    from inspect_ai.solver._task_state import sample_state as inspect_sample_state

    return inspect_sample_state()


def __getattr__(name: str) -> Any:
    """`VLLMAPI`, inspect's vLLM provider class (vllm_provider.py subclasses it), imported when first asked for."""
    if name == "VLLMAPI":
        from inspect_ai.model._providers.vllm import VLLMAPI

        return VLLMAPI
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["INSPECT_AI_TESTED", "PRIVATE_NAMES", "VLLMAPI", "eval_results", "forget_vllm_server",
           "registry_unqualified_name", "sample_state", "set_zstd_threads",
           "unique_scorer_name", "zstd_threads"]
