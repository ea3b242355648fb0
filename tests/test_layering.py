"""The package's import graph has no circles, and every module imports on its own.

The graph is read from the source with ``ast``: every ``import`` / ``from ... import`` statement of a
module, wherever it stands (top level, inside a function, under ``if TYPE_CHECKING:``), counts as an
arrow, so that a cycle cannot hide in a lazy import. Relative imports are resolved. ``from pkg import
name`` is an arrow to the submodule ``pkg.name`` where there is one, else to ``pkg`` itself (its
``__init__.py``, a node of its own); ``import a.b.c`` is an arrow to ``a.b.c``. Only ``dgpo.*``
modules are nodes. A cycle is a strongly connected component of more than one module, or a module
that imports itself.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "dgpo"


def modules() -> dict[str, Path]:
    """Module name -> file, for every .py file of the package (a package's own name -> its __init__.py)."""
    out = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` in ``module``."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _node(name: str, known: dict[str, Path]) -> str | None:
    """The graph node a dotted name lands on: itself where it is a module, else its longest prefix that
    is one (an attribute path), or None outside the package."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def package_imports():
    """(importer, its file, the import statement, the absolute module it imports from) for every
    statement of the package that imports from ``dgpo``."""
    for module, path in modules().items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                        yield module, path, node, alias.name
            elif isinstance(node, ast.ImportFrom):
                base = (_resolve_relative(module, is_package, node.level, node.module) if node.level
                        else node.module or "")
                if base == ROOT or base.startswith(ROOT + "."):
                    yield module, path, node, base


def import_graph() -> dict[str, dict[str, list[str]]]:
    """{importer: {imported: ["line N: names", ...]}} over the package's modules."""
    known = modules()
    graph: dict[str, dict[str, list[str]]] = {m: defaultdict(list) for m in known}
    for module, _, node, base in package_imports():
        if isinstance(node, ast.Import):
            target = _node(base, known)
            if target is not None:
                graph[module][target].append(f"line {node.lineno}: import {base}")
        else:
            names: dict[str, list[str]] = defaultdict(list)  # target -> the names imported from it
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                target = sub if sub in known else _node(base, known)
                if target is not None:
                    names[target].append(alias.name)
            for target, imported in names.items():
                graph[module][target].append(f"line {node.lineno}: from {base} import {', '.join(imported)}")
    return graph


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Strongly connected components of more than one node, and nodes with a self-loop (Tarjan,
    iterative), each sorted; sorted by their first module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1 or v in graph[v]:
                        out.append(sorted(component))
    return sorted(out)


def describe(component: list[str], graph: dict[str, dict[str, list[str]]]) -> str:
    known = modules()
    members = set(component)
    lines = [" <-> ".join(component)]
    for a in component:
        for b in sorted(graph[a]):
            if b in members:
                where = known[a].relative_to(SRC.parent)
                lines.append(f"    {where} -> {b}: {'; '.join(graph[a][b])}")
    return "\n".join(lines)


def test_the_graph_reader_resolves_imports(tmp_path, monkeypatch):
    """The reader itself, on a made-up package: relative imports, submodules vs attributes, lazy and
    TYPE_CHECKING imports, and the cycles it reports."""
    pkg = tmp_path / ROOT
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from dgpo.sub import b\nfrom . import c\n")
    (pkg / "c.py").write_text("def f():\n    from dgpo.a import x\n")  # lazy: still an arrow, a <-> c
    (pkg / "sub" / "__init__.py").write_text("from .b import thing\n")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                      "    from .. import d\nimport dgpo.sub\n")
    (pkg / "d.py").write_text("from dgpo.sub import thing\nimport os\n")  # an attribute: sub/__init__.py
    (pkg / "e.py").write_text("from dgpo import e\n")  # itself
    (pkg / "f.py").write_text("def g():\n    from dgpo.gone import x\n")  # a module that does not exist
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    g = import_graph()
    assert set(g["dgpo.a"]) == {"dgpo.sub.b", "dgpo.c"}
    assert set(g["dgpo.c"]) == {"dgpo.a"}
    assert set(g["dgpo.sub"]) == {"dgpo.sub.b"}
    assert set(g["dgpo.sub.b"]) == {"dgpo.d", "dgpo.sub"}
    assert set(g["dgpo.d"]) == {"dgpo.sub"}
    assert cycles(g) == [["dgpo.a", "dgpo.c"], ["dgpo.d", "dgpo.sub", "dgpo.sub.b"], ["dgpo.e"]]
    assert [base for _, _, _, base in package_imports() if base not in modules()] == ["dgpo.gone"]


def test_no_import_cycles_in_the_package():
    graph = import_graph()
    found = cycles(graph)
    assert not found, (f"{len(found)} import cycle(s) in src/dgpo (move the shared code into a lower module "
                       "that both import, so that the arrows run one way):\n"
                       + "\n".join(describe(c, graph) for c in found))


def test_every_import_from_the_package_names_a_module_of_it():
    """A stale import (a module that moved) fails only when its line runs: a lazy one may hide until a
    user reaches it. Every ``import dgpo.x`` / ``from dgpo.x import ...`` must name an existing module."""
    known = modules()
    stale = sorted(f"{path.relative_to(SRC.parent)}:{node.lineno}: {base}" for _, path, node, base in package_imports()
                   if base not in known)
    assert not stale, "imports of modules that do not exist:\n" + "\n".join(stale)


@pytest.mark.slow
def test_every_module_imports_in_a_fresh_interpreter():
    """``import dgpo``, then every dgpo.* module, in one fresh interpreter (sorted order). A module whose
    optional extra is not installed (a package that ``dgpo.extras.EXTRAS`` names) is let off."""
    script = f"""
import importlib, sys, traceback
from dgpo.errors import MissingExtraError
from dgpo.extras import EXTRAS
optional = {{m.split(".")[0] for mods in EXTRAS.values() for m in mods}}
bad = []
for name in {sorted(modules())!r}:
    try:
        importlib.import_module(name)
    except MissingExtraError:
        pass
    except ImportError as e:
        if str(getattr(e, "name", "") or "").split(".")[0] not in optional:
            bad.append(name + ": " + traceback.format_exc(limit=4))
    except BaseException:
        bad.append(name + ": " + traceback.format_exc(limit=4))
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", "import dgpo"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, f"modules that do not import:\n{r.stdout}\n{r.stderr[-3000:]}"


def test_layer_rules():
    """The rules of docs/concepts/architecture.md: losses are pure (dgpo.errors only), no algorithm imports
    the trainer, and nothing in the package but dgpo.testing itself imports the test helpers."""
    graph = import_graph()
    broken = []
    for mod, targets in graph.items():
        for target in targets:
            if mod.startswith("dgpo.losses") and not (target.startswith("dgpo.losses") or target == "dgpo.errors"):
                broken.append(f"{mod} -> {target}: a loss imports only torch and dgpo.errors")
            if mod.startswith("dgpo.algorithms") and target == "dgpo.training.trainer":
                broken.append(f"{mod} -> {target}: an algorithm sees the loop only through its LoopContext")
            if target.startswith("dgpo.testing") and not mod.startswith("dgpo.testing"):
                broken.append(f"{mod} -> {target}: test helpers are for tests and benchmarks only")
    assert not broken, "\n".join(broken)
