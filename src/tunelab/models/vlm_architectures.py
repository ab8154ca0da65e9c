"""The config.json of well-known vision-language models, for planning without their files, in transformers' nested
format, transcribed from the published configs; only what decides shapes and positions is kept."""

from __future__ import annotations

from typing import Any

_QWEN_VL_IDS = {"image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
                "vision_end_token_id": 151653}

VLM_CONFIGS: dict[str, dict[str, Any]] = {
    "Qwen2.5-VL-7B": {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "tie_word_embeddings": False, **_QWEN_VL_IDS,
        "text_config": {
            "model_type": "qwen2_5_vl_text", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
            "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
            "max_position_embeddings": 128000, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
            "rope_scaling": {"type": "mrope", "rope_type": "default", "mrope_section": [16, 24, 24]},
            "sliding_window": None, "use_sliding_window": False, "max_window_layers": 28,
            "bos_token_id": 151643, "eos_token_id": 151645, "tie_word_embeddings": False},
        "vision_config": {
            "model_type": "qwen2_5_vl", "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
            "hidden_act": "silu", "in_channels": 3, "out_hidden_size": 3584, "patch_size": 14,
            "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2},
    },
    "Qwen3-VL-8B": {
        "architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl",
        "tie_word_embeddings": False, **_QWEN_VL_IDS,
        "text_config": {
            "model_type": "qwen3_vl_text", "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288,
            "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
            "max_position_embeddings": 262144, "rms_norm_eps": 1e-06, "rope_theta": 5000000,
            "rope_scaling": {"rope_type": "default", "mrope_interleaved": True, "mrope_section": [24, 20, 20]},
            "attention_bias": False, "bos_token_id": 151643, "eos_token_id": 151645, "tie_word_embeddings": False},
        "vision_config": {
            "model_type": "qwen3_vl", "depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
            "hidden_act": "gelu_pytorch_tanh", "in_channels": 3, "out_hidden_size": 4096, "patch_size": 16,
            "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [8, 16, 24]},
    },
}
