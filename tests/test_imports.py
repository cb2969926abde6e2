"""Every module imports on its own; no import circles; no private names across modules.

As pip-tools does, each module is imported in a fresh interpreter: an import that
only works because another module happened to be imported first fails here.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

import envbisect

PACKAGE = Path(envbisect.__file__).parent
#: Not libraries: the file run inside trial envs by path, and ``python -m envbisect``.
STANDALONE = {"envbisect.probes.probe_module", "envbisect.__main__"}


def modules() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.walk_packages([str(PACKAGE)], prefix="envbisect.")
        if info.name not in STANDALONE
    )


def source(module: str) -> Path:
    path = PACKAGE.parent / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


@pytest.mark.parametrize("module", modules())
def test_each_module_imports_on_its_own(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def module_imports(module: str) -> list[tuple[str, list[str]]]:
    """(imported envbisect module, names taken from it) for each import run at import
    time: module level, outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(source(module).read_text())
    found: list[tuple[str, list[str]]] = []
    package = module if source(module).name == "__init__.py" else module.rpartition(".")[0]

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.If | ast.Try):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Import):
                found.extend((a.name, []) for a in node.names if a.name.startswith("envbisect"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.rsplit(".", node.level - 1)[0]
                    base = f"{parent}.{base}" if base else parent
                if base.startswith("envbisect"):
                    found.append((base, [a.name for a in node.names]))

    visit(tree.body)
    return found


def graph() -> dict[str, set[str]]:
    known = set(modules())
    edges: dict[str, set[str]] = {}
    for module in known:
        targets = set()
        for imported, names in module_imports(module):
            # `from envbisect import processes` imports the submodule.
            subs = {f"{imported}.{name}" for name in names} & known
            targets |= subs or ({imported} & known)
        edges[module] = targets - {module}
    return edges


def cycle(edges: Mapping[str, set[str]]) -> list[str] | None:
    """One import cycle, if there is any (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"a2"}, "a2": set(), "x": {"y"}, "y": {"x"}}) == ["x", "y", "x"]


def test_no_import_circles() -> None:
    assert cycle(graph()) is None


def test_no_module_imports_a_private_name_from_another() -> None:
    private = [
        f"{module} imports {name} from {imported}"
        for module in modules()
        for imported, names in module_imports(module)
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert private == []
