# axolotl 0.21.0 for benchmarks/peers.py (sourced by scripts/peer-env; pip is "${PIP[@]}", torch is "$TORCH").
#
# Workarounds, each needed on this machine:
# - The wheel says Requires-Python >=3.12; this machine has only Python 3.11, and the CPU build of torch 2.13.0
#   here is a cp311 wheel (the index's 2.13.0 for cp312 is a CUDA build). Every module of the 0.21.0 wheel
#   compiles under 3.11 and the training path below runs, so it goes in with --ignore-requires-python.
# - --no-deps, then its dependencies by hand, pinned to the wheel's own pins where it has them (transformers
#   5.20.1, peft 0.21.2, trl 1.14.1, accelerate 1.15.0, datasets 5.0.1, ...), and to the versions that resolved
#   beside torch 2.13.0 where it has none. Left out, because they are GPU-only or not on the path of a LoRA SFT run
#   (no module of that path imports them): triton, xformers, liger-kernel, torchao, fla-core,
#   flash-linear-attention, kernels (hub kernels; without it bitsandbytes warns once that its 4-bit CPU kernel
#   is missing, which a fp32 LoRA never uses), gradio, trackio, tensorboard, lm_eval, s3fs/gcsfs/adlfs/ocifs,
#   mistral-common, openenv-core, optimum, hf_transfer, nvidia-ml-py, schedulefree, langdetect, immutabledict,
#   antlr4-python3-runtime.
# - Imported at module level on the train path, so installed although unused here: bitsandbytes 0.50.2 (its
#   manylinux wheel carries a CPU backend and imports without a GPU), wandb and evaluate (utils/callbacks),
#   numba (utils/samplers/multipack), posthog (telemetry; off by AXOLOTL_DO_NOT_TRACK=1).
# - pillow: imported by utils/schemas/multimodal.py but not declared by the wheel (other deps bring it upstream).
AXOLOTL_DEPS=(
    transformers==5.20.1 peft==0.21.2 tokenizers==0.23.3 accelerate==1.15.0 datasets==5.0.1 trl==1.14.1
    huggingface_hub==1.33.0 hf-xet==1.8.0 safetensors==0.8.0 packaging==26.0 typing-extensions==4.15.0
    pydantic==2.13.5 PyYAML==6.0.3 typer==0.25.1 python-dotenv==1.0.1 zstandard==0.22.0 posthog==6.7.11
    axolotl-contribs-lgpl==0.0.7 axolotl-contribs-mit==0.0.6 bitsandbytes==0.50.2 evaluate==0.4.1
    wandb==0.31.0 numba==0.68.1 numpy==2.4.6 scipy==1.17.1 pandas==3.1.1 pillow==13.0.0 addict==2.4.0
    fire==0.7.1 einops==0.8.2 colorama==0.4.6 fastcore==2.2.41 sentencepiece==0.2.3 requests==2.34.2 art==6.5
)
PINS="axolotl==0.21.0 (no-deps, ignore-requires-python) torch==$TORCH ${AXOLOTL_DEPS[*]}"

peer_install() {
    "${PIP[@]}" --no-deps --ignore-requires-python axolotl==0.21.0
    "${PIP[@]}" "torch==$TORCH" "${AXOLOTL_DEPS[@]}"
}

peer_check() {
    "$DIR/bin/python" -c "import importlib.metadata as m, axolotl.cli.train, axolotl.core.builders.causal; \
print('axolotl', m.version('axolotl'))"
}
