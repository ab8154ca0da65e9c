# lm-eval (EleutherAI lm-evaluation-harness) 0.4.13 with its `hf` extra, sourced by scripts/peer-env.
# The `hf` extra has no upper pins, so it installs beside torch 2.13 without workarounds. transformers, peft,
# accelerate and datasets are pinned to tunelab's own versions (its venv): the comparison is of the evaluation
# harnesses, so the model code that generates (and its numerics) is the same on both sides.
LMEVAL=0.4.13
TRANSFORMERS=5.23.0
PEFT=0.21.2
ACCELERATE=1.15.0
DATASETS=5.2.0
PINS="lm-eval[hf]==$LMEVAL transformers==$TRANSFORMERS peft==$PEFT accelerate==$ACCELERATE datasets==$DATASETS torch==$TORCH"

peer_install() {
    "${PIP[@]}" "lm-eval[hf]==$LMEVAL" "transformers==$TRANSFORMERS" "peft==$PEFT" "accelerate==$ACCELERATE" \
        "datasets==$DATASETS" "torch==$TORCH"
}

peer_check() {
    "$DIR/bin/python" -c "import lm_eval, transformers, peft; from lm_eval.models.huggingface import HFLM; \
print('lm-eval', lm_eval.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
}
