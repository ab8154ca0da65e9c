"""The memory simulator (estimate/simulator/) on tiny llama configs: each figure of `simulate()` is compared
with what hand arithmetic says the trainer's tensors cost on a GPU (the caching allocator rounds every
tensor up to a multiple of 512 bytes; `r512` below), or with a relation between two simulated steps that a
broken simulation would violate.

The tiny config (hidden 64, 4 heads of 16, 2 key/value heads: k and v project to 32; MLP 128; vocabulary
258, so that the embedding is not a multiple of 512 bytes) builds and steps in well under a second once
transformers, PEFT and TRL are imported (the first simulation pays those imports, a few seconds)."""

from __future__ import annotations

import pytest

from tunelab.estimate.simulator import StepConfig, StepShape, simulate

H, HEADS, KV_HEADS, INTER, VOCAB, LAYERS = 64, 4, 2, 128, 258, 2
HEAD_DIM = H // HEADS          # 16
KV = KV_HEADS * HEAD_DIM       # 32: out features of k_proj and v_proj
BF16, FP32 = 2, 4

LLAMA = {"model_type": "llama", "hidden_size": H, "intermediate_size": INTER, "num_hidden_layers": LAYERS,
         "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB,
         "tie_word_embeddings": True, "max_position_embeddings": 1024}
QV = ("q_proj", "v_proj")


def r512(nbytes: int) -> int:
    """A block of PyTorch's caching allocator: at least 512 bytes, a multiple of 512."""
    return max(512, -(-nbytes // 512) * 512)


def model(**overrides) -> dict:
    return {**LLAMA, **overrides}


def config(**overrides) -> StepConfig:
    return StepConfig(**{"lora_rank": 8, "lora_targets": QV, **overrides})


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """simulate() with an empty cache for this module, each distinct simulation run once and shared."""
    done: dict[str, object] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNELAB_CACHE", str(tmp_path_factory.mktemp("memsim-cache")))

        def run(m: dict, c: StepConfig, shape: StepShape, **kwargs):
            key = repr((sorted(m.items()), c, shape, sorted(kwargs.items())))
            if key not in done:
                done[key] = simulate(m, c, shape, **kwargs)
            return done[key]

        yield run


# -- hand counts of the model's tensors ---------------------------------------------------------------------
def linears(m: dict) -> list[tuple[int, int]]:
    """(out, in) of one decoder layer's linears: q, k, v, o, gate, up, down."""
    h, inter = m["hidden_size"], m["intermediate_size"]
    kv = m["num_key_value_heads"] * h // m["num_attention_heads"]
    return [(h, h), (kv, h), (kv, h), (h, h), (inter, h), (inter, h), (h, inter)]


def rotary_bytes(m: dict) -> int:
    # inv_freq (head_dim/2 fp32) and transformers' `original_inv_freq`, a second buffer holding a clone of it
    return 2 * r512(m["hidden_size"] // m["num_attention_heads"] // 2 * FP32)


def frozen_bf16_bytes(m: dict) -> int:
    """Frozen parameters and buffers of a bf16 llama with LoRA adapters beside (not replacing) its linears."""
    h, v, n = m["hidden_size"], m["vocab_size"], m["num_hidden_layers"]
    embeddings = r512(v * h * BF16) * (1 if m["tie_word_embeddings"] else 2)
    per_layer = sum(r512(o * i * BF16) for o, i in linears(m)) + 2 * r512(h * BF16)  # + 2 RMSNorm weights
    return embeddings + n * per_layer + r512(h * BF16) + rotary_bytes(m)  # + final norm


def lora_shapes(m: dict, rank: int) -> list[tuple[int, int]]:
    """Adapter weights on q_proj and v_proj in parameter order: per layer q.A (r×in), q.B (out×r), v.A, v.B."""
    (q_out, q_in), _, (v_out, v_in) = linears(m)[:3]
    return [(rank, q_in), (q_out, rank), (rank, v_in), (v_out, rank)] * m["num_hidden_layers"]


# -- a. frozen weights ----------------------------------------------------------------------------------------
def test_weights_are_the_frozen_bf16_parameters_and_buffers_in_allocator_blocks(sim):
    s = sim(LLAMA, config(), StepShape(2, 32))
    h, v, inter = H, VOCAB, INTER
    # spelled out for this config: embedding 258×64 bf16 = 33024 B -> 33280; per layer q 8192, k 4096,
    # v 4096, o 8192, gate/up/down 16384 each, two norms of 128 B -> 512 each; final norm 512; rotary 2×512
    per_layer = (2 * r512(h * h * 2) + 2 * r512(KV * h * 2) + 3 * r512(inter * h * 2) + 2 * r512(h * 2))
    expected = r512(v * h * 2) + LAYERS * per_layer + r512(h * 2) + 2 * r512(HEAD_DIM // 2 * 4)
    assert expected == 33280 + 2 * (8192 + 4096 + 4096 + 8192 + 3 * 16384 + 2 * 512) + 512 + 1024
    assert s.weights == expected == frozen_bf16_bytes(LLAMA)


def test_untied_head_adds_exactly_one_rounded_vocab_by_hidden_bf16_block(sim):
    tied = sim(LLAMA, config(), StepShape(2, 32))
    untied = sim(model(tie_word_embeddings=False), config(), StepShape(2, 32))
    assert untied.weights == frozen_bf16_bytes(model(tie_word_embeddings=False))
    assert untied.weights - tied.weights == r512(VOCAB * H * BF16) == 33280


# -- b. adapters and optimizer ----------------------------------------------------------------------------------
@pytest.mark.parametrize("rank", [8, 3])
def test_trainable_params_and_adamw_state_of_lora_on_q_and_v(sim, rank):
    s = sim(LLAMA, config(lora_rank=rank), StepShape(2, 32))
    # per layer r×(in+out) for q (64+64) and v (64+32)
    assert s.trainable_params == LAYERS * rank * ((H + H) + (H + KV))
    shapes = lora_shapes(LLAMA, rank)
    assert sum(a * b for a, b in shapes) == s.trainable_params
    adapters = sum(r512(a * b * FP32) for a, b in shapes)  # PEFT keeps adapters in fp32
    # fused AdamW: exp_avg and exp_avg_sq shaped like each parameter, plus an fp32 `step` scalar per
    # parameter tensor on the device (a 512-byte block each)
    assert s.optimizer == 2 * adapters + len(shapes) * 512


def test_trainable_bytes_are_the_adapters_in_allocator_blocks(sim):
    s = sim(LLAMA, config(lora_rank=8), StepShape(2, 32))
    # rank 8: q.A 8×64, q.B 64×8, v.A 8×64 fp32 = 2048 B each, v.B 32×8 fp32 = 1024 B; two layers
    assert s.trainable == sum(r512(a * b * FP32) for a, b in lora_shapes(LLAMA, 8)) == 2 * (3 * 2048 + 1024)


def test_unaligned_adapters_are_counted_in_blocks_and_not_in_weights(sim):
    s = sim(LLAMA, config(lora_rank=3), StepShape(2, 32))
    # rank 3: q.A 3×64 fp32 = 768 B -> 1024, q.B 768 -> 1024, v.A 768 -> 1024, v.B 32×3 fp32 = 384 -> 512
    expected_trainable = sum(r512(a * b * FP32) for a, b in lora_shapes(LLAMA, 3))
    assert expected_trainable == 2 * (3 * 1024 + 512)
    assert (s.weights, s.trainable) == (frozen_bf16_bytes(LLAMA), expected_trainable)


# -- c. micro-batch size ---------------------------------------------------------------------------------------
def test_doubling_the_micro_batch_doubles_activations_and_nothing_else(sim):
    two = sim(LLAMA, config(), StepShape(2, 64, padded=True))
    four = sim(LLAMA, config(), StepShape(4, 64, padded=True))
    assert (four.weights, four.trainable, four.optimizer) == (two.weights, two.trainable, two.optimizer)
    assert four.tokens == 2 * two.tokens
    # Every activation of a decoder step is proportional to the rows (hidden states, attention, the fused
    # head's token tiles) except a few token-independent blocks (adapter gradients and their autocast bf16
    # copies, scalars, RNG states: under 100 KB here against megabytes of activations) and the rounding of
    # each tensor to 512 bytes: a ratio within 10 % of 2 (it would be ~1 if activations did not depend on the
    # batch, ~4 if they were counted twice).
    assert four.activations / two.activations == pytest.approx(2, rel=0.10)
    # the peak rises by the activations' growth alone (weights, adapters and optimizer state are unchanged)
    assert four.peak_allocated - two.peak_allocated == four.activations - two.activations


# -- d. gradient checkpointing ---------------------------------------------------------------------------------
def test_gradient_checkpointing_keeps_only_each_layers_input(sim):
    shape = StepShape(2, 128, padded=False)
    act = {(n, gc): sim(model(num_hidden_layers=n), config(gradient_checkpointing=gc), shape).activations
           for n in (2, 4) for gc in (False, True)}
    per_layer = (act[4, False] - act[2, False]) // 2           # what one more layer stores without checkpointing
    per_layer_gc = (act[4, True] - act[2, True]) // 2          # ... and with it
    layer_input = r512(shape.tokens * H * BF16)                # the bf16 hidden state a checkpoint keeps: 32 KiB
    grads = sum(r512(a * b * FP32) for a, b in lora_shapes(LLAMA, 8)) // LAYERS  # one layer's adapter grads
    # with checkpointing a layer costs its saved input, plus at most its adapter gradients if the peak falls
    # after its backward
    assert layer_input <= per_layer_gc <= layer_input + grads
    assert per_layer > 4 * layer_input                         # without, far more (q, k, v, MLP, norms, ...)
    # Without checkpointing all 4 layers' activations are live at the backward's start; with it, the layers'
    # inputs and at most one layer being recomputed: the saving is at least 3 layers' activations minus the
    # input each of them still keeps.
    n = 4
    assert act[n, False] - act[n, True] >= (n - 1) * (per_layer - layer_input)


# -- e. packed micro-batches: the attention mask ---------------------------------------------------------------
L_PACK = 128
T = 2 * L_PACK  # tokens of the packed row


def test_packed_rows_with_sdpa_build_a_t_by_t_mask(sim):
    c = config(attention="sdpa")
    packed = sim(LLAMA, c, StepShape(2, L_PACK, packed=True))        # one row of T tokens, two sequences
    uniform = sim(LLAMA, c, StepShape(1, T, padded=False))           # one row of T tokens, one sequence
    assert packed.tokens == uniform.tokens == T
    diff = packed.activations - uniform.activations
    assert diff >= T * T  # at least the (1, 1, T, T) boolean block-diagonal mask
    # more precisely: with a mask SDPA takes the memory-efficient kernel, which converts it to a bf16 bias
    # (T×T×2 bytes, a new tensor per layer) and saves it for backward; the uniform row takes flash, no mask
    assert diff >= LAYERS * T * T * BF16


def test_packed_rows_with_flash_attention_2_have_no_t_squared_term(sim):
    c = config(attention="flash_attention_2")
    packed = sim(LLAMA, c, StepShape(2, L_PACK, packed=True))
    uniform = sim(LLAMA, c, StepShape(1, T, padded=False))
    # varlen FlashAttention-2 takes the sequence boundaries from position ids: no mask of any kind
    assert abs(packed.activations - uniform.activations) < T * T / 4


# -- f. QLoRA ----------------------------------------------------------------------------------------------------
def nf4_linear_bytes(out_features: int, in_features: int) -> int:
    """What bitsandbytes' Linear4bit keeps (NF4, double quantization), in allocator blocks."""
    n = out_features * in_features
    blocks = -(-n // 64)                                      # one absmax per 64 weights
    return (r512(-(-n // 2))                                  # two 4-bit values per byte
            + r512(blocks)                                    # absmax, quantized to uint8
            + r512(-(-blocks // 256) * FP32)                  # fp32 absmax of each 256 absmax blocks
            + 2 * r512(256 * FP32))                           # the code tables of both quantizations


def qlora_kept_bytes(m: dict, frozen_bytes: int) -> int:
    """The parameters a 4-bit base keeps unquantized, untied: embedding, lm_head, the 2 RMSNorms of each layer
    and the final norm (frozen_bytes each), plus the rotary buffers."""
    h, v, n = m["hidden_size"], m["vocab_size"], m["num_hidden_layers"]
    return 2 * r512(v * h * frozen_bytes) + (2 * n + 1) * r512(h * frozen_bytes) + rotary_bytes(m)


@pytest.mark.parametrize("frozen, frozen_bytes", [("float32", FP32), ("compute", BF16), ("auto", BF16)])
def test_qlora_weights_are_nf4_linears_plus_embeddings_norms_and_head(sim, frozen, frozen_bytes):
    m = model(tie_word_embeddings=False)
    s = sim(m, config(quantize="4bit", qlora_frozen_dtype=frozen), StepShape(2, 32))
    # float32: peft's prepare_model_for_kbit_training casts every bf16 parameter that is not 4-bit to fp32;
    # compute (what auto resolves to for bf16): they stay bf16, as loaded
    kept = qlora_kept_bytes(m, frozen_bytes)
    quantized = LAYERS * sum(nf4_linear_bytes(o, i) for o, i in linears(m))
    # by hand for one layer (packed + absmax + nested absmax + code tables): q and o (4096 weights)
    # 2048 + 512 + 512 + 2048 = 5120; k and v (2048) 1024 + 512 + 512 + 2048 = 4096; gate, up and down
    # (8192) 4096 + 512 + 512 + 2048 = 7168
    assert quantized == LAYERS * (5120 + 4096 + 4096 + 5120 + 3 * 7168)
    assert s.weights == kept + quantized
    # TRL casts the adapters of a quantized base to bf16
    assert s.trainable == sum(r512(a * b * BF16) for a, b in lora_shapes(m, 8))


# -- g. DDP --------------------------------------------------------------------------------------------------------
def test_ddp_adds_the_gradient_buckets_to_the_peak(sim):
    single = sim(LLAMA, config(), StepShape(2, 32))
    ddp = sim(LLAMA, config(), StepShape(2, 32), processes=2, strategy="ddp")
    # all adapters fp32, 14 KiB in all: under the 25 MiB cap, one flat bucket
    grad_bytes = sum(a * b * FP32 for a, b in lora_shapes(LLAMA, 8))
    assert ddp.ddp_buckets == r512(grad_bytes) == 14336
    assert (ddp.weights, ddp.trainable, ddp.optimizer, ddp.activations) == (
        single.weights, single.trainable, single.optimizer, single.activations)
    # the buckets live through the whole run and are all DDP adds to a device's step (run.py)
    assert ddp.peak_allocated - single.peak_allocated == ddp.ddp_buckets


def test_ddp_buckets_close_at_25_mib_in_parameter_order(sim):
    # 4 layers, hidden 128 (q, v in = 128; v out = 64), a large odd rank: per layer q.A, q.B, v.A of
    # 512·R bytes and v.B of 256·R bytes (not a multiple of 512)
    rank, cap = 3661, 25 * 2**20
    m = model(hidden_size=128, intermediate_size=256, num_hidden_layers=4)
    a, b = 512 * rank, 256 * rank
    # in parameter order a a a b | a a a b | a a a b | a a a (6912·R = 25 304 832 B) fit under the cap; the
    # last v.B (937 216 B) would pass it, so it starts a second bucket
    first, second = 3 * (3 * a + b) + 3 * a, b
    assert first <= cap < first + second
    single = sim(m, config(lora_rank=rank), StepShape(1, 16))
    ddp = sim(m, config(lora_rank=rank), StepShape(1, 16), processes=2, strategy="ddp")
    assert single.trainable_params * FP32 == first + second    # every trainable byte is in a bucket
    # each bucket a block: the first >= 10 MiB gets its own segment of 13×2 MiB, whose rest (> 1 MiB) is
    # split off; the second is a small-pool request (<= 1 MiB). One 26 242 048 B bucket would instead take a
    # 26 MiB segment whole (rest <= 1 MiB): 27 262 976 B.
    assert ddp.ddp_buckets == r512(first) + r512(second) == 25_305_088 + 937_472
    # At least the buckets on top of the single-process peak. Not exactly: with MiB-sized tensors, the buckets
    # change which cached blocks later tensors are carved from, and a large block keeps a rest of up to 1 MiB
    # unsplit, which counts as allocated (as in PyTorch).
    assert ddp.peak_allocated - single.peak_allocated >= ddp.ddp_buckets


def test_deep_models_are_extrapolated_from_two_depths_exactly(tmp_path, monkeypatch):
    """Deep models are simulated at 2 and 4 layers and extrapolated: against a full 6-layer simulation the
    allocated peak is the same byte count, the reserved one within the fragmentation of a sample."""
    from tunelab.estimate.simulator import run

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))
    deep = {**LLAMA, "num_hidden_layers": 6}
    for c, shape in ((config(lora_rank=8), StepShape(2, 64)),
                     (config(lora_rank=8, gradient_checkpointing=True), StepShape(2, 64, packed=True))):
        exact, _ = run._simulate_exact(deep, c, shape, 1, None)
        extrapolated = run._simulate(deep, c, shape, 1, None)
        assert extrapolated.peak_allocated == exact.peak_allocated
        assert (extrapolated.weights, extrapolated.trainable, extrapolated.optimizer) == (
            exact.weights, exact.trainable, exact.optimizer)
        assert abs(extrapolated.peak_reserved - exact.peak_reserved) <= 0.05 * exact.peak_reserved


def test_largest_micro_batch_matches_a_linear_scan(tmp_path, monkeypatch):
    """The search (three simulations, a fitted crossing, confirmation; or the limit tried at once when rows cost
    little next to the budget) finds the same micro-batch as trying every micro-batch in turn against the
    budget, for budgets and limits that take each path (the scan's simulations answer the searches from the
    cache)."""
    import json

    from tunelab.estimate.memory import MemoryInputs
    from tunelab.estimate.peak import largest_micro_batch, predict_peak, step_shape

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))
    model = tmp_path / "tiny"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({**LLAMA, "vocab_size": 4096, "hidden_size": 128}))
    inputs = MemoryInputs(dtype="bfloat16", lora_rank=8, lora_targets=("q_proj", "v_proj"))
    one = predict_peak(model, inputs, step_shape(1, 512, True, None)).required_gib
    two = predict_peak(model, inputs, step_shape(2, 512, True, None)).required_gib
    budget = one + 5.5 * (two - one)  # somewhere past micro-batch 6
    found = largest_micro_batch(model, inputs, budget, 512, True, None, limit=16)
    needs = {b: predict_peak(model, inputs, step_shape(b, 512, True, None)).required_gib for b in range(1, 17)}
    scan = max(b for b in range(1, 17) if needs[b] <= budget)
    assert found == scan and found >= 2
    for limit in (4, 8, 16):
        for budget in (needs[3], needs[8], needs[16], (needs[15] + needs[16]) / 2):
            scan = max(b for b in range(1, limit + 1) if needs[b] <= budget)
            assert largest_micro_batch(model, inputs, budget, 512, True, None, limit=limit) == scan, (limit, budget)
