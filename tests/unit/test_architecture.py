"""The shape docs/architecture.md promises, checked on the import graph (grimp reads every import
statement, function-level ones included): no cycles, the job package used by nobody else, the run
directory contract below everything that reads it, and the report free of inspect-ai."""

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
