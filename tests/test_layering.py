"""The layers, read from the source: the engine knows no front door, the core knows neither
Discord nor HTTP, the two adapters (bot/ with cogs/, api/) know nothing of each other, and
no first-party modules import each other in a circle (imports made only
for type checking count: they are the same coupling)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "core", "bot", "cogs", "api", "app")
WEB = {"fastapi", "starlette", "uvicorn", "sse_starlette"}
FORBIDDEN = {
    "engine": {"core", "bot", "cogs", "api", "discord"} | WEB,
    "core": {"bot", "cogs", "api", "discord"} | WEB,
    "bot": {"api"} | WEB,
    "cogs": {"api"} | WEB,
    "api": {"bot", "cogs", "discord"},
    "app": {"discord"} | WEB,  # the composition root wires the adapters, not their libraries
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield module_name(path), path


def imports_of(name: str, path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file, as absolute dotted names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            found.add(origin)
            # "from pkg import module" imports a module, not just a name.
            found.update(f"{origin}.{alias.name}" for alias in node.names)
    return found


GRAPH = {name: imports_of(name, path) for name, path in sources()}


@pytest.mark.parametrize("package", PACKAGES)
def test_each_layer_imports_only_what_it_may(package: str) -> None:
    offending = {
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if name.split(".")[0] == package
        for target in targets
        if target.split(".")[0] in FORBIDDEN[package]
    }
    assert not offending, sorted(offending)


def first_party_edges() -> dict[str, set[str]]:
    return {
        name: {t for t in targets if t in GRAPH and t != name} for name, targets in GRAPH.items()
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_no_import_circles() -> None:
    edges = first_party_edges()
    # A package's __init__ that re-exports its modules is one unit with them, not a circle.
    for name in list(edges):
        if (ROOT / name.replace(".", "/") / "__init__.py").exists():
            edges[name] = {t for t in edges[name] if not t.startswith(name + ".")}
    assert cycles(edges) == []


def test_the_circle_check_bites() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert imports_of("bot.views", ROOT / "bot" / "views.py") >= {"discord"}
