"""Generated files: fast YAML that reads back exactly, atomic writes, tolerant reads."""

import math

from tunelab.fsutil import atomic_write_text, dump_yaml, load_yaml, read_jsonl

TRICKY = ["", "yes", "No", "null", "~", "true", "1.5", "1e3", "0x10", "-", "a: b", "#x", "x #y", "'q'", '"dq"',
          "multi\nline", "tab\there", "café", "emoji 😀", "\u2028sep", "/abs/path", "rel/path.json", "{input}",
          "[list]", "@at", "%pct", "!bang", "*star", "&amp", "|pipe", ">gt", " lead", "trail ", ".inf", "nan"]


def test_dump_yaml_round_trips_tricky_values():
    data = {
        "strings": {f"k{i}": s for i, s in enumerate(TRICKY)},
        "numbers": {"i": 0, "neg": -3, "big": 10**20, "f": 0.1, "tiny": 1e-05, "huge": 1e20, "inf": math.inf,
                    "ninf": -math.inf},
        "flags": {"t": True, "f": False, "none": None},
        "lists": {"empty": [], "scalars": [1, "two", 3.0, None, True, "a, b"], "dicts": [{"a": 1, "b": [2]}, {}]},
        "empty": {},
        "odd key: yes": 1,
    }
    back = load_yaml(dump_yaml(data))
    assert back == data
    nan = load_yaml(dump_yaml({"x": math.nan}))["x"]
    assert math.isnan(nan)


def test_atomic_write_skips_identical_content_and_keeps_mode(tmp_path):
    p = atomic_write_text(tmp_path / "a.txt", "hello")
    assert oct(p.stat().st_mode & 0o777) != oct(0o600)
    before = p.stat().st_mtime_ns
    atomic_write_text(p, "hello")
    assert p.stat().st_mtime_ns == before
    atomic_write_text(p, "world", durable=False)
    assert p.read_text() == "world" and not list(tmp_path.glob(".*tmp"))


def test_read_jsonl_skips_a_truncated_last_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert [r["step"] for r in read_jsonl(p)] == [1, 2]
