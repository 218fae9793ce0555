"""The import contract, checked over every module's AST (so a lazy import inside a function is
caught too) and, for the core, dynamically in a fresh interpreter:

- the pure core (domain, policy, planner, snapshot codec, ports, metrics catalog) never imports an
  I/O library nor the orchestration/edge packages, and does no file or thread I/O;
- the adapters (the edges) reach the rest of rebalancerd only through ``ports`` and ``domain``
  (plus a short, justified allowlist).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.module_graph import imports_of, module_files

PKG = Path(__file__).resolve().parents[2] / "rebalancerd"
MODULES = module_files(PKG)
CORE = ["domain", "policy", "planner", "snapshot.py", "ports.py", "observability.py"]
FORBIDDEN = {
    "aiomqtt",
    "paho",
    "libvirt",
    "prometheus_client",
    "psutil",
    "socket",
    "asyncio",
    "structlog",
    "subprocess",
    "threading",
    "concurrent.futures",
    "multiprocessing",
    "sqlite3",
    "urllib",
    "http",
    "requests",
    "rebalancerd.adapters",
    "rebalancerd.execution",
    "rebalancerd.telemetry",
    "rebalancerd.cli",
    "rebalancerd.sim",
    "rebalancerd.daemon",
    # file reading with size caps and the snapshot file reader/writer: an edge module
    "rebalancerd.files",
}
FILE_METHODS = {"read_text", "write_text", "read_bytes", "write_bytes", "open"}
OS_FILE_FUNCTIONS = {
    "open",
    "read",
    "write",
    "listdir",
    "scandir",
    "stat",
    "remove",
    "rename",
    "replace",
    "mkdir",
}


def rel(path: Path) -> str:
    return path.relative_to(PKG).as_posix()


def core_files() -> list[Path]:
    files: list[Path] = []
    for entry in CORE:
        p = PKG / entry
        files.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p])
    return files


def module_of(path: Path) -> str:
    return next(m for m, f in MODULES.items() if f == path)


def imported_modules(path: Path) -> set[str]:
    """Every module the file imports, absolute (relative imports resolved), wherever written."""
    if path.is_relative_to(PKG):
        return imports_of(path, module_of(path), MODULES)
    return imports_of(path, path.stem)


def forbidden_in(mods: set[str]) -> set[str]:
    return {m for m in mods for f in FORBIDDEN if m == f or m.startswith(f + ".")}


def file_io_in(path: Path) -> list[str]:
    """File I/O calls in a module: ``open(...)``, ``x.read_text()``-style methods, ``os.<file
    function>(...)`` and ``from os import <file function>``; each as ``function:line: what``."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child.name)
                continue
            what = None
            if isinstance(child, ast.Call):
                f = child.func
                if isinstance(f, ast.Name) and f.id == "open":
                    what = "open()"
                elif isinstance(f, ast.Attribute):
                    if isinstance(f.value, ast.Name) and f.value.id == "os":
                        if f.attr in OS_FILE_FUNCTIONS:
                            what = f"os.{f.attr}()"
                    elif f.attr in FILE_METHODS:
                        what = f".{f.attr}()"
            elif isinstance(child, ast.ImportFrom) and child.module == "os" and child.level == 0:
                names = sorted(a.name for a in child.names if a.name in OS_FILE_FUNCTIONS)
                if names:
                    what = f"from os import {', '.join(names)}"
            if what is not None:
                found.append(f"{func}:{child.lineno}: {what}")
            visit(child, func)

    visit(tree, "<module>")
    return found


def test_core_files_exist() -> None:
    files = core_files()
    names = {rel(f) for f in files}
    assert "domain/model.py" in names and "policy/schema.py" in names
    assert "policy/parse.py" in names and "policy/watch.py" not in names
    assert len(files) >= 8


@pytest.mark.parametrize("path", core_files(), ids=rel)
def test_core_module_imports_no_io(path: Path) -> None:
    bad = forbidden_in(imported_modules(path))
    assert not bad, f"{rel(path)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", core_files(), ids=rel)
def test_core_module_does_no_file_io(path: Path) -> None:
    bad = file_io_in(path)
    assert not bad, f"{rel(path)} does file I/O: {bad}"


def test_checker_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def f():\n    import libvirt\n    from prometheus_client import Counter\n"
        "    import concurrent.futures\n    from threading import Lock\n"
    )
    assert forbidden_in(imported_modules(bad)) == {
        "libvirt",
        "prometheus_client",
        "concurrent.futures",
        "threading",
    }


def test_checker_resolves_relative_imports(tmp_path: Path) -> None:
    # as if written in rebalancerd/policy/x.py: resolved against that module's package
    bad = tmp_path / "x.py"
    bad.write_text(
        "from . import schema\nfrom ..adapters import mqtt\nfrom ..cli.main import main\n"
    )
    mods = imports_of(bad, "rebalancerd.policy.x", MODULES)
    assert mods == {
        "rebalancerd.policy.schema",
        "rebalancerd.adapters.mqtt",
        "rebalancerd.cli.main",
    }
    assert forbidden_in(mods) == {"rebalancerd.adapters.mqtt", "rebalancerd.cli.main"}


def test_file_io_checker_catches_each_kind(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os\nfrom os import listdir\nfrom pathlib import Path\n"
        "def read(p):\n    with open(p) as f:\n        return f.read()\n"
        "def scan(d):\n    return os.scandir(d), os.path.join(d, 'x')\n"
        "class C:\n    def save(self, p: Path):\n        p.write_bytes(b'')\n"
        "        return Path(p).open('rb')\n"
        "x = Path('y').read_text()\n"
    )
    assert file_io_in(bad) == [
        "<module>:2: from os import listdir",
        "read:5: open()",
        "scan:8: os.scandir()",
        "save:11: .write_bytes()",
        "save:12: .open()",
        "<module>:13: .read_text()",
    ]


def test_importing_the_core_loads_no_io_library() -> None:
    mods = ["rebalancerd." + (e[:-3] if e.endswith(".py") else e) for e in CORE]
    code = (
        "import importlib, json, pkgutil, sys\n"
        f"for m in {mods!r}:\n"
        "    mod = importlib.import_module(m)\n"
        "    if hasattr(mod, '__path__'):\n"
        "        for info in pkgutil.walk_packages(mod.__path__, m + '.'):\n"
        "            importlib.import_module(info.name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(res.stdout.strip().splitlines()[-1]))
    io_libs = {
        "aiomqtt",
        "libvirt",
        "prometheus_client",
        "psutil",
        "structlog",
        "rebalancerd.adapters",
        "rebalancerd.daemon",
    }
    assert not (loaded & io_libs), f"core import pulled in {sorted(loaded & io_libs)}"


# ----------------------------------------------------------------------------------------------
# adapters: the rest of rebalancerd only through ports and domain

ADAPTERS = sorted((PKG / "adapters").glob("*.py"))
ADAPTER_MAY_IMPORT = ("rebalancerd.ports", "rebalancerd.domain", "rebalancerd.adapters")
# Beyond ports/domain, each with its reason:
ADAPTER_ALLOWLIST = {
    # the metric catalog: the Prometheus adapter registers exactly the metrics it declares, and
    # the MQTT adapter counts into a NullMetrics when given no sink (pure, like ports)
    "adapters/metrics.py": {"rebalancerd.observability"},
    "adapters/mqtt.py": {"rebalancerd.observability"},
    # the agent's libvirt reader reports only domain names the telemetry wire schema accepts
    "adapters/libvirt_stats.py": {"rebalancerd.telemetry.schema"},
    # the etcd coordinator implements the daemon config's coordination section (pure pydantic)
    "adapters/etcd_coordinator.py": {"rebalancerd.coordination.settings"},
    # policy files on disk: the bytes read go to the pure policy parser and cross-file checks
    "adapters/policy_files.py": {
        # bounded, non-blocking reads of operator-given files (the edge utility every reader uses)
        "rebalancerd.files",
        "rebalancerd.policy.combine",
        "rebalancerd.policy.document",
        "rebalancerd.policy.issues",
        "rebalancerd.policy.parse",
        "rebalancerd.policy.safe_yaml",
        "rebalancerd.policy.schema",
        "rebalancerd.policy.semantics",
    },
}


def outside_adapter_contract(mods: set[str], allowed: set[str]) -> set[str]:
    """The rebalancerd modules in ``mods`` an adapter may not import."""
    return {
        m
        for m in mods
        if (m == "rebalancerd" or m.startswith("rebalancerd."))
        and not any(m == a or m.startswith(a + ".") for a in ADAPTER_MAY_IMPORT)
        and m not in allowed
    }


def adapter_offences(path: Path) -> set[str]:
    allowed = ADAPTER_ALLOWLIST.get(rel(path), set())
    return outside_adapter_contract(imported_modules(path), allowed)


@pytest.mark.parametrize("path", ADAPTERS, ids=rel)
def test_adapter_imports_only_ports_and_domain(path: Path) -> None:
    bad = adapter_offences(path)
    assert not bad, f"{rel(path)} imports {sorted(bad)} (adapters: ports, domain, adapters only)"


def test_adapter_allowlists_are_all_used() -> None:
    # an entry nobody needs any more must go, so the allowlist stays short and true
    for f, mods in ADAPTER_ALLOWLIST.items():
        unused = mods - imported_modules(PKG / f)
        assert not unused, f"{f}: allowlisted but not imported: {sorted(unused)}"


def test_adapter_check_catches_a_violation(tmp_path: Path) -> None:
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    bad = adapters / "x.py"
    bad.write_text(
        "from rebalancerd.ports import Clock\nfrom rebalancerd.domain.model import Vm\n"
        "def f():\n    from rebalancerd.execution.executor import Executor\n"
        "    import rebalancerd.planner\n"
    )
    mods = imports_of(bad, "rebalancerd.adapters.x", MODULES)
    assert outside_adapter_contract(mods, set()) == {
        "rebalancerd.execution.executor",
        "rebalancerd.planner",
    }
    allowed = {"rebalancerd.planner"}
    assert outside_adapter_contract(mods, allowed) == {"rebalancerd.execution.executor"}
