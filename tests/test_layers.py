"""Imports run down the layers and never in a circle (function-level imports included).

    cli -> workflows (workflows/, tune/, serve/) -> train -> mining -> eval
        -> models | data | losses -> config (config.py, errors.py, version.py)

A module may import from its own layer or any layer below it; `models`, `data` and `losses`
share a layer. `angle_ray/__init__.py` is the package's public face: it may import anything
but the CLI. Every module is read with `ast`, so an import hidden inside a function counts.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "angle_ray"

# the part of the package right below `angle_ray` (a subpackage or a module) -> its layer
LAYER_OF_PART = {
    "cli": "cli",
    "workflows": "workflows", "tune": "workflows", "serve": "workflows",
    "train": "train",
    "mining": "mining",
    "eval": "eval",
    "models": "models|data|losses", "data": "models|data|losses", "losses": "models|data|losses",
    "config": "config", "errors": "config", "version": "config",
}
RANK = {"config": 0, "models|data|losses": 1, "eval": 2, "mining": 3, "train": 4,
        "workflows": 5, "public face": 5.5, "cli": 6}


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module of the package, dotted
    where: str  # file:line


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (`pkg.__init__` -> `pkg`)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        name = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The package module an imported name lives in (`angle_ray.losses.build_loss` ->
    `angle_ray.losses`); None outside the package."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _absolute(node: ast.ImportFrom, source: str, is_package: bool) -> str:
    """The absolute module of a `from` import (relative ones resolved against the importer)."""
    if node.level == 0:
        return node.module or ""
    base = source.split(".") if is_package else source.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def package_imports(package: Path = PACKAGE) -> list[Import]:
    """Every import of a package module by another, with the importing file and line."""
    modules = module_files(package)
    found = []
    for source, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = _absolute(node, source, path.name == "__init__.py")
                # `from a.b import c`: c is a submodule of a.b, or a name defined in a.b
                names = [f"{module}.{alias.name}" for alias in node.names]
            else:
                continue
            where = f"{path.relative_to(package.parent)}:{node.lineno}"
            targets = {_resolve(n, modules) for n in names if n.split(".")[0] == package.name}
            found += [Import(source, t, where) for t in sorted(targets - {None, source})]
    return found


def layer(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) == 1:
        return "public face"
    return LAYER_OF_PART.get(parts[1])


def test_every_module_belongs_to_a_layer():
    unplaced = sorted(m for m in module_files() if layer(m) is None)
    assert not unplaced, ("modules outside every layer (add their folder to LAYER_OF_PART in "
                          "tests/test_layers.py): " + ", ".join(unplaced))


def upward_imports(imports: list[Import]) -> list[str]:
    upward = []
    for imp in imports:
        src, dst = layer(imp.source), layer(imp.target)
        if src is None or dst is None:
            continue  # reported by test_every_module_belongs_to_a_layer
        if RANK[dst] > RANK[src]:
            upward.append(f"{imp.where} imports {imp.target} ({src} -> {dst})")
    return upward


def test_no_module_imports_from_a_layer_above_it():
    upward = upward_imports(package_imports())
    assert not upward, f"{len(upward)} import(s) up the layers:\n" + "\n".join(upward)


def test_the_scan_sees_hidden_relative_and_aliased_imports(tmp_path):
    """A made-up package: each kind of import the checks must see, and what they say of it."""
    pkg = tmp_path / "angle_ray"
    for folder in ("train", "data", "losses"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text("import angle_ray.train.loop as loop\n")
    (pkg / "data" / "rows.py").write_text(
        "import json\n\n\ndef f():\n    from angle_ray.train import loop\n    return loop\n")
    (pkg / "losses" / "term.py").write_text("from ..data.rows import f\nfrom . import other\n")
    (pkg / "losses" / "other.py").write_text("from angle_ray.losses import term\n")
    (pkg / "train" / "loop.py").write_text("from angle_ray.data import rows\n")
    found = {(i.source, i.target, i.where) for i in package_imports(pkg)}
    assert found == {
        ("angle_ray.cli", "angle_ray.train.loop", "angle_ray/cli.py:1"),
        ("angle_ray.data.rows", "angle_ray.train.loop", "angle_ray/data/rows.py:5"),
        ("angle_ray.losses.term", "angle_ray.data.rows", "angle_ray/losses/term.py:1"),
        ("angle_ray.losses.term", "angle_ray.losses.other", "angle_ray/losses/term.py:2"),
        ("angle_ray.losses.other", "angle_ray.losses.term", "angle_ray/losses/other.py:1"),
        ("angle_ray.train.loop", "angle_ray.data.rows", "angle_ray/train/loop.py:1"),
    }
    assert upward_imports(package_imports(pkg)) == [
        "angle_ray/data/rows.py:5 imports angle_ray.train.loop (models|data|losses -> train)"]
    edges: dict[str, set[str]] = {m: set() for m in module_files(pkg)}
    for imp in package_imports(pkg):
        edges[imp.source].add(imp.target)
    assert sorted(strongly_connected(edges)) == [
        ["angle_ray.data.rows", "angle_ray.train.loop"],
        ["angle_ray.losses.other", "angle_ray.losses.term"]]


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative); groups of one module left out."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            nxt = next(successors, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(edges[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def test_strongly_connected_finds_cycles_and_leaves_chains_alone():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"},
             "g": set()}
    assert sorted(strongly_connected(edges)) == [["a", "b", "c"], ["d", "e"]]
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycle_among_the_modules():
    imports = package_imports()
    edges: dict[str, set[str]] = {m: set() for m in module_files()}
    for imp in imports:
        edges[imp.source].add(imp.target)
    cycles = strongly_connected(edges)
    lines = []
    for group in cycles:
        lines.append(f"cycle of {len(group)} modules:")
        lines += [f"  {i.where} imports {i.target}" for i in imports
                  if i.source in group and i.target in group]
    assert not cycles, "\n".join(lines)


@pytest.mark.parametrize("module, expected", [
    ("angle_ray", "public face"), ("angle_ray.cli", "cli"), ("angle_ray.tune.sweep", "workflows"),
    ("angle_ray.losses.angle", "models|data|losses"), ("angle_ray.errors", "config"),
])
def test_layer_names(module, expected):
    assert layer(module) == expected
