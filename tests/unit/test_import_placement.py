"""Imports sit at the top of the module, where a reader sees the coupling, unless one of two reasons says otherwise
(issue 65): a **start-up cost** — importing it would load a heavy library (HEAVY: each takes from tenths of a second to
seconds to import here) that its module does not load already, or the module is on a command's start-up path (what
`tunelab --help` and the training job import before they run, and the command and job packages themselves: a command
imports its stage when it runs) — or an **optional dependency** probed inside `try`. A cycle is no reason: the import
graph has none, function-level imports counted (test_architecture.py). What the rule leaves inside functions is
counted and printed, so the figure is in the test's output."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "src" / "tunelab"
HEAVY = frozenset({"torch", "transformers", "peft", "trl", "accelerate", "datasets", "inspect_ai", "numpy", "scipy",
                   "pandas", "matplotlib", "statsmodels", "sklearn", "mlflow", "optuna", "vllm", "bitsandbytes",
                   "wandb", "mcp", "pyarrow", "ray", "grimp", "jinja2", "openai", "torchvision", "liger_kernel",
                   "flash_attn", "pynvml", "kernels", "playwright", "huggingface_hub", "PIL"})
START_UP = ("tunelab.entry", "tunelab.__main__", "tunelab.cli.main", "tunelab.train.job", "tunelab.train.launch")
COMMAND_PACKAGES = ("tunelab.cli", "tunelab.mcp", "tunelab.train")  # a command or the job: imports when it runs


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def top_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """What runs when the module is imported: module-level imports, in try / if blocks, not under TYPE_CHECKING."""
    out: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            out.append(node)
        elif isinstance(node, ast.If) and not _type_checking(node):
            stack += node.body + node.orelse
        elif isinstance(node, ast.Try):
            stack += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
    return out


def loaded(node: ast.Import | ast.ImportFrom, modules: set[str], here: str) -> list[str]:
    """The modules an import statement loads: tunelab's resolved to a module (or package), others as named."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        package = here.split(".") if (ROOT.parent / here.replace(".", "/") / "__init__.py").is_file() else here.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
    subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
    return subs or [base]


def own_module(name: str, modules: set[str]) -> str | None:
    parts = name.split(".")
    return next((m for i in range(len(parts), 0, -1) if (m := ".".join(parts[:i])) in modules), None)


def analyse(sources: dict[str, str]) -> tuple[dict[str, frozenset[str]], set[str], list[tuple[str, int, ast.AST, bool]]]:
    """(heavy libraries each module loads when imported, the start-up path, every import inside a function as
    (module, line, statement, inside try))."""
    trees = {m: ast.parse(s) for m, s in sources.items()}
    modules = set(trees)
    heavy: dict[str, set[str]] = {m: set() for m in trees}
    links: dict[str, set[str]] = {m: set() for m in trees}
    for m, tree in trees.items():
        for node in top_imports(tree):
            for name in loaded(node, modules, m):
                if name.split(".")[0] in HEAVY:
                    heavy[m].add(name.split(".")[0])
                elif (own := own_module(name, modules)) is not None and own != m:
                    links[m].add(own)
                    links[m].update(p for p in modules if own.startswith(p + ".") and p != m)  # its packages run first
    changed = True
    while changed:
        changed = False
        for m in trees:
            for n in links[m]:
                if not heavy[n] <= heavy[m]:
                    heavy[m] |= heavy[n]
                    changed = True
    start_up, todo = set(), [m for m in START_UP if m in trees]
    while todo:
        m = todo.pop()
        if m not in start_up:
            start_up.add(m)
            todo += links[m]
    inside: list[tuple[str, int, ast.AST, bool]] = []
    for m, tree in trees.items():
        _function_imports(m, tree, None, False, inside)
    return {m: frozenset(h) for m, h in heavy.items()}, start_up, inside


def _function_imports(m: str, node: ast.AST, func: ast.AST | None, in_try: bool, out: list) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            _function_imports(m, child, child, False, out)
        elif isinstance(child, ast.Import | ast.ImportFrom) and func is not None:
            out.append((m, child.lineno, child, in_try))
        elif not _type_checking(child):
            _function_imports(m, child, func, in_try or isinstance(child, ast.Try), out)


def misplaced(sources: dict[str, str]) -> tuple[list[str], dict[str, int]]:
    """Imports inside functions that no reason keeps there, as 'module:line', and the kept ones counted by reason."""
    heavy, start_up, inside = analyse(sources)
    modules = set(sources)
    bad, kept = [], {"optional dependency (try)": 0, "start-up path or command": 0, "heavy library": 0}
    for m, line, node, in_try in inside:
        if in_try:
            kept["optional dependency (try)"] += 1
        elif m in start_up or m.startswith(COMMAND_PACKAGES) or "__getattr__" in sources[m]:
            kept["start-up path or command"] += 1
        elif any((own := own_module(n, modules)) is not None and not heavy[own] <= heavy[m]
                 or own is None and n.split(".")[0] in HEAVY - heavy[m] for n in loaded(node, modules, m)):
            kept["heavy library"] += 1
        else:
            bad.append(f"{m}:{line}")
    return bad, kept


def test_the_rule_keeps_heavy_and_optional_imports_and_flags_the_rest():
    sources = {
        "tunelab.light": "import json\n\ndef f():\n    import yaml\n    from tunelab.big import g\n",
        "tunelab.big": "import torch\n\ndef g():\n    pass\n",
        "tunelab.opt": "def h():\n    try:\n        import bitsandbytes\n    except ImportError:\n        pass\n",
        "tunelab.heavy": "import torch\n\ndef k():\n    from tunelab.big import g\n    import transformers\n",
    }
    bad, kept = misplaced(sources)
    assert bad == ["tunelab.light:4", "tunelab.heavy:4"]  # yaml is light; big loads only torch, as heavy does
    assert kept == {"optional dependency (try)": 1, "start-up path or command": 0, "heavy library": 2}


def test_imports_sit_at_the_top_unless_start_up_or_an_optional_dependency_says_otherwise():
    sources = {module_name(p): p.read_text() for p in sorted(ROOT.rglob("*.py"))}
    bad, kept = misplaced(sources)
    print(f"imports left inside functions, by reason: {kept}")
    assert bad == []
