"""FSDP2 applied by tunelab itself, on GPUs (NCCL) and CPU (gloo) alike.

accelerate applies the Trainer's FSDP arguments on accelerators only (with CPU processes it silently trains DDP), so
tunelab shards the PEFT model with `fully_shard` (each decoder layer, then the root) after the Trainer built it and
before the optimizer: one path on every device, the one the suite runs. Checkpoints gather a full state dict, so their
files are exactly a one-process run's; a resume loads the adapter before sharding."""

from __future__ import annotations

import os
import resource
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tunelab.host.spanning import NODE_ADDRESS_ENV
from tunelab.rundir.summary import ProcessMemory
from tunelab.spec.resources import Strategy
from tunelab.train.distributed import all_gather_text, all_reduce, log, world

if TYPE_CHECKING:
    from transformers import Trainer

    _TrainerBase = Trainer
else:
    _TrainerBase = object

OPTIMIZER_FILE, SCHEDULER_FILE = "optimizer.pt", "scheduler.pt"  # the Trainer's names for them


def shard_units(model: Any) -> list[Any]:
    """The modules FSDP shards as units: the decoder layers (`_no_split_modules`), outermost first."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    units: list[Any] = []
    for module in base.modules():
        if type(module).__name__ in names and not any(m is module for u in units for m in u.modules()):
            units.append(module)
    return units


def shard_trainer(trainer: Any, resume_from: Path | None) -> None:
    """Shard trainer.model with FSDP2, a resume's adapter loaded first by PEFT; raises without decoder layers."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = trainer.model
    if resume_from is not None:
        model.load_adapter(str(resume_from), model.active_adapter, is_trainable=True)
    units = shard_units(model)
    if not units:
        from tunelab.errors import TunelabError

        raise TunelabError(f"{type(model.get_base_model()).__name__} names no decoder layer class "
                           "(_no_split_modules): FSDP has no units to shard", field="resources.distributed")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mesh = init_device_mesh(device, (world().size,))
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    trainer.sharded = True
    _leave_unwrapped(trainer.accelerator)
    log(f"FSDP2: {len(units)} decoder layers and the root sharded over {world().size} processes ({device})")


def _leave_unwrapped(accelerator: Any) -> None:
    """accelerate wraps every multi-process model in DDP (and refuses DTensor parameters there): a model sharded
    here is prepared as an evaluation-mode model is — autocast where asked, no wrapper, no move."""
    prepare = accelerator.prepare_model

    def prepare_model(model: Any, device_placement: bool | None = None, evaluation_mode: bool = False) -> Any:
        return prepare(model, device_placement=False, evaluation_mode=True)

    accelerator.prepare_model = prepare_model


def applied_strategy(trainer: Any) -> Strategy | None:
    """What the trainer really trains with: FSDP when sharded, DDP when wrapped, else None."""
    from torch.nn.parallel import DistributedDataParallel

    if is_sharded(getattr(trainer, "model", None)):
        return Strategy.FSDP
    return Strategy.DDP if isinstance(getattr(trainer, "model_wrapped", None), DistributedDataParallel) else None


def is_sharded(model: Any) -> bool:
    """Whether FSDP2 manages the model (what summary.json's `distributed` reports)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def local_parameter_bytes(model: Any) -> tuple[int, int]:
    """(frozen, trainable) bytes of parameters this process holds, as FSDP2 allocated its shards."""
    frozen = trainable = 0
    for p in model.parameters():
        n = _local_storage_bytes(p)
        if p.requires_grad:
            trainable += n
        else:
            frozen += n
    return frozen, trainable


def gather_process_memory(trainer: Any) -> list[ProcessMemory]:
    """What every process holds (parameters, optimizer state, peak RSS) and the node it ran on, gathered to all:
    collectives."""
    w = world()
    frozen, trainable = local_parameter_bytes(trainer.model)
    optimizer = sum(_local_storage_bytes(v) for state in _torch_optimizer(trainer.optimizer).state.values()
                    for v in state.values() if hasattr(v, "untyped_storage"))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    mine = [float(frozen), float(trainable), float(optimizer), float(rss)]
    table = all_reduce([v if r == w.rank else 0.0 for r in range(w.size) for v in mine])  # one row per rank
    nodes = all_gather_text(os.environ.get(NODE_ADDRESS_ENV) or socket.gethostname())
    return [ProcessMemory(rank=r, frozen_param_bytes=int(table[4 * r]), trainable_param_bytes=int(table[4 * r + 1]),
                          optimizer_bytes=int(table[4 * r + 2]), peak_rss_bytes=int(table[4 * r + 3]),
                          node=nodes[r])
            for r in range(w.size)]


def _local_storage_bytes(tensor: Any) -> int:
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return int(local.untyped_storage().nbytes())


def full_optimizer_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """The optimizer state gathered whole, keyed by parameter name (a collective: every process calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, _torch_optimizer(optimizer),
                                     options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: Any, optimizer: Any, state: dict[str, Any]) -> None:
    """Put a whole optimizer state (full_optimizer_state's) into this process's shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, _torch_optimizer(optimizer), optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))


def _torch_optimizer(optimizer: Any) -> Any:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it


class ShardingMixin(_TrainerBase):
    """The Trainer's saves and resume for a model shard_trainer sharded; a no-op otherwise."""

    sharded: bool = False

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not self.sharded:
            return super().save_model(output_dir, _internal_call)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # the trainable parameters gathered whole (frozen base weights are not part of an adapter checkpoint)
        state = get_model_state_dict(cast(Any, self.model), options=StateDictOptions(
            full_state_dict=True, cpu_offload=True, ignore_frozen_params=True))
        if self.args.should_save:
            self._save(output_dir, state_dict=state)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self.sharded:
            return super()._save_optimizer_and_scheduler(output_dir)
        import torch

        state = full_optimizer_state(self.model, self.optimizer)
        if self.args.should_save:
            torch.save(state, os.path.join(output_dir, OPTIMIZER_FILE))
            torch.save(cast(Any, self.lr_scheduler).state_dict(), os.path.join(output_dir, SCHEDULER_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if not self.sharded or checkpoint is None:
            return super()._load_optimizer_and_scheduler(checkpoint)
        import torch

        state = torch.load(os.path.join(checkpoint, OPTIMIZER_FILE), map_location="cpu", weights_only=True)
        load_full_optimizer_state(self.model, self.optimizer, state)
        cast(Any, self.lr_scheduler).load_state_dict(torch.load(os.path.join(checkpoint, SCHEDULER_FILE), weights_only=True))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        if not self.sharded:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        # shard_trainer loaded the checkpoint's adapter into the whole model before sharding it
