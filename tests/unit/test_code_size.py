"""The size rules kept by a test rather than by habit: no module over 400 lines and no function over 60, in
src/tunelab, benchmarks/ and the Python scripts. A long function is a sign of several jobs in one; a long module,
of several modules. A function is counted from its `def` line to its last line (decorators and its docstring
included), so nesting a helper inside does not hide it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def python_files() -> list[Path]:
    files = [*(ROOT / "src" / "tunelab").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    scripts = [p for p in (ROOT / "scripts").iterdir() if p.is_file() and p.read_bytes()[:64].startswith(b"#!")
               and b"python" in p.read_bytes().split(b"\n", 1)[0]]
    return sorted(files + scripts)


def long_functions(source: str, limit: int) -> list[tuple[str, int]]:
    """(name, lines) of every function or method longer than `limit` lines."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > limit:
                out.append((node.name, lines))
    return out


def test_the_function_measure_counts_nested_and_async_functions():
    source = ("def outer():\n"
              "    async def inner():\n"
              + "".join(f"        a{i} = {i}\n" for i in range(5))
              + "        return 1\n"
              + "".join(f"    b{i} = {i}\n" for i in range(5)))
    # outer: its def, inner's 7 lines (def, 5 assignments, return), its own 5 assignments = 13
    assert dict(long_functions(source, 3)) == {"outer": 13, "inner": 7}
    assert long_functions(source, 13) == []


def test_the_files_measured_include_the_python_scripts():
    names = {p.name for p in python_files()}
    assert {"wheelhouse", "gpu_truth.py", "varlen.py"} <= names
    assert "vllm-env" not in names  # a bash script


def test_no_module_over_400_lines():
    big = {str(p.relative_to(ROOT)): n for p in python_files() if (n := p.read_text().count("\n")) > MAX_MODULE_LINES}
    assert big == {}, f"modules over {MAX_MODULE_LINES} lines: split them by job"


def test_no_function_over_60_lines():
    long = {f"{p.relative_to(ROOT)}:{name}": n for p in python_files()
            for name, n in long_functions(p.read_text(), MAX_FUNCTION_LINES)}
    assert long == {}, f"functions over {MAX_FUNCTION_LINES} lines: give each job a function of its own"
