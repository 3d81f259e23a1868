"""The package map of docs/architecture.md holds: every module imports, no import cycles, no state changed at import.

The import graph is built from the source with :mod:`ast`: every ``import`` and
``from ... import`` statement, at module level or inside a function (a lazy
import is still an edge), plus the command table of :mod:`kf.cli` (imported by
name with ``importlib``). A cycle between two packages or two modules fails.
"""
from __future__ import annotations

import ast
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the top-level packages, CLI first (it sits above the stage packages), then kfold's dependants
PACKAGES = ("kf", "kfold", "ensemble", "submit", "reports")


def modules() -> dict[str, Path]:
    """Every module of :data:`PACKAGES`: dotted name -> file (a package is its ``__init__.py``)."""
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imported_names(name: str, path: Path) -> set[str]:
    """Dotted names module ``name`` (at ``path``) imports anywhere in its body, relative imports resolved."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".") if is_pkg else name.split(".")[:-1]
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            found.update(f"{base}.{a.name}" for a in node.names)  # a module, or a name in one: resolved in import_graph
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (an import of ``a.b.c`` counts as one of the deepest module named)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets = set()
        for imp in imported_names(name, path):
            parts = imp.split(".")
            while parts and ".".join(parts) not in mods:
                parts.pop()
            if parts and ".".join(parts) != name:
                targets.add(".".join(parts))
        graph[name] = targets
    from kf.cli import COMMANDS  # the lazy command table: importlib.import_module(<module>) by name

    graph["kf.cli"] |= {mod for mod, _ in COMMANDS.values()}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted; sorted by first node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Top-level package -> the other top-level packages its modules import."""
    out: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for a, targets in graph.items():
        out[_package(a)] |= {_package(b) for b in targets} - {_package(a)}
    return out


def _same(module: str) -> str:
    return module


def _package(module: str) -> str:
    return module.split(".")[0]


def edges_within(graph: dict[str, set[str]], comp: list[str], key=_same, shown: int = 3) -> list[str]:
    """The edges inside one component (``key`` maps a module to its node): per pair of nodes
    ``A -> B: a -> b, ...`` with at most ``shown`` module edges and the count of the others."""
    pairs: dict[tuple[str, str], list[str]] = {}
    for a, ts in graph.items():
        for b in ts:
            if key(a) in comp and key(b) in comp and key(a) != key(b):
                pairs.setdefault((key(a), key(b)), []).append(f"{a} -> {b}")
    out = []
    for (ka, kb), e in sorted(pairs.items()):
        e = sorted(e)
        more = f" (+{len(e) - shown} more)" if len(e) > shown else ""
        out.append((f"{ka} -> {kb}: " if key is not _same else "") + ", ".join(e[:shown]) + more)
    return out


def test_the_graph_reader_sees_relative_lazy_and_aliased_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\nfrom . import labels as L\nfrom .io import KfError\n\n"
                 "def f():\n    from ..ensemble.runs import load_runs\n    import submit.cli\n")
    assert imported_names("kfold.m", f) == {"os", "kfold.labels", "kfold.io.KfError", "ensemble.runs.load_runs", "submit.cli"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_every_module_imports_in_a_fresh_interpreter_without_changing_opencv_threads():
    names = sorted(modules())
    code = ("import cv2, importlib, sys\ncv2.setNumThreads(3)\nbefore = cv2.getNumThreads()\n"
            f"for m in {names!r}:\n    importlib.import_module(m)\n"
            "print('OPENCV', before, cv2.getNumThreads())\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "OPENCV 3 3"


def test_no_import_cycle_between_packages():
    graph = import_graph()
    pkgs = package_graph(graph)
    assert pkgs["kf"] >= {"kfold", "ensemble", "submit", "reports"}  # the CLI sits above every stage package
    found = cycles(pkgs)
    assert not found, "package cycles: " + "; ".join(
        f"{' <-> '.join(c)} via {'; '.join(edges_within(graph, c, key=_package))}" for c in found)


def test_no_import_cycle_between_modules():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "module cycles: " + "; ".join(f"{' <-> '.join(c)} via {', '.join(edges_within(graph, c))}"
                                                    for c in found)


def test_version_comes_from_the_installed_metadata():
    import kfold

    assert kfold.__version__ == importlib.metadata.version("kf")


def test_opencv_threads_are_limited_by_the_cache_build_not_by_import(tmp_path):
    code = ("import cv2\ncv2.setNumThreads(3)\nimport kfold.cache as C\nprint('IMPORT', cv2.getNumThreads())\n"
            "print('BEFORE', C.limit_opencv_threads(), 'AFTER', cv2.getNumThreads())\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["IMPORT", "3", "BEFORE", "3", "AFTER", "1"]


def test_the_cli_and_reports_take_the_class_count_from_the_task_module():
    """No ``18`` as a number (strings and comments aside) in kf/ or reports/: they use ``kfold.labels.N_CLASSES``."""
    offenders = []
    for name, path in modules().items():
        if name.split(".")[0] in ("kf", "reports"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and type(node.value) is int and node.value == 18:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
