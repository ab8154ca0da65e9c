"""What the fuzz targets (fuzz_targets.py) draw: random values shaped like a spec's or a row's keys, and a valid
input mutated byte by byte or node by node."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

SPEC_KEYS = ["name", "models", "datasets", "prompt", "factors", "training", "eval", "resources", "path", "split",
             "format", "tasks", "lora_rank", "epochs", "batch_size", "naming", "eval_only", "controls", "input_field"]
ROW_KEYS = ["input", "output", "messages", "prompt", "completion", "question", "role", "content"]
# prompt templates as the spec admits them (malformed ones are the spec target's: rejected there)
TEMPLATES = [None, "Capitalize: {input}", "{question}", "{input} {output}", "Q: {input}\nA:", "{prompt}"]

# ------------------------------------------------------------------------------------------- values
_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
            | st.text(max_size=12) | st.sampled_from(["{input}", "{", "}", "\x00", "auto", "train", "-1", "1e400",
                                                      "../..", "~", "chat", "exact_match", "last", "all"]))
values = st.recursive(_scalars, lambda kids: st.lists(kids, max_size=4)
                      | st.dictionaries(st.sampled_from(SPEC_KEYS + ROW_KEYS) | st.text(max_size=6), kids,
                                        max_size=4), max_leaves=12)


@st.composite
def mutated_bytes(draw, base: bytes) -> bytes:
    """Byte-level damage: cut off, slices deleted, bytes replaced or inserted (non-UTF-8 and NUL too)."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "delete", "replace", "insert", "duplicate_line"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "truncate":
            del data[at:]
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif op == "replace" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from(
                [b"\x00", b"\xff\xfe", b"{", b"}", b"\n", b":", b"- ", b"'", b'"', b"e", b"..", b"nan"]))
        else:
            lines = bytes(data).split(b"\n")
            i = at % len(lines)
            data = bytearray(b"\n".join(lines[:i + 1] + lines[i:]))
    return bytes(data)


@st.composite
def mutated_tree(draw, base: Any) -> Any:
    """Structure-level damage: a node replaced by a random value, a key dropped or an unknown key added."""
    tree = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        node, key = _random_node(draw, tree)
        op = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
        if node is None:
            return draw(values)
        if op == "replace":
            node[key] = draw(values)
        elif op == "drop" and isinstance(node, dict):
            node.pop(key, None)
        elif isinstance(node, dict):
            node[draw(st.sampled_from(SPEC_KEYS) | st.text(max_size=6))] = draw(values)
    return tree


def _random_node(draw, tree: Any) -> tuple[Any, Any]:
    """(container, key) of a random position in the tree; (None, None) for the root."""
    paths: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for k, v in items:
            paths.append((node, k))
            walk(v)

    walk(tree)
    return draw(st.sampled_from(paths)) if paths else (None, None)

