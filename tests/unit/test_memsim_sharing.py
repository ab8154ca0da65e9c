"""One simulated step serves every process count that runs it unchanged (simulator/sharding.py): one process and FSDP
over 2 are derived from the same cached one-device step, DDP's (its gradient buckets are in the step) is its own. The
figures are those the simulator gave before the step was cached apart (recorded from commit 0cb07b0, where each
process count was simulated on its own): sharing the step changes how often it runs, not what it answers."""

from __future__ import annotations

from tunelab.estimate.simulator import StepConfig, StepShape, run, simulate
from tunelab.spec import Strategy

DEEP = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 6,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 4096, "tie_word_embeddings": False,
        "max_position_embeddings": 4096}  # 6 layers: simulated at 2 and 4 and extrapolated
PACKED = StepShape(4, 256, packed=True)
CASES = {  # name: (config, shape, processes, strategy)
    "fsdp2-packed": (StepConfig(lora_rank=8), PACKED, 2, Strategy.FSDP),
    "one-packed": (StepConfig(lora_rank=8), PACKED, 1, None),
    "ddp2-accumulated": (StepConfig(lora_rank=4, gradient_accumulation_steps=2), StepShape(2, 128), 2, Strategy.DDP),
}
RECORDED = {  # bytes per device, from the simulator at 0cb07b0
    "fsdp2-packed": {"peak_allocated": 119836032, "peak_reserved": 141373824, "weights": 1939328, "trainable": 196608,
                     "optimizer": 414720, "ddp_buckets": 0, "activations": 116563456, "sharded_frozen": 1934976,
                     "sharded_trainable": 196608, "peak_phase": "step 2: backward"},
    "one-packed": {"peak_allocated": 121660416, "peak_reserved": 143198208, "weights": 3874304, "trainable": 393216,
                   "optimizer": 829440, "ddp_buckets": 0, "activations": 116563456, "sharded_frozen": None,
                   "sharded_trainable": None, "peak_phase": "step 2: backward"},
    "ddp2-accumulated": {"peak_allocated": 31237632, "peak_reserved": 33554432, "weights": 3874304,
                         "trainable": 196608, "optimizer": 436224, "ddp_buckets": 196608, "activations": 26533888,
                         "sharded_frozen": None, "sharded_trainable": None, "peak_phase": "step 2: backward"},
}


def test_one_simulated_step_serves_one_process_and_fsdp_and_answers_as_before(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))
    stepped: list[tuple[int, bool]] = []  # (layers, ddp) of every step actually simulated
    real = run._one_device_step

    def counted(model_config, c, shape, ddp, replay=True):
        stepped.append((model_config["num_hidden_layers"], ddp))
        return real(model_config, c, shape, ddp, replay)

    monkeypatch.setattr(run, "_one_device_step", counted)
    for name, (c, shape, processes, strategy) in CASES.items():
        got = simulate(DEEP, c, shape, processes, strategy)
        assert (got.processes, got.strategy) == (processes, strategy)
        assert {k: getattr(got, k) for k in RECORDED[name]} == RECORDED[name], name
    # FSDP's two depths, then nothing for one process (the same step), then DDP's own two
    assert stepped == [(2, False), (4, False), (2, True), (4, True)]


def test_a_config_with_rope_scaling_is_simulated_once_and_left_as_it_was(tmp_path, monkeypatch):
    """transformers writes into a config's nested rope_scaling (it adds rope_theta): given the caller's dict, that
    changed the cache key between looking the simulation up and storing it, so every Llama 3 simulation ran again.
    The same dict, twice, from fresh copies as `predict_peak` reads them: one step simulated, the dict unchanged."""
    import copy

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))
    llama3 = {**DEEP, "num_hidden_layers": 2, "rope_theta": 500000.0,
              "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 8192}}
    stepped = []
    real = run._one_device_step
    monkeypatch.setattr(run, "_one_device_step", lambda *a, **k: stepped.append(1) or real(*a, **k))
    given = copy.deepcopy(llama3)
    first = simulate(given, StepConfig(), PACKED)
    assert given == llama3
    assert simulate(copy.deepcopy(llama3), StepConfig(), PACKED) == first and stepped == [1]
