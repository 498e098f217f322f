"""The import rule: a module imports only from the layers above it in the pipeline, and the
modules of one package do not import each other in a circle.

Each module's layer is its folder under `neurosteer/` (`LAYERS`); the top-level modules
(`errors`, `_io`, ...) are the leaves. Every import counts: at module level, inside functions,
and under `TYPE_CHECKING`, since a hidden import is still a dependency. Importing from one's
own package is allowed when it closes no cycle; importing a layer of the same rank but another
folder (`evaluation` from `export`) is a sideways import and fails like an upward one.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: folder under neurosteer/ -> rank; "" is the top-level modules (the leaves), "__init__" the
#: package's front door (`neurosteer/__init__.py`, which names the public API, and
#: `neurosteer/__main__.py`, which runs the command line for `python -m neurosteer`).
LAYERS: dict[str, int] = {
    "": 0,
    "prompts": 1,
    "hooks": 1,
    "model": 2,
    "interventions": 3,
    "methods": 4,
    "evaluation": 5,
    "export": 5,
    "workflows": 6,
    "cli": 7,
    "__init__": 8,
}


def module_files(src: Path, package: str) -> dict[str, Path]:
    """{dotted module name: file} for every module of `package` under `src`."""
    out = {}
    for file in sorted((src / package).rglob("*.py")):
        parts = list(file.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = file
    return out


def imported_modules(name: str, file: Path, modules: dict[str, Path]) -> set[str]:
    """What `file` (module `name`) imports from its package, anywhere in it: module names,
    including any that name no module of the package (an old path, a typo)."""
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    root = name.partition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                child = f"{target}.{alias.name}"
                found.add(child if child in modules else target)
    return {m for m in found if m.partition(".")[0] == root and m != name}


def layer_of(name: str, modules: dict[str, Path]) -> str:
    """The folder that gives `name` its layer ("" for a top-level module)."""
    parts = name.split(".")
    if len(parts) == 1 or parts[1:] == ["__main__"]:
        return "__init__"
    if len(parts) == 2 and modules[name].name != "__init__.py":
        return ""
    return parts[1]


def violations(src: Path, package: str, layers: dict[str, int]) -> list[str]:
    """Every broken rule in `package` under `src`, one line each (empty when it keeps them).

    An import is upward when the imported module's layer ranks lower in the pipeline (a
    higher rank), sideways when it ranks the same in another folder; a module in a folder
    with no rank breaks the rule too (give the folder a layer). Then each folder's imports
    among its own modules must form no cycle.
    """
    modules = module_files(src, package)
    graph = {name: imported_modules(name, file, modules) for name, file in modules.items()}
    found = []
    for name, targets in sorted(graph.items()):
        here = layer_of(name, modules)
        if here not in layers:
            found.append(f"{name}: the folder '{here}' has no layer")
            continue
        for target in sorted(targets):
            if target not in modules:
                found.append(f"{name} imports {target}: no such module (an old path?)")
                continue
            there = layer_of(target, modules)
            if there == here or target == package:
                continue
            rank = layers.get(there, len(layers) + 1)
            words = f"{there or 'the leaves'} {{}} {here or 'the leaves'}"
            if rank > layers[here]:
                found.append(f"{name} imports {target}: upward ({words.format('after')})")
            elif rank == layers[here]:
                found.append(f"{name} imports {target}: sideways ({words.format('beside')})")
    return found + cycles(graph, modules)


def cycles(graph: dict[str, set[str]], modules: dict[str, Path]) -> list[str]:
    """One line per import cycle among the modules of one folder (depth-first search)."""
    found: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if target not in modules or layer_of(target, modules) != layer_of(name, modules):
                continue
            if state.get(target) == 1:
                loop = [*path[path.index(target) :], target]
                found.append("cycle: " + " -> ".join(loop))
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return found


def test_the_package_keeps_the_import_rule() -> None:
    modules = module_files(SRC, "neurosteer")
    assert len(modules) > 80  # the walk found the package
    assert violations(SRC, "neurosteer", LAYERS) == []


def _plant(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        file = root / "pkg" / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(textwrap.dedent(text))
    return root


CLEAN = {
    "__init__.py": "",
    "errors.py": "",
    "model/__init__.py": "",
    "model/layout.py": "from pkg.errors import X\n",
    "methods/__init__.py": "",
    "methods/circuit.py": "from pkg.model import layout\nfrom . import selection\n",
    "methods/selection.py": "import pkg.model.layout\n",
}


def test_a_clean_planted_package_passes(tmp_path: Path) -> None:
    assert violations(_plant(tmp_path, CLEAN), "pkg", LAYERS) == []


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "model/layout.py",
            "def f():\n    from pkg.methods.circuit import C\n",
            "pkg.model.layout imports pkg.methods.circuit: upward (methods after model)",
        ),
        (
            "model/layout.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.methods\n",
            "pkg.model.layout imports pkg.methods: upward (methods after model)",
        ),
        (
            "errors.py",
            "from .model import layout\n",
            "pkg.errors imports pkg.model.layout: upward (model after the leaves)",
        ),
        (
            "evaluation/kl.py",
            "from pkg.export import gguf\n",
            "pkg.evaluation.kl imports pkg.export.gguf: sideways (export beside evaluation)",
        ),
        (
            "methods/selection.py",
            "from pkg.methods.circuit import C\n",
            "cycle: pkg.methods.circuit -> pkg.methods.selection -> pkg.methods.circuit",
        ),
        ("misc/x.py", "", "pkg.misc.x: the folder 'misc' has no layer"),
        (
            "methods/circuit.py",
            "from pkg.layout import X\n",
            "pkg.methods.circuit imports pkg.layout: no such module (an old path?)",
        ),
    ],
)
def test_a_planted_break_fails(tmp_path: Path, name: str, text: str, expected: str) -> None:
    files = {**CLEAN, "evaluation/__init__.py": "", "export/__init__.py": "", "export/gguf.py": ""}
    files[name] = text
    found = violations(_plant(tmp_path, files), "pkg", LAYERS)
    assert expected in found, found
