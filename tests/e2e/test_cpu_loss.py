"""On a CPU tunelab's trainer takes the model's own loss instead of TRL's fused LM head (train/trainer.py's
plain_loss: the fused head cost 15 % of an unpacked SmolLM2 step here and 38 % of a packed one, docs/benchmarks.md),
from the logits of the positions whose next token carries the loss only (models/loss_positions.py). Both must train
the same thing: the loss and every LoRA gradient of a real batch, each way, packed or not, against a cross-entropy
computed here by hand from the full logits."""

from __future__ import annotations

import pytest

from tunelab.scaffold.write import scaffold
from tunelab.train.trainer import plain_loss

pytestmark = pytest.mark.slow


def test_plain_loss_for_text_on_a_cpu_packed_or_not():
    assert plain_loss(cuda=False, vision=False)
    assert not plain_loss(cuda=True, vision=False)  # what the GPU memory simulator models
    assert not plain_loss(cuda=False, vision=True)


def _loss_and_grads(trainer, batch, plain: bool):
    trainer.plain_loss = plain
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=None)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def _same_loss_and_grads(trainer, batch, model_inputs):
    """The plain (kept-logits) loss and the fused head's, each with its LoRA gradients, against the full logits'
    cross-entropy by hand; the kept path must really have dropped positions."""
    import torch
    import torch.nn.functional as F

    from tunelab.models.loss_positions import kept_logits_inputs

    labels = batch["labels"]
    assert (labels == -100).any() and (labels != -100).any()  # the prompt masked, the answer kept
    kept = kept_logits_inputs(labels)
    assert 0 < kept["logits_to_keep"].numel() < labels.shape[1] - 1
    with torch.no_grad():
        logits = trainer.model(**model_inputs, use_cache=False).logits
    assert logits.shape[1] == labels.shape[1]
    by_hand = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                              ignore_index=-100)
    plain, plain_grads = _loss_and_grads(trainer, batch, plain=True)
    fused, fused_grads = _loss_and_grads(trainer, batch, plain=False)
    assert abs(plain.item() - by_hand.item()) <= 1e-5 and abs(fused.item() - by_hand.item()) <= 1e-5
    assert plain_grads.keys() == fused_grads.keys() and any("lora_A" in n for n in plain_grads)
    worst = max((plain_grads[n] - fused_grads[n]).abs().max().item() for n in plain_grads)
    scale = max(g.abs().max().item() for g in fused_grads.values())
    assert scale > 0 and worst <= 1e-4 * scale, (worst, scale)


def test_the_model_own_loss_equals_trl_fused_head_and_a_hand_cross_entropy(write_spec):
    from tunelab.train.trainer import build_trainer

    spec = write_spec(factors={"lora_rank": [8]}, controls=False, training={"batch_size": 4})
    trainer = build_trainer(scaffold(spec).runs[0])[0]
    assert trainer.plain_loss  # a CPU, unpacked rows
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    _same_loss_and_grads(trainer, batch, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})


def test_a_packed_batch_loss_is_the_same_each_way_rows_isolated(write_spec):
    """Packed rows (padding-free, positions restarting at each row, tunelab's varlen attention): the kept logits'
    loss equals the fused head's and the full logits' by hand."""
    from tunelab.train.trainer import build_trainer

    spec = write_spec(factors={"lora_rank": [8]}, controls=False,
                      training={"batch_size": 1, "packing": True, "max_seq_len": 256})
    trainer = build_trainer(scaffold(spec).runs[0])[0]
    assert trainer.plain_loss
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert batch["input_ids"].shape[0] == 1 and int((batch["position_ids"] == 0).sum()) > 1  # several rows packed
    _same_loss_and_grads(trainer, batch, {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]})


def test_a_validation_that_reads_its_loss_only_computes_the_kept_logits_and_the_same_loss(write_spec):
    """A validation step (prediction_step, no compute_metrics: transformers drops its logits) runs the LM head on the
    positions before answer tokens only (seen at the head's input) with the loss of the full logits by hand; one
    whose caller reads the logits still gets every position's."""
    import torch
    import torch.nn.functional as F

    from tunelab.train.trainer import build_trainer

    spec = write_spec(factors={"lora_rank": [8]}, controls=False, training={"batch_size": 4, "validation_every_steps": 5})
    trainer = build_trainer(scaffold(spec).runs[0])[0]
    assert trainer.plain_loss and trainer.compute_metrics is None
    batch = trainer._prepare_inputs(next(iter(trainer.get_eval_dataloader())))
    labels = batch["labels"]
    head_positions = []
    hook = trainer.model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: head_positions.append(args[0].shape[1]))
    trainer.model.eval()
    with torch.no_grad():
        full = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    by_hand = F.cross_entropy(full[:, :-1].reshape(-1, full.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
    loss_only, none, _ = trainer.prediction_step(trainer.model, dict(batch), prediction_loss_only=True)
    read, logits, _ = trainer.prediction_step(trainer.model, dict(batch), prediction_loss_only=False)
    hook.remove()
    answers = int(((F.pad(labels[:, 1:], (0, 1), value=-100) != -100).any(dim=0)).sum())
    assert head_positions == [labels.shape[1], answers, labels.shape[1]] and answers < labels.shape[1] - 1
    assert none is None and logits.shape == full.shape
    assert abs(loss_only.item() - by_hand.item()) <= 1e-5 and abs(read.item() - by_hand.item()) <= 1e-5


def test_a_steps_flops_count_is_transformers_formula_with_the_parameters_counted_once(write_spec):
    """total_flos per step: 6 × input tokens × the model's non-embedding parameters (counted here by hand from
    the model's own parameters), for micro-batches of two sizes, while the parameters are walked once in all."""
    from tunelab.train.trainer import build_trainer

    spec = write_spec(factors={"lora_rank": [8]}, controls=False, training={"batch_size": 4})
    trainer = build_trainer(scaffold(spec).runs[0])[0]
    base = trainer.model.get_base_model()
    embeddings = {id(p) for m in base.modules() if m.__class__.__name__ == "Embedding" for p in m.parameters()}
    by_hand = sum(p.numel() for p in base.parameters() if id(p) not in embeddings)
    walks = []
    count = trainer.model.num_parameters
    trainer.model.num_parameters = lambda **kw: walks.append(kw) or count(**kw)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    for ids in (batch["input_ids"], batch["input_ids"][:2, :5], batch["input_ids"]):
        assert trainer.floating_point_ops({**batch, "input_ids": ids}) == 6 * ids.numel() * by_hand
    assert walks == [{"exclude_embeddings": True}]


def test_the_jobs_trainer_runs_its_base_layers_by_the_chosen_kernel_to_the_same_loss(write_spec, monkeypatch, capsys):
    """build_trainer installs the CPU kernel models/cpu_linear.py chooses (here forced each way) on the base model's
    linear layers before its LoRA, says so in the job's log, and a packed batch's loss and every LoRA gradient come out
    the same either way (float32 both)."""
    from tunelab.models.cpu_linear import installed
    from tunelab.train.trainer import build_trainer

    spec = write_spec(factors={"lora_rank": [8]}, controls=False,
                      training={"batch_size": 1, "packing": True, "max_seq_len": 256})
    run = scaffold(spec).runs[0]
    got = {}
    for kernel in ("aten", "onednn"):
        monkeypatch.setenv("TUNELAB_CPU_MATMUL", kernel)
        trainer = build_trainer(run)[0]
        assert f"linear layers: {kernel} (TUNELAB_CPU_MATMUL={kernel})" in capsys.readouterr().out
        modules = dict(trainer.model.named_modules())
        bases = [m for n, m in modules.items() if n.endswith("q_proj.base_layer")]
        assert bases and all(installed(m) == (kernel == "onednn") for m in bases)
        assert not any(installed(m) for n, m in modules.items() if "lora_" in n)  # the LoRA came after
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        got[kernel] = _loss_and_grads(trainer, batch, plain=True)
    (loss_a, grads_a), (loss_o, grads_o) = got["aten"], got["onednn"]
    assert abs(loss_a.item() - loss_o.item()) <= 1e-5 * abs(loss_a.item())
    assert grads_a.keys() == grads_o.keys() and any("lora_A" in n for n in grads_a)
    scale = max(g.abs().max().item() for g in grads_a.values())
    assert max((grads_a[n] - grads_o[n]).abs().max().item() for n in grads_a) <= 1e-4 * scale
