"""The pure core imports no I/O library: decisions stay testable without sockets."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "proxy"
PURE = [
    "config/schema.py",
    "config/validate.py",
    "config/fields.py",
    "config/validate_routes.py",
    "config/validate_canaries.py",
    "routing",
    "canary/machine.py",
    "canary/types.py",
    "canary/analysis.py",
    "canary/judge.py",
    "canary/plan.py",
    "canary/goals.py",
    "headers.py",
    "dataplane/rules.py",
    "dataplane/heads.py",
]
FORBIDDEN = {"aiohttp", "asyncio", "yaml", "prometheus_client", "time", "random", "socket"}


def _files() -> list[pathlib.Path]:
    out: list[pathlib.Path] = []
    for rel in PURE:
        p = ROOT / rel
        if p.is_dir():
            out.extend(sorted(p.glob("*.py")))
        elif p.exists():
            out.append(p)
    return out


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_core_imports_no_io(path: pathlib.Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


# -- the import graph ------------------------------------------------------------------


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        parts = ("proxy", *p.relative_to(ROOT).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _imports(path: pathlib.Path, known: dict[str, pathlib.Path]) -> set[str]:
    """Every proxy module `path` imports, at any depth of the file: function-level and
    TYPE_CHECKING imports count, since they tie the modules together all the same."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(known)
            # `from pkg import mod` depends on mod; `from mod import name` on mod
            out.update(subs or ({node.module} & set(known)))
    return out


def import_graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(path, known) - {name} for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_proxy() -> None:
    assert cycles(import_graph()) == []


def test_data_plane_and_canary_never_import_each_other() -> None:
    graph = import_graph()
    plane = ("proxy.dataplane", "proxy.workers")
    for module, deps in graph.items():
        for dep in deps:
            if module.startswith(plane):
                assert not dep.startswith("proxy.canary"), f"{module} imports {dep}"
            if module.startswith("proxy.canary"):
                assert not dep.startswith(plane), f"{module} imports {dep}"


MAX_LINES = 450


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_over_450_lines(path: pathlib.Path) -> None:
    """A module a reader can hold in mind; a longer one has a second subject to move out."""
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)}: {lines} lines"


def test_changes_meet_traffic_in_one_place() -> None:
    """Only proxy.control assigns the routing table: every change is one swap there. A
    worker process of `serve --workers N` swaps its own copy, built from what the
    supervisor publishes, in one place too."""
    swappers = {"control.py", "workers/main.py"}
    for path in ROOT.rglob("*.py"):
        if str(path.relative_to(ROOT)) in swappers:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for t in targets:
                for leaf in t.elts if isinstance(t, ast.Tuple) else [t]:
                    bad = isinstance(leaf, ast.Attribute) and leaf.attr == "table"
                    assert not bad, f"{path.relative_to(ROOT)}:{node.lineno} assigns .table"
