"""The shape docs/architecture.md promises, checked on the import graph (grimp reads every import
statement, function-level ones included): packages import one way (LAYERS), no cycles, the job package
used by nobody else, the run directory contract below everything that reads it, the core reaching the
executors only through their interface, and the report free of inspect-ai."""

import subprocess
import sys

import grimp
import pytest

PACKAGE = "tunelab"


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(PACKAGE, cache_dir=None)


def imports_of(graph: grimp.ImportGraph) -> dict[str, set[str]]:
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle_and_only_that():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(edges) == [["a", "b", "c"]]


def test_no_module_cycle_even_counting_function_level_imports(graph):
    assert cycles(imports_of(graph)) == []


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_package_cycle(graph):
    edges: dict[str, set[str]] = {}
    for module, targets in imports_of(graph).items():
        edges.setdefault(package_of(module), set()).update(
            package_of(t) for t in targets if package_of(t) != package_of(module))
    assert cycles(edges) == []


# The direction, top to bottom: a package imports only packages of the layers below its own (and the
# foundation); packages of one layer are independent of one another. It follows the pipeline (spec -> plan
# -> scaffold -> execute -> train -> rundir -> ledger -> evaluate -> report) the way the code uses it: a
# stage imports what it consumes or calls, never what consumes it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__main__",),
    ("entry",),  # the `tunelab` command: `train RUN_YAML` straight to the job, the rest to the app
    ("cli",),  # the commands
    ("mcp",),  # the assistant's server (`tunelab mcp`)
    ("demo", "adopt", "init"),  # drive several stages for a person
    ("report", "export", "tune"),  # read what a sweep left (ledger results, run directories); the LR search
    ("scaffold",),  # writes what plan laid out, and the executor's job scripts
    ("plan",),  # designs and checks the runs, and composes what forecast and estimate predict of them
    ("forecast",),  # time: each run's, each evaluation's and job start's, the sweep's makespan, the deadline's levers
    ("estimate", "evaluate"),  # memory (the simulator, batch, disk) and the probe, a job through an executor; the evaluator
    ("execute", "ingest"),  # jobs through the Executor interface, the coordinator fills the ledger; foreign logs
    ("ledger", "train"),  # the experiment ledger and the user's history; the job (which never writes SQLite)
    ("rundir",),  # the run directory contract
)
# Below every layer: the spec and the shared helpers; they import no layer (among themselves: no cycles).
FOUNDATION = frozenset({"spec", "data", "models", "stats", "catalog", "host", "errors", "fsutil", "console", "faults",
                        "diskcache", "jobimports", "compat", "userconfig", "wheelhouse", "vocabulary", "__init__"})


def package_edges(graph: grimp.ImportGraph) -> dict[tuple[str, str], list[str]]:
    """(importing package, imported package) -> the module imports behind it, as 'a.b -> c.d'."""
    edges: dict[tuple[str, str], list[str]] = {}
    for module, targets in imports_of(graph).items():
        for target in targets:
            a, b = short_package(module), short_package(target)
            if a != b:
                edges.setdefault((a, b), []).append(f"{module} -> {target}")
    return edges


def short_package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def illegal_imports(edges: dict[tuple[str, str], list[str]]) -> list[str]:
    """Every import against LAYERS: upward, sideways within a layer, or from the foundation into a layer."""
    rank = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
    bad = []
    for (a, b), where in sorted(edges.items()):
        if b in FOUNDATION:
            continue
        if a in FOUNDATION or rank[b] <= rank[a]:
            bad += where
    return bad


def test_every_package_has_its_place(graph):
    placed = {pkg for layer in LAYERS for pkg in layer} | FOUNDATION
    assert {short_package(m) for m in graph.modules} - placed == set()
    assert not {pkg for layer in LAYERS for pkg in layer} & FOUNDATION


def test_the_layer_rule_catches_an_upward_and_a_sideways_import():
    edges = {("plan", "spec"): ["ok"], ("plan", "execute"): ["ok too"], ("report", "plan"): ["ok: lower"],
             ("execute", "plan"): ["up"], ("report", "export"): ["sideways"], ("fsutil", "rundir"): ["foundation up"]}
    assert illegal_imports(edges) == ["up", "foundation up", "sideways"]


def test_packages_import_one_way(graph):
    assert illegal_imports(package_edges(graph)) == []


# What the core (plan, scaffold, forecast, estimate, export, report, evaluate) may import of execute/: the interface, the
# registry by name, and the policies it shares with it; never an executor's implementation.
EXECUTE_SEAM = frozenset({"tunelab.execute.executor", "tunelab.execute.executors", "tunelab.execute.schedule",
                          "tunelab.execute.retry", "tunelab.execute.claims", "tunelab.execute.failures",
                          "tunelab.execute.attempts"})  # the verdicts recorded (the report's retries)
CORE = ("plan", "scaffold", "forecast", "estimate", "export", "report", "evaluate")


def test_the_core_reaches_executors_only_through_the_interface(graph):
    peeking = sorted(f"{m} -> {t}" for m in graph.modules if short_package(m) in CORE
                     for t in graph.find_modules_directly_imported_by(m)
                     if t.startswith("tunelab.execute.") and t not in EXECUTE_SEAM)
    assert peeking == []


def executor_name_comparisons(source: str, names: set[str]) -> list[int]:
    """Lines of `source` comparing something with an executor's name (==, !=, in a literal tuple/list/set)."""
    import ast

    def constants(node: ast.expr) -> list[object]:
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return [c for e in node.elts for c in constants(e)]
        return [node.value] if isinstance(node, ast.Constant) else []

    return sorted(node.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Compare)
                  and any(c in names for side in (node.left, *node.comparators) for c in constants(side)))


def test_the_name_finder_finds_comparisons_and_only_those():
    code = 'a = x == "slurm"\nb = "local" != y\nc = z in ("slurm", "k")\nd = f("slurm")\ne = {"local": 1}\n'
    assert executor_name_comparisons(code, {"slurm", "local"}) == [1, 2, 3]


def test_no_executor_name_is_compared_outside_execute():
    from pathlib import Path

    from tunelab.execute.executors import EXECUTORS

    root = Path(__import__(PACKAGE).__file__).parent
    found = {str(path.relative_to(root)): lines for path in sorted(root.rglob("*.py"))
             if path.parent.name != "execute" and (lines := executor_name_comparisons(path.read_text(), set(EXECUTORS)))}
    assert found == {}


def test_nothing_outside_train_imports_train(graph):
    outside = {m for m in graph.modules if not m.startswith(f"{PACKAGE}.train")}
    importers = sorted(m for m in outside
                       if any(t.startswith(f"{PACKAGE}.train") for t in graph.find_modules_directly_imported_by(m)))
    assert importers == []


def test_the_training_job_never_reaches_evaluation_or_the_cli(graph):
    for forbidden in (f"{PACKAGE}.evaluate", f"{PACKAGE}.cli", f"{PACKAGE}.report"):
        chains = graph.find_shortest_chains(importer=f"{PACKAGE}.train", imported=forbidden, as_packages=True)
        assert chains == set(), f"train reaches {forbidden}: {sorted(chains)}"


def test_the_run_directory_contract_reads_nothing_above_it(graph):
    above = ("plan", "scaffold", "execute", "train", "ledger", "evaluate", "report", "cli", "export")
    for layer in above:
        chains = graph.find_shortest_chains(importer=f"{PACKAGE}.rundir", imported=f"{PACKAGE}.{layer}",
                                            as_packages=True)
        assert chains == set(), f"rundir reaches {layer}: {sorted(chains)}"


@pytest.mark.parametrize("module", ["tunelab.report.build", "tunelab.ledger.results"])
def test_reading_results_does_not_load_inspect_ai_or_torch(module):
    code = (f"import sys, {module}; "
            "print(sorted(m for m in ('inspect_ai', 'torch') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
