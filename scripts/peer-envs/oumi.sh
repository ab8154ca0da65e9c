# Oumi 0.9 with its `tune` extra (optuna): `oumi train -c FILE.yaml`, `oumi tune -c FILE.yaml`.
# Sourced by scripts/peer-env; pip is "${PIP[@]}", torch==$TORCH (the CPU build) is already installed.
OUMI_CORE="transformers==5.16.1 peft==0.19.1 trl==1.6.0 accelerate==1.15.0 datasets==4.8.5 optuna==4.9.0"
PINS="oumi==0.9 (--no-deps) $OUMI_CORE omegaconf==2.4.0.dev4 +oumi-0.9-runtime-deps-minus-torch/torchvision/torchao torch==$TORCH"

peer_install() {
    # Oumi 0.9's wheel requires torch<2.13 and torchvision<0.26: the CPU build of torch 2.13.0 is the only one here
    # and torchvision wheels do not load beside it (nothing in oumi imports torchvision at module level, and a text
    # LoRA run never reaches it). So oumi itself goes in with --no-deps, and every other runtime requirement of its
    # wheel METADATA is installed by hand below, within Oumi's own ranges, with torch held at $TORCH.
    "${PIP[@]}" --no-deps oumi==0.9
    # The training stack, pinned to the newest release inside Oumi's ranges (transformers<5.17, peft<0.20,
    # trl<1.7, datasets<4.8.6, accelerate<2) and the `tune` extra's optuna (<5.0).
    # Left out of Oumi's list: torchvision (above) and torchao<0.17,>=0.16 (imported only for quantization/QAT
    # configs; a build compiled for another torch is not wanted in an fp32 LoRA run).
    "${PIP[@]}" "torch==$TORCH" $OUMI_CORE \
        "omegaconf==2.4.0.dev4" "pydantic>=2.11,<2.14" "typer<0.25.2" "click<8.5.0" "numpy>=1.26,<2.4" \
        "pandas>=2.3,<3" "safetensors>=0.6,<0.9" "pillow>=11.3,<12.4" "protobuf>=6.32" "tqdm" "packaging" \
        "typing_extensions" "requests>=2.31,<3" "httpx>=0.27,<1" "jsonlines" "jsonschema>=4,<5" \
        "aiohttp>=3.12,<3.14" "aiofiles>=24.1,<26" "aioresponses>=0.7,<0.8" "backoff>=2.2.1,<2.3" "greenlet" \
        "hdrhistogram>=0.10,<0.11" "pexpect>=4.9,<4.10" "posthog>=7,<8" "pycares<6" "responses>=0.25,<0.27" \
        "tiktoken>=0.7,<1" "uvicorn<0.49" "tensorboard>=2.20,<2.21" "wandb>=0.21,<0.26" "mlflow>=3.1" \
        "skypilot>=0.12,<0.13" "lm_eval[wandb]>=0.4,<0.4.12"
}

peer_check() {
    "$DIR/bin/python" -c "import oumi, optuna, transformers, peft, trl; from oumi.train import train; from oumi.tune import tune; from importlib.metadata import version as v; print('oumi', v('oumi'), 'optuna', optuna.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__)"
    "$DIR/bin/oumi" --help >/dev/null
}
