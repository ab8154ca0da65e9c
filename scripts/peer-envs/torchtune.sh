# torchtune 0.6.1 (no longer developed): `tune run lora_finetune_single_device --config FILE.yaml`.
# Sourced by scripts/peer-env; pip is "${PIP[@]}", torch==$TORCH (the CPU build) is already installed.
PINS="torchtune==0.6.1 torchdata==0.11.0 torchao==0.15.0 torch==$TORCH"

peer_install() {
    # torchtune has no torch pin but needs torchdata (0.11.0, the last release, no torch pin of its own) and a
    # torchao whose names its quantization module imports still exist: 0.16 removed some, 0.18 removed a module
    # `import torchtune` needs, so torchao 0.15.0. torchao 0.15 finds no compiled extension built for torch 2.13
    # and falls back to Python (a warning at import); nothing in a LoRA fp32 run calls its kernels.
    "${PIP[@]}" "torch==$TORCH" torchtune==0.6.1 torchdata==0.11.0 torchao==0.15.0
}

peer_check() {
    "$DIR/bin/python" -c "import torchtune, torchao, torchdata; print('torchtune', torchtune.__version__, 'torchao', torchao.__version__, 'torchdata', torchdata.__version__)"
}
