"""No import cycle anywhere in rebalancerd/: the module graph is read from every module's AST,
counting function-level and ``TYPE_CHECKING`` imports too (a cycle hidden inside a function is
still a cycle)."""

from __future__ import annotations

from pathlib import Path

from tests.unit.module_graph import cycles, internal_graph

PKG = Path(__file__).resolve().parents[2] / "rebalancerd"


def test_the_graph_covers_the_package() -> None:
    graph = internal_graph(PKG)
    assert len(graph) >= 60
    assert "rebalancerd.planner.problem" in graph["rebalancerd.planner.core"]


def test_no_import_cycle() -> None:
    found = cycles(internal_graph(PKG))
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def _package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / "pkg"


def test_checker_finds_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    pkg = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg.b import f\n",
            "pkg/b.py": "def f():\n    from pkg import c\n",
            "pkg/c.py": "from . import a\n",
            "pkg/d.py": "import pkg.a\n",
        },
    )
    assert cycles(internal_graph(pkg)) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]


def test_checker_counts_type_checking_and_parent_relative_imports(tmp_path: Path) -> None:
    pkg = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/sub/__init__.py": "",
            "pkg/sub/x.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..y import Y\n"
            ),
            "pkg/y.py": "from .sub.x import *\n",
        },
    )
    graph = internal_graph(pkg)
    assert graph["pkg.sub.x"] == {"pkg.y"}
    assert graph["pkg.y"] == {"pkg.sub.x"}
    assert cycles(graph) == [["pkg.sub.x", "pkg.y", "pkg.sub.x"]]


def test_checker_passes_an_acyclic_package_and_sees_self_imports(tmp_path: Path) -> None:
    pkg = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "import os\nfrom pkg import b\n",
            "pkg/b.py": "from pkg.c import thing\n",
            "pkg/c.py": "thing = 1\n",
        },
    )
    assert cycles(internal_graph(pkg)) == []
    (pkg / "c.py").write_text("def f():\n    import pkg.c\n")
    assert cycles(internal_graph(pkg)) == [["pkg.c", "pkg.c"]]
