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
    "canary/analysis.py",
    "canary/judge.py",
    "canary/plan.py",
    "canary/goals.py",
    "headers.py",
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
