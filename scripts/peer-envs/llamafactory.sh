# LLaMA-Factory 0.9.5 (`llamafactory-cli train FILE.yaml`), sourced by scripts/peer-env.
#
# Workarounds, each with its reason:
# 1. `pip install --no-deps llamafactory==0.9.5`, then the dependencies its LoRA SFT path imports, pinned by hand
#    inside its own ranges (pyproject: transformers <=5.6.0, datasets <=4.0.0, accelerate <=1.11, peft <=0.18.1,
#    trl <=0.24). Its metadata requires torchvision and torchaudio, whose index wheels do not load beside the
#    CPU build of torch 2.13; a normal install would pull them (and could replace torch).
#    transformers is 5.6.0, the newest it allows: the model dirs were written by transformers 5 (tokenizer_class
#    "TokenizersBackend"), which transformers 4.x cannot load.
# 2. Left out on purpose (required by its metadata, never imported by `llamafactory-cli train` for a text LoRA
#    SFT): gradio (web UI), fastapi/uvicorn/sse-starlette (API server), modelscope/hf-transfer (hub downloads),
#    av (video), torchdata (only its v1 trainer), torchvision, torchaudio.
# 3. torchaudio: llamafactory/data/mm_plugin.py line 30 has an unguarded `import torchaudio`, reached from the
#    chat-template module even for text-only data; its only uses (torchaudio.load / .functional.resample, lines
#    316-321) decode audio inputs, which this job never has. A stub package `torchaudio/__init__.py` is written
#    into THIS env's site-packages only (no dist-info, so pip and importlib.metadata do not list it and the
#    uninstall in scripts/peer-env leaves it); any attribute use raises ImportError saying it is a stub.
#    Side effect, checked: transformers 5.6's is_torchaudio_available() only asks importlib.util.find_spec, so it
#    says True; it gates audio feature extractors and speech pipelines alone, never loaded by a text LoRA run.
#    datasets 4.0 decodes audio with torchcodec and does not look for torchaudio.
# 4. At run time the benchmark sets DISABLE_VERSION_CHECK=1 (thread_env), which skips its own version check.
LF_VERSION="0.9.5"
# Exact pins for everything on the numeric path (what resolved on 2026-11-26); the rest only load configs/plots.
LF_DEPS=(
    "transformers==5.6.0" "datasets==4.0.0" "accelerate==1.11.0" "peft==0.18.1" "trl==0.24.0"
    "tokenizers==0.22.2" "safetensors==0.8.0" "huggingface-hub==1.33.0" "numpy==2.4.6" "tyro==0.8.14"
    "pandas" "scipy" "einops" "sentencepiece" "tiktoken" "protobuf" "pydantic" "pyyaml" "omegaconf" "fire"
    "matplotlib" "packaging"
)
PINS="llamafactory==$LF_VERSION --no-deps; ${LF_DEPS[*]}; torchaudio=stub; torch==$TORCH"

peer_install() {
    "${PIP[@]}" "torch==$TORCH" "${LF_DEPS[@]}"
    "${PIP[@]}" --no-deps "llamafactory==$LF_VERSION"
    local site
    site="$("$DIR/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    mkdir -p "$site/torchaudio"
    cat > "$site/torchaudio/__init__.py" <<'EOF'
"""A stub written by tunelab's scripts/peer-envs/llamafactory.sh, not the real torchaudio.

LLaMA-Factory 0.9.5 imports torchaudio unguarded (data/mm_plugin.py) even for text-only training, and no
torchaudio wheel loads beside the CPU build of torch 2.13. Text training never touches it; any use raises."""


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    raise ImportError(f"torchaudio.{name}: torchaudio is a stub in this environment (no audio support)")
EOF
}

peer_check() {
    "$DIR/bin/python" - <<'EOF'
import importlib.metadata as md
import llamafactory.data.mm_plugin  # the unguarded torchaudio import
from llamafactory.train.tuner import run_exp  # noqa: F401  (the whole train path imports)
print("llamafactory", md.version("llamafactory"), "transformers", md.version("transformers"),
      "peft", md.version("peft"), "trl", md.version("trl"), "datasets", md.version("datasets"))
EOF
}
