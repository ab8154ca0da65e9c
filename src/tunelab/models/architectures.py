"""The config.json facts of well-known base models, typed: the one source of the catalog's Architecture, the memory
simulator's model and `tunelab models random`, so a plan for a cluster can be made on a laptop and a random-init copy is
the real shape. Each entry is the base model's hub config.json cut to what decides the model (shapes, rope, norms,
biases, windows, tying, special ids), in the hub's key format."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.x long-context rope ("llama3": low and high frequencies scaled apart)."""

    rope_type: str
    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


# Keys a family's config.json states even when their value is null or false: a missing `sliding_window`
# would take transformers' default (Mistral: 4096), not the model's null.
FAMILY_KEYS: dict[str, tuple[str, ...]] = {
    "llama": ("attention_bias", "mlp_bias"),
    "mistral": ("sliding_window",),
    "qwen2": ("sliding_window", "use_sliding_window", "max_window_layers"),
    "qwen3": ("attention_bias", "sliding_window", "use_sliding_window", "max_window_layers"),
}
ARCHITECTURE_CLASS = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                      "qwen3": "Qwen3ForCausalLM"}


@dataclass(frozen=True)
class ModelFacts:
    """One model's config.json facts; field names are the config keys."""

    name: str
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool
    bos_token_id: int
    eos_token_id: int
    head_dim: int | None = None  # only where config.json states it (else hidden_size // heads)
    rope_scaling: RopeScaling | None = None
    attention_bias: bool = False  # llama, qwen3: bias on q, k, v, o (qwen2 has q, k, v biases by its type)
    mlp_bias: bool = False
    sliding_window: int | None = None
    use_sliding_window: bool = False
    max_window_layers: int | None = None

    def to_config(self) -> dict[str, Any]:
        """The config.json (hub format) of the real model: what `AutoConfig.for_model` builds it from."""
        facts = asdict(self)
        keep = FAMILY_KEYS.get(self.model_type, ())
        config: dict[str, Any] = {"architectures": [ARCHITECTURE_CLASS[self.model_type]]}
        for key, value in facts.items():
            if key == "name" or (key in _OPTIONAL and key not in keep):
                continue
            if key in ("head_dim", "rope_scaling") and value is None:
                continue
            config[key] = value
        return config


_OPTIONAL = ("attention_bias", "mlp_bias", "sliding_window", "use_sliding_window", "max_window_layers")


def _llama(name: str, layers: int, hidden: int, heads: int, inter: int, tied: bool, factor: float,
           head_dim: int | None = None) -> ModelFacts:
    """Llama 3.1 / 3.2: 8 kv heads, 128,256 tokens, rope θ 500,000 stretched by `factor` from 8,192 positions."""
    return ModelFacts(name, "llama", hidden, inter, layers, heads, 8, 128256, 131072, 500000.0, 1e-05, tied,
                      128000, 128001, head_dim=head_dim,
                      rope_scaling=RopeScaling("llama3", factor, 1.0, 4.0, 8192))


def _qwen25(name: str, layers: int, hidden: int, heads: int, kv: int, inter: int, vocab: int, tied: bool,
            positions: int, window_layers: int) -> ModelFacts:
    """Qwen2.5: q/k/v biases, rope θ 1e6, a sliding window stated but off (use_sliding_window false)."""
    return ModelFacts(name, "qwen2", hidden, inter, layers, heads, kv, vocab, positions, 1000000.0, 1e-06, tied,
                      151643, 151643, sliding_window=positions, max_window_layers=window_layers)


def _qwen3(name: str, layers: int, hidden: int, heads: int, inter: int, tied: bool) -> ModelFacts:
    """Qwen3 (dense): 8 kv heads of 128, RMSNorm on q and k per head, no biases, 40,960 positions."""
    return ModelFacts(name, "qwen3", hidden, inter, layers, heads, 8, 151936, 40960, 1000000.0, 1e-06, tied,
                      151643, 151645, head_dim=128, max_window_layers=layers)


KNOWN_FACTS: tuple[ModelFacts, ...] = (
    _llama("Llama-3.2-1B", 16, 2048, 32, 8192, True, 32.0, head_dim=64),
    _llama("Llama-3.2-3B", 28, 3072, 24, 8192, True, 32.0, head_dim=128),
    _llama("Llama-3.1-8B", 32, 4096, 32, 14336, False, 8.0),
    _llama("Llama-3.1-70B", 80, 8192, 64, 28672, False, 8.0),
    _qwen25("Qwen2.5-0.5B", 24, 896, 14, 2, 4864, 151936, True, 32768, 24),
    _qwen25("Qwen2.5-1.5B", 28, 1536, 12, 2, 8960, 151936, True, 131072, 21),
    _qwen25("Qwen2.5-3B", 36, 2048, 16, 2, 11008, 151936, True, 32768, 36),
    _qwen25("Qwen2.5-7B", 28, 3584, 28, 4, 18944, 152064, False, 131072, 28),
    _qwen3("Qwen3-0.6B", 28, 1024, 16, 3072, True),
    _qwen3("Qwen3-4B", 36, 2560, 32, 9728, True),
    _qwen3("Qwen3-8B", 36, 4096, 32, 12288, False),
    # Mistral-7B-v0.3 (v0.1/v0.2 had 32,000 tokens; v0.1 a 4,096 sliding window): no window, rope θ 1e6
    ModelFacts("Mistral-7B", "mistral", 4096, 14336, 32, 32, 8, 32768, 32768, 1000000.0, 1e-05, False, 1, 2),
)


def known_key(model: str) -> str:
    """The catalog key of a model name: lower case, without org/, -Instruct or -vN (Mistral-7B-Instruct-v0.3)."""
    return re.sub(r"-(instruct|v\d+(\.\d+)*)", "", str(model).split("/")[-1].lower())


def known_facts(model: str) -> ModelFacts | None:
    """A well-known model's facts by name, or None."""
    return next((f for f in KNOWN_FACTS if f.name.lower() == known_key(model)), None)
