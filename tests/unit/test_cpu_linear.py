"""A CPU's linear layers through oneDNN (models/cpu_linear.py): the products and gradients against float64 ones
computed by hand, the fallbacks, the choice from injected timings, the override, and a LoRA step both ways."""

from __future__ import annotations

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.models import cpu_linear
from tunelab.models.cpu_linear import OneDnnLinear, accelerate, choose, install, installed
from tunelab.models.linear_kernel import ENV, KernelChoice, MatmulKernel, linear_mode, pick

ONEDNN = KernelChoice(MatmulKernel.ONEDNN, "test")
TOL = 1e-5  # float32 rounding over a few hundred terms, relative to the largest entry


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return float((got.detach().double() - want).abs().max()) <= TOL * float(want.abs().max())


def test_products_and_every_gradient_match_float64_by_hand() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 50, 192, generator=gen, requires_grad=True)
    w = torch.randn(320, 192, generator=gen, requires_grad=True)
    b = torch.randn(320, generator=gen, requires_grad=True)
    g = torch.randn(3, 50, 320, generator=gen)
    y = OneDnnLinear.apply(x, w, b)
    y.backward(g)
    x64, w64, g64 = x.detach().double(), w.detach().double(), g.double()
    assert y.shape == (3, 50, 320)
    assert _close(y, x64 @ w64.T + b.detach().double())
    assert _close(x.grad, g64 @ w64)
    assert _close(w.grad, g64.reshape(-1, 320).T @ x64.reshape(-1, 192))
    assert _close(b.grad, g64.sum((0, 1)))


def test_a_frozen_weight_gets_no_gradient_and_the_input_its_own() -> None:
    lin = torch.nn.Linear(96, 160, bias=False).requires_grad_(False)
    assert install(lin, ONEDNN) == 1 and installed(lin)
    x = torch.randn(40, 96, requires_grad=True)
    lin(x).pow(2).sum().backward()
    w64 = lin.weight.double()
    assert lin.weight.grad is None
    assert _close(x.grad, 2 * (x.detach().double() @ w64.T) @ w64)


def test_the_same_input_gives_the_same_bits_twice() -> None:
    x, w = torch.randn(64, 256), torch.randn(512, 256)
    assert torch.equal(OneDnnLinear.apply(x, w, None), OneDnnLinear.apply(x, w, None))


def test_an_installed_layer_reads_its_weight_at_every_call_as_a_merged_adapter_changes_it() -> None:
    lin = torch.nn.Linear(64, 64)
    keys = set(lin.state_dict())
    install(lin, ONEDNN)
    x = torch.randn(8, 64)
    with torch.no_grad():
        lin.weight.add_(torch.ones_like(lin.weight))  # what a merge does, in place
        got = lin(x)
    assert _close(got, x.double() @ lin.weight.double().T + lin.bias.double())
    assert set(lin.state_dict()) == keys


def test_other_dtypes_empty_inputs_and_autocast_take_pytorchs_own_linear() -> None:
    lin = torch.nn.Linear(32, 48).to(torch.bfloat16)
    assert install(lin, ONEDNN) == 0  # a bfloat16 layer is left alone
    f32 = torch.nn.Linear(32, 48)
    install(f32, ONEDNN)
    assert f32(torch.randn(0, 32)).shape == (0, 48)
    x = torch.randn(5, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert f32(x).dtype == torch.bfloat16  # autocast's own product, not oneDNN's float32 one
    assert torch.equal(f32(x.double().float()), OneDnnLinear.apply(x, f32.weight, f32.bias))


def test_timings_choose_onednn_only_past_the_gain_it_must_show() -> None:
    assert pick([2.0, 2.2, 1.9], [1.0, 1.1, 0.9]) == (MatmulKernel.ONEDNN, 2.0)
    kernel, gain = pick([1.00, 1.01, 0.99], [0.98, 0.97, 0.99])
    assert kernel is MatmulKernel.ATEN and gain == pytest.approx(1.0 / 0.98)


def test_the_override_is_obeyed_and_a_bad_one_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "aten")
    assert choose(576, 1536) == KernelChoice(MatmulKernel.ATEN, f"{ENV}=aten")
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    assert accelerate(model) == KernelChoice(MatmulKernel.ATEN, f"{ENV}=aten") and not installed(model[0])
    monkeypatch.setenv(ENV, "mkl")
    with pytest.raises(TunelabError, match=ENV) as err:
        linear_mode()
    assert err.value.field == ENV


def test_a_kernel_that_fails_or_disagrees_is_never_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuses(*_: object) -> torch.Tensor:
        raise RuntimeError("no such op")

    monkeypatch.setattr(cpu_linear, "_onednn", refuses)
    got = cpu_linear._time_both(16, 16)
    assert got["kernel"] == "aten" and "not callable" in got["why"]
    monkeypatch.setattr(cpu_linear, "_onednn", lambda x, w, b: torch.nn.functional.linear(x, w) * 1.01)
    got = cpu_linear._time_both(16, 16)
    assert got["kernel"] == "aten" and "differs" in got["why"]


def test_a_lora_step_through_onednn_matches_pytorchs_own(tiny_model) -> None:
    """The job's path in small: a PEFT LoRA model on the tiny model, one forward and backward each way from the same
    weights; the loss and every LoRA gradient agree to float32 rounding."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    def step(onednn: bool) -> tuple[float, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
        if onednn:
            assert install(base, ONEDNN) > 0
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                init_lora_weights=False))
        ids = torch.randint(0, 200, (2, 33), generator=torch.Generator().manual_seed(0))
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return float(loss), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    loss_a, grads_a = step(False)
    loss_o, grads_o = step(True)
    assert loss_o == pytest.approx(loss_a, rel=1e-5)
    assert grads_o.keys() == grads_a.keys() and grads_a
    for name, grad in grads_a.items():
        assert torch.allclose(grads_o[name], grad, rtol=1e-3, atol=1e-6 * float(grad.abs().max())), name
