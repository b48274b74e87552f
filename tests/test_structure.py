"""The shape of the code: no import circles, layers that point one way, modules of a readable size.

Every module of `edge_agent` and `firmware_bridge` is parsed with `ast` (nothing is imported),
and every import counts: at the top, under `TYPE_CHECKING` and inside functions, because a
circle hidden in a function is still a circle in the design. A failure names the offending
modules and the lines that import.
"""

from __future__ import annotations

import ast
import itertools
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("edge_agent", "firmware_bridge")
SIZE_CHECKED = (*PACKAGES, "scripts", "tests")
MAX_LINES = 900

# Who may import the composition root: the two things that run it, `edge-agent run` (the
# runner) and `edge-agent bench` (its workers run a daemon on a thread and observe it through
# its hooks). Tests may too; they are not scanned here. Components never do: they get ports.
DAEMON = "edge_agent.daemon"
DAEMON_IMPORTERS = frozenset({"edge_agent.runner", "edge_agent.bench.timed"})


@dataclass(frozen=True)
class Import:
    """One project module importing another, and where."""

    source: str
    target: str
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.path.relative_to(REPO)}:{self.line})"


def module_name(path: Path) -> str:
    """Dotted module name of a file under the repository (a package's `__init__` is the package)."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
    }


def imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, int]]:
    """Every absolute name an `import` anywhere in ``tree`` names, with its line.

    ``from pkg import name`` yields ``pkg.name``; relative imports are resolved against the
    module's package.
    """
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` denotes: itself (a module, or a module's attribute's
    module), else its nearest enclosing module; None outside the project."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, Import]]:
    """For each module, the project modules it imports (with the first line importing each)."""
    graph: dict[str, dict[str, Import]] = {name: {} for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for imported, line in imported_names(tree, name, path.name == "__init__.py"):
            target = resolve(imported, modules)
            if target is not None and target != name:
                graph[name].setdefault(target, Import(name, target, path, line))
    return graph


def strongly_connected(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:
        nonlocal counter
        # Iterative, so a long chain of imports cannot hit the recursion limit.
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def shortest_cycle(graph: dict[str, dict[str, Import]], component: list[str]) -> list[Import]:
    """One shortest circle through the component's first module, as the imports that make it."""
    start = component[0]
    members = set(component)
    previous: dict[str, Import] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for succ, edge in sorted(graph[node].items()):
            if succ not in members:
                continue
            if succ == start:
                path = [edge]
                while path[0].source != start:
                    path.insert(0, previous[path[0].source])
                return path
            if succ not in previous:
                previous[succ] = edge
                queue.append(succ)
    raise AssertionError(f"{component} is not a cycle")  # pragma: no cover


@pytest.fixture(scope="module")
def modules() -> dict[str, Path]:
    return project_modules()


@pytest.fixture(scope="module")
def graph(modules: dict[str, Path]) -> dict[str, dict[str, Import]]:
    return import_graph(modules)


def describe(graph: dict[str, dict[str, Import]], component: list[str]) -> str:
    cycle = shortest_cycle(graph, component)
    hops = "\n    ".join(str(edge) for edge in cycle)
    return f"{len(component)} modules {component}, e.g.:\n    {hops}"


def test_no_import_cycles(graph: dict[str, dict[str, Import]]) -> None:
    """No circle among the modules, counting imports under TYPE_CHECKING and in functions."""
    components = strongly_connected(graph)
    assert not components, "import cycles:\n" + "\n".join(describe(graph, c) for c in components)


def test_firmware_bridge_imports_nothing_of_edge_agent(modules: dict[str, Path]) -> None:
    """The firmware side stands alone: edge_agent builds on it, never the other way round."""
    found = []
    for name, path in modules.items():
        if not name.startswith("firmware_bridge"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for imported, line in imported_names(tree, name, path.name == "__init__.py"):
            if imported == "edge_agent" or imported.startswith("edge_agent."):
                found.append(f"{path.relative_to(REPO)}:{line} imports {imported}")
    assert not found, "\n".join(sorted(set(found)))


def test_the_contract_package_imports_nothing_of_the_daemon(
    graph: dict[str, dict[str, Import]],
) -> None:
    """The reference consumer runs without the gateway: `edge_agent.contract` uses only
    itself and the error tree."""
    allowed = ("edge_agent.contract", "edge_agent.errors", "edge_agent")
    wrong = [
        str(edge)
        for source, edges in sorted(graph.items())
        if source == "edge_agent.contract" or source.startswith("edge_agent.contract.")
        for target, edge in sorted(edges.items())
        if not (target in allowed or target.startswith("edge_agent.contract."))
    ]
    assert not wrong, "\n".join(wrong)


def test_the_cloud_consumer_stays_on_the_cloud_side(
    graph: dict[str, dict[str, Import]],
) -> None:
    """`edge_agent.cloud` (the reference consumer, psycopg) is never imported by the daemon's
    modules, and it builds only on the contract and the error tree, as a cloud would."""
    cloud = "edge_agent.cloud"

    def inside(name: str, package: str) -> bool:
        return name == package or name.startswith(package + ".")

    allowed = (cloud, "edge_agent.contract", "edge_agent.errors")
    wrong = [
        str(edge)
        for source, edges in sorted(graph.items())
        for target, edge in sorted(edges.items())
        if (inside(target, cloud) and not inside(source, cloud))
        or (
            inside(source, cloud)
            and target != "edge_agent"
            and not any(inside(target, a) for a in allowed)
        )
    ]
    assert not wrong, "\n".join(wrong)


def test_the_broker_flags_need_no_cloud_extra() -> None:
    """`edge_agent.cloud.args` imports only the standard library: the SQLite checker
    (`scripts/cloud_consumer.py`) takes its flags from there and runs without psycopg."""
    path = REPO / "edge_agent" / "cloud" / "args.py"
    names = imported_names(ast.parse(path.read_text()), "edge_agent.cloud.args", False)
    outside = [
        f"{name} (line {line})"
        for name, line in names
        if name.partition(".")[0] not in sys.stdlib_module_names
    ]
    assert not outside, outside


def test_only_the_runner_imports_the_composition_root(
    graph: dict[str, dict[str, Import]],
) -> None:
    """The daemon builds the components and hands them narrow ports; nothing reaches back."""
    importers = {
        source: edge
        for source, edges in graph.items()
        for target, edge in edges.items()
        if target == DAEMON
    }
    wrong = [
        str(edge) for source, edge in sorted(importers.items()) if source not in DAEMON_IMPORTERS
    ]
    assert not wrong, f"{DAEMON} is imported by:\n" + "\n".join(wrong)


def test_no_module_over_the_size_limit() -> None:
    """A module a reader can hold in mind: at most MAX_LINES lines."""
    sizes = {
        str(path.relative_to(REPO)): len(path.read_text(encoding="utf-8").splitlines())
        for top in SIZE_CHECKED
        for path in sorted((REPO / top).rglob("*.py"))
    }
    offenders = {path: lines for path, lines in sizes.items() if lines > MAX_LINES}
    assert not offenders, f"modules over {MAX_LINES} lines: " + ", ".join(
        f"{path} ({lines})" for path, lines in sorted(offenders.items())
    )


# -- the checker itself -------------------------------------------------------------------


def fake_graph(edges: set[tuple[int, int]], n: int) -> dict[str, dict[str, Import]]:
    graph: dict[str, dict[str, Import]] = {f"m{i}": {} for i in range(n)}
    for a, b in edges:
        graph[f"m{a}"][f"m{b}"] = Import(f"m{a}", f"m{b}", REPO / "x.py", 1)
    return graph


def reaches(graph: dict[str, dict[str, Import]], a: str, b: str) -> bool:
    seen, todo = {a}, [a]
    while todo:
        for succ in graph[todo.pop()]:
            if succ == b:
                return True
            if succ not in seen:
                seen.add(succ)
                todo.append(succ)
    return False


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=1, max_value=8).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.sets(
                st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(
                    lambda e: e[0] != e[1]
                ),
                max_size=n * 3,
            ),
        )
    )
)
def test_components_are_exactly_the_mutually_reachable_modules(
    case: tuple[int, set[tuple[int, int]]],
) -> None:
    """Tarjan's components agree with plain reachability, and each reported circle is real."""
    n, edges = case
    graph = fake_graph(edges, n)
    components = strongly_connected(graph)
    names = sorted(graph)
    for a in names:
        for b in names:
            together = any(a in c and b in c for c in components)
            if a != b:
                assert together == (reaches(graph, a, b) and reaches(graph, b, a))
    for component in components:
        cycle = shortest_cycle(graph, component)
        assert cycle[0].source == cycle[-1].target == component[0]
        assert all(x.target == y.source for x, y in itertools.pairwise(cycle))
        assert all(edge.target in graph[edge.source] for edge in cycle)


def test_imports_hidden_in_functions_and_type_checking_count(tmp_path: Path) -> None:
    """The resolver sees relative, in-function and TYPE_CHECKING imports and names the module."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "from .. import other\n"
        "if TYPE_CHECKING:\n"
        "    from edge_agent.daemon import Daemon\n"
        "def f():\n"
        "    import edge_agent.store.db\n"
        "    from .sibling import thing\n"
    )
    modules = dict.fromkeys(
        (
            "edge_agent",
            "edge_agent.pkg",
            "edge_agent.pkg.here",
            "edge_agent.pkg.sibling",
            "edge_agent.other",
            "edge_agent.daemon",
            "edge_agent.store",
            "edge_agent.store.db",
        ),
        tmp_path,
    )
    tree = ast.parse(source)
    targets = {
        resolve(name, modules) for name, _line in imported_names(tree, "edge_agent.pkg.here", False)
    }
    assert {
        "edge_agent.pkg.sibling",
        "edge_agent.other",
        "edge_agent.daemon",
        "edge_agent.store.db",
    } <= targets
