"""One base model with many adapters beside it: the weights of a one-pass evaluation (onepass.py).

The base is loaded once, each checkpoint's adapter beside it under its own name (a control: no adapter), and a batch may
hold rows of several adapters: PEFT runs the base layers once and each adapter's update on its own rows (mixgen.py).
While a pass runs, `serving(weights)` lets the tunelab provider take an `AdapterView` of them instead of loading
anything."""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import os
import struct
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunelab.catalog import Architecture, resolve_architecture
from tunelab.errors import TunelabError
from tunelab.evaluate.batchcut import decode_rows, prefill_groups
from tunelab.evaluate.groupfill import cache_bytes, decodes_together, grouped_inputs
from tunelab.evaluate.hf import (
    WEIGHT_LOADS,
    BatchSettings,
    Generation,
    LocalLM,
    check_model_dirs,
    cpu_kernel,
    load_base,
)
from tunelab.evaluate.merging import Merged, copy_bytes, merge, unmerge
from tunelab.evaluate.mixbatch import AdapterQueue, MixedBatcher
from tunelab.evaluate.mixgen import BASE, Row, generate_args, row_tokens
from tunelab.evaluate.prefix import mid_padded, prefix_cache, shared_prefix, shares_prefix
from tunelab.faults import kill_point
from tunelab.host.device import merges_adapters

# A batch decoded as one holds every row's keys and values at the batch's width (groupfill.py): joined only while
# they take at most this share of the free memory; above, each prefill group decodes on its own (smaller caches).
CACHE_SHARE = 4


class SharedWeights(LocalLM):
    """The base model, loaded once, and the adapters attached beside it (by resolved path → PEFT name)."""

    def __init__(self, base_path: Path, tokenizer_dir: Path, dtype: Any, device: str, resize: bool):
        from transformers import AutoTokenizer

        check_model_dirs(base_path, None)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        model = load_base(base_path, tokenizer, dtype, resize)
        model.to(device)
        model.eval()
        cpu_kernel(model)
        super().__init__(model, tokenizer, device)
        self.base_path, self.dtype = base_path.resolve(), dtype
        self.served: dict[str | None, str] = {}  # adapter path (None: the base alone) -> its name in a batch
        self.prompts = {}  # every target of the pass formats the same samples: each prompt is encoded once
        self.batcher: MixedBatcher | None = None
        self.group_rows = 16  # a prefill group's rows at most: the pass's batch size (start_batching)
        self._count = 0
        self._answering = BASE
        self._merged: Merged | None = None  # the adapter merged into the base now (merging.py)
        self._unmergeable: set[str] = set()  # adapters PEFT would not merge, or whose copies did not fit

    # ---- what is attached ------------------------------------------------------------------------
    def serve_base(self) -> None:
        """Controls of this base model are served too (rows with no adapter)."""
        self.served[None] = BASE

    def attach(self, adapters: list[Path]) -> dict[Path, str]:
        """Attach these adapters, replacing those before (new first, so one is always on); returns failures."""
        old = [name for key, name in self.served.items() if key is not None]
        failed: dict[Path, str] = {}
        self.end_merge()
        for path in adapters:
            name = f"t{self._count}"
            self._count += 1
            try:
                self._load_adapter(path, name)
            except Exception as exc:  # a broken checkpoint fails its own target only
                failed[path] = f"cannot load the adapter: {type(exc).__name__}: {exc}"
                continue
            self.served[str(path.resolve())] = name
            if old:  # the active adapter goes last
                self.model.set_adapter(name, inference_mode=True)
                for gone in old:
                    self.model.delete_adapter(gone)
                self.served = {k: v for k, v in self.served.items() if v not in old}
                old = []
        return failed

    def _load_adapter(self, path: Path, name: str) -> None:
        from peft import PeftModel

        check_model_dirs(self.base_path, path)
        # low_cpu_mem_usage: the adapter's layers are made on the meta device and filled from its file, not
        # initialised first; the values are the file's either way
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(path), adapter_name=name, low_cpu_mem_usage=True)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name, low_cpu_mem_usage=True)
        self.model.eval()
        WEIGHT_LOADS["adapter"] += 1

    def adapters(self) -> list[str]:
        return [name for key, name in self.served.items() if key is not None]

    def mixing_refused(self) -> str | None:
        """Why PEFT refuses a batch mixing these adapters (tried on one token each), or None."""
        import torch

        if len(self.served) < 2:
            return None
        self.end_merge()
        names = [*self.adapters(), BASE]
        ids = torch.full((len(names), 1), self.pad_id, dtype=torch.long, device=self.device)
        try:
            with torch.inference_mode(), _quiet_peft_hooks():
                self.model(input_ids=ids, adapter_names=names)
        except Exception as exc:
            return f"PEFT cannot mix these adapters in one batch ({type(exc).__name__}: {exc})"
        return None

    # ---- running a batch -------------------------------------------------------------------------
    @contextlib.contextmanager
    def answering(self, adapter: str) -> Iterator[None]:
        """Forward passes (LocalLM.continuation_logprobs) answer with this adapter (BASE: none) meanwhile."""
        before, self._answering = self._answering, adapter
        try:
            yield
        finally:
            self._answering = before

    def adapter_args(self, rows: int) -> dict[str, Any]:
        return self._names([self._answering] * rows)

    def _names(self, adapters: list[str]) -> dict[str, Any]:
        """generate()'s or forward()'s argument for these adapters' rows: one adapter, PEFT's plain path with it active
        (set_adapter walks every layer, so only when it changes); else the mixed path, naming each row's."""
        if not self.adapters():
            return {}
        if len(set(adapters)) == 1 and adapters[0] != BASE:
            self._answer_with(adapters[0])
            return {}
        self.end_merge()
        return {"adapter_names": adapters}

    def _answer_with(self, adapter: str) -> None:
        """This adapter active alone, merged where merging pays and its copies fit (merging.py)."""
        if self._merged is not None and self._merged.adapter == adapter:
            return
        self.end_merge()
        if (merges_adapters(self.device) and adapter not in self._unmergeable
                and copy_bytes(self.model, adapter) <= free_bytes(self.device) // 2):
            try:
                self._merged = merge(self.model, adapter)
                return
            except Exception:  # PEFT refuses this adapter's merge (or its weights are not finite): unmerged, as before
                self._unmergeable.add(adapter)
                self.end_merge()
        else:
            self._unmergeable.add(adapter)
        if self.model.active_adapter != adapter:
            self.model.set_adapter(adapter, inference_mode=True)

    def end_merge(self) -> None:
        """The base's own weights back in place (bit for bit), no adapter merged."""
        merged, self._merged = self._merged, None
        if merged is not None:
            unmerge(self.model, merged)

    def generate_rows(self, rows: list[Row], stop_ids: list[int]) -> list[Generation]:
        """Decode rows of their own adapters and settings (mixgen.py), each cut as LocalLM.generate_batch cuts one:
        in prefill groups by length (batchcut.prefill_groups), decoded as one where they can be (groupfill.py), else
        each group a generate() of its own."""
        import torch

        kill_point("eval.generate")  # the fault benchmark: mid-evaluation
        prompts = [r.prompt_ids for r in rows]
        groups = prefill_groups([len(p) for p in prompts], self.group_rows, self.device)
        with torch.inference_mode(), _quiet_peft_hooks(), self._weights_for([r.adapter for r in rows]) as names:
            if names or len(groups) == 1:  # a mixed batch (PEFT names each row's adapter), or one group
                return self._generate(rows, stop_ids, names)
            order = [i for g in groups for i in g]
            inputs = self._grouped(prompts, groups)
            if inputs is not None:
                answers = self._generate([rows[i] for i in order], stop_ids, names, inputs)
            else:  # groups that cannot be decoded as one: a generate() each
                answers = [a for g in groups for a in self._generate([rows[i] for i in g], stop_ids, names)]
        back: list[Generation | None] = [None] * len(rows)
        for i, answer in zip(order, answers):
            back[i] = answer
        return back  # type: ignore[return-value]  # every row is in one group

    def _grouped(self, prompts: list[list[int]], groups: list[list[int]]) -> dict[str, Any] | None:
        """generate()'s inputs for one adapter's groups decoded as one (groupfill.py), or None: they cannot be."""
        prefix = shared_prefix(prompts) if shares_prefix(self.device) else 0
        if not decodes_together(groups, [len(p) for p in prompts], prefix):
            return None
        arch = self.architecture
        held = cache_bytes(arch, len(prompts), max(map(len, prompts)), self.model.dtype.itemsize) if arch else None
        if held is None or held > free_bytes(self.device) // CACHE_SHARE:  # the groups' own caches are smaller
            return None
        return grouped_inputs(self.model, prompts, groups, prefix, self.pad_id, self.device)

    @functools.cached_property
    def architecture(self) -> Architecture | None:
        """The base's shape as catalog.py reads its config.json; None where it cannot be modelled."""
        try:
            return resolve_architecture(self.base_path)
        except TunelabError:
            return None

    def _generate(self, rows: list[Row], stop_ids: list[int], names: dict[str, Any],
                  inputs: dict[str, Any] | None = None) -> list[Generation]:
        """One generate() of these rows, inside generate_rows' weights: `inputs` given, or laid out here."""
        import torch

        if inputs is None:
            inputs = self._inputs([r.prompt_ids for r in rows], prefixed=not names)
        width = inputs["input_ids"].shape[1]
        args = generate_args(rows, stop_ids, self.pad_id, self.tokenizer, width, self.device)
        out = self.model.generate(**inputs, **names, **args)
        logps = torch.stack(out.logits, 1).float().log_softmax(-1) if out.logits is not None else None
        return [self.generation(tokens, stop_ids, r.settings.stop_seqs,
                                logps[i] if logps is not None and r.settings.top_logprobs is not None else None,
                                r.settings.top_logprobs)
                for i, (tokens, r) in enumerate(zip(row_tokens(out.sequences, width, rows), rows))]

    @contextlib.contextmanager
    def _weights_for(self, adapters: list[str]) -> Iterator[dict[str, Any]]:
        """The weights these rows are answered with meanwhile, and generate()'s argument naming them: the controls'
        rows alone run with every adapter off (PEFT's mixed path would run them as base rows, the same sums)."""
        if self.adapters() and set(adapters) == {BASE}:
            self.end_merge()
            with self.model.disable_adapter():
                yield {}
        else:
            yield self._names(adapters)

    def _inputs(self, prompts: list[list[int]], prefixed: bool) -> dict[str, Any]:
        """generate()'s inputs: left-padded, or (`prefixed`: one adapter's rows) their shared prefix prefilled once
        and the rows laid out after it (prefix.py)."""
        import torch

        prefix = shared_prefix(prompts) if prefixed and shares_prefix(self.device) else 0
        cache = prefix_cache(self.model, prompts[0][:prefix], len(prompts), self.device) if prefix else None
        if cache is None:
            ids, mask = self._left_padded(prompts)
            return {"input_ids": ids, "attention_mask": mask}
        ids, mask = mid_padded(prompts, prefix, self.pad_id)
        return {"input_ids": torch.tensor(ids, device=self.device),
                "attention_mask": torch.tensor(mask, device=self.device), "past_key_values": cache}

    def start_batching(self, batch_size: int, fill: bool | None = None) -> MixedBatcher:
        """A fresh queue for one inspect run (its lock lives in its event loop); `fill`: always fill short batches."""
        fill = str(self.device).startswith("cuda") if fill is None else fill
        # unasked, a CPU mixes no adapters: a mixed batch takes PEFT's unmerged path, an adapter's own is merged
        fill_below = batch_size if fill else 1 if merges_adapters(self.device) else batch_size // 2
        self.group_rows = batch_size
        self.batcher = MixedBatcher(self.generate_rows, batch_size, fill_below=fill_below,
                                    decode_rows=decode_rows(batch_size, self.device))
        return self.batcher

    def release(self) -> None:
        """Drop the weights; a full collection runs only when the model outlives its last reference (hf's rule)."""

        import torch

        if self.model is not None:
            self.end_merge()
        model = weakref.ref(self.model) if self.model is not None else None
        self.model, self.served, self.batcher = None, {}, None
        if model is not None and model() is not None:
            gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class AdapterView:
    """One target's weights as the provider uses them: the shared base with its adapter, batched in `queue`."""

    def __init__(self, shared: SharedWeights, adapter: str):
        self.shared, self.adapter = shared, adapter
        self.tokenizer, self.device, self.pad_id = shared.tokenizer, shared.device, shared.pad_id
        self.prompts = shared.prompts

    def queue(self, stop_ids: list[int]) -> AdapterQueue:
        if self.shared.batcher is None:
            raise TunelabError("the shared weights of this evaluation are not batching (no pass is running)")
        return AdapterQueue(self.shared.batcher, self.adapter, stop_ids)

    def generate_batch(self, prompts: list[list[int]], max_new_tokens: int, stop_ids: list[int],
                       top_logprobs: int | None = None, *, sampling: Any = None, seeds: list[int] | None = None,
                       stop_seqs: tuple[str, ...] = ()) -> list[Generation]:
        """LocalLM.generate_batch on this adapter, unqueued."""
        settings = BatchSettings(max_new_tokens, top_logprobs, sampling, stop_seqs)
        rows = [Row(p, self.adapter, settings, seeds[i] if seeds else None) for i, p in enumerate(prompts)]
        return self.shared.generate_rows(rows, stop_ids)

    def continuation_logprobs(self, prompt: list[int], continuations: list[list[int]]) -> list[float]:
        with self.shared.answering(self.adapter), _quiet_peft_hooks():
            return self.shared.continuation_logprobs(prompt, continuations)


@contextlib.contextmanager
def _quiet_peft_hooks() -> Iterator[None]:
    """PEFT's adapter_names hooks ask transformers' deprecated `is_gradient_checkpointing` (transformers 5.23)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


# ---------------------------------------------------------------- the weights a pass is serving
_SERVING: list[SharedWeights] = []


@contextlib.contextmanager
def serving(shared: SharedWeights) -> Iterator[SharedWeights]:
    _SERVING.append(shared)
    try:
        yield shared
    finally:
        _SERVING.remove(shared)


def shared_view(base_path: str | Path, adapter_path: str | Path | None, dtype: Any, device: str) -> AdapterView | None:
    """The view of a target that a running pass serves (same base, dtype, device; its adapter attached)."""
    key = str(Path(adapter_path).resolve()) if adapter_path is not None else None
    for shared in _SERVING:
        if (shared.base_path == Path(base_path).resolve() and str(shared.dtype) == str(dtype)
                and shared.device == device and key in shared.served):
            return AdapterView(shared, shared.served[key])
    return None


# ---------------------------------------------------------------- memory
def adapter_bytes(path: Path) -> int:
    """An adapter's weights in memory from its safetensors header, all float32 (PEFT upcasts): an upper bound."""
    weights = path / "adapter_model.safetensors"
    try:
        with open(weights, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > weights.stat().st_size:
                raise ValueError("not a safetensors header")
            header = json.loads(f.read(size))
        return sum(4 * math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return 4 * weights.stat().st_size if weights.is_file() else 0


def free_bytes(device: str) -> int:
    """Memory free for more weights now: the GPU's free bytes, or the host's available memory."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
