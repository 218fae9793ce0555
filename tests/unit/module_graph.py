"""Imports read from the AST of a package's modules (no import is executed), for the import
contract and the cycle check.

Every import counts, wherever it is written: at module level, inside a function, under
``if TYPE_CHECKING:``. Relative imports are resolved against the importing module, and
``from pkg import name`` names the submodule ``pkg.name`` when ``name`` is one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path


def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``*.py`` under the package directory."""
    root = package_dir.parent
    out: dict[str, Path] = {}
    for f in sorted(package_dir.rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _base(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute module a ``from <level dots><target> import ...`` refers to."""
    if level == 0:
        return target or ""
    parts = module.split(".")
    if not is_package:
        parts = parts[:-1]  # a module's relative imports start from its package
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    return ".".join([*parts, target] if target else parts)


def imports_of(path: Path, module: str, known: Iterable[str] = ()) -> set[str]:
    """Every module ``path`` (the module named ``module``) imports, as absolute dotted names.

    ``known`` is the set of the package's own modules: ``from pkg import name`` yields
    ``pkg.name`` when that is one of them, else ``pkg``.
    """
    known_set = set(known)
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, is_package, node.level, node.module)
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                out.add(sub if sub in known_set else base)
    out.discard("")
    return out


def internal_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package's own modules it imports."""
    files = module_files(package_dir)
    return {m: imports_of(f, m, files) & files.keys() for m, f in files.items()}


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components (Tarjan), each sorted; sorted by their first name."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    comps: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        # iterative DFS: (node, iterator over its successors)
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, succ = work[-1]
            advanced = False
            for nxt in succ:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp: list[str] = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                comps.append(sorted(comp))
    return sorted(comps)


def cycle_in(graph: Mapping[str, Iterable[str]], component: Iterable[str]) -> list[str]:
    """One cycle through a strongly connected component, as a path that ends where it starts."""
    members = set(component)
    start = min(members)
    # breadth-first from start's successors back to start, inside the component
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt_frontier: list[str] = []
        for node in frontier:
            for nxt in sorted(graph.get(node, ())):
                if nxt not in members:
                    continue
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if nxt not in parent:
                    parent[nxt] = node
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    return []  # pragma: no cover - a strongly connected component always has a cycle


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle per group of modules that import each other (a self-import counts too)."""
    out: list[list[str]] = []
    for comp in strongly_connected(graph):
        if len(comp) > 1 or comp[0] in set(graph.get(comp[0], ())):
            out.append(cycle_in(graph, comp))
    return out
