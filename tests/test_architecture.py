"""The rule import-linter cannot express exactly: the runtime never imports the heavy libraries at
module level, directly or through another module.

import-linter (``.importlinter``, run by ``lint-imports``) checks the layers and the cycles, but its
graph mixes module-level imports with the lazy ones inside functions, and a backend must import
tensorrt or pycuda inside the function that needs it. So this test reads the sources with ``ast``:
an import counts when it runs while the module is imported (at module level, in a class body, in a
module-level ``if``/``try``/``with``), not inside a function and not under ``if TYPE_CHECKING:``.
Importing a module also imports its parent packages, so their ``__init__`` counts too.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Top-level folder -> import package (setup.py's package_dir).
PACKAGES = {"runtime": "edgetile.runtime", "export": "edgetile.export", "train": "edgetile.train"}
HEAVY = ("torch", "torchvision", "ultralytics", "onnx", "tensorrt", "pycuda")


@dataclass(frozen=True)
class Import:
    """One module-level import statement: who imports what, and where."""

    importer: str
    imported: str  # an edgetile module, or the top-level name of another distribution
    path: Path
    line: int  # 0: not a statement, the parent package Python imports first

    def __str__(self) -> str:
        where = self.path.relative_to(ROOT) if ROOT in self.path.parents else self.path
        return f"{self.importer} -> {self.imported} ({where}:{self.line or 'parent package'})"


def module_files() -> dict[str, Path]:
    """Every edgetile module name -> its source file (a package's name maps to its __init__.py)."""
    files = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join([package, *parts])] = path
    return files


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _run_at_import(body: list[ast.stmt]):
    """The import statements among ``body`` that run when the module is imported."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _run_at_import(node.orelse)
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                yield from _run_at_import(getattr(node, field, None) or [])


def _with_parents(name: str, known: dict[str, Path]) -> list[str]:
    """``name`` and the edgetile packages above it that Python imports first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in known]


def _targets(node: ast.Import | ast.ImportFrom, module: str, known: dict[str, Path]) -> list[str]:
    """The modules an import statement in ``module`` loads: edgetile names, or a top-level name."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            package = module if known[module].name == "__init__.py" else module.rpartition(".")[0]
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module or ""
        # `from package import name` loads package.name when it is a submodule.
        names = [base] + [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
    found: list[str] = []
    for name in names:
        if name.startswith("edgetile."):
            found += _with_parents(name, known)
        else:
            found.append(name.split(".")[0])
    return found


def module_level_imports(known: dict[str, Path]) -> dict[str, list[Import]]:
    """Each module of ``known`` (name -> source file) -> the imports that run when it is imported."""
    graph: dict[str, list[Import]] = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[module] = [
            Import(module, target, path, node.lineno)
            for node in _run_at_import(tree.body)
            for target in _targets(node, module, known)
        ]
        # Python runs the parent packages' __init__ before the module itself.
        graph[module] += [Import(module, parent, path, 0) for parent in _with_parents(module, known)[:-1]]
    return graph


def heavy_chain(start: str, graph: dict[str, list[Import]]) -> list[Import] | None:
    """The shortest chain of module-level imports from ``start`` to a heavy library, or None."""
    came_from: dict[str, Import | None] = {start: None}
    queue = deque([start])
    while queue:
        module = queue.popleft()
        for imp in graph.get(module, []):
            if imp.imported in came_from:
                continue
            came_from[imp.imported] = imp
            if imp.imported in HEAVY:
                chain, step = [], came_from[imp.imported]
                while step is not None:
                    chain.append(step)
                    step = came_from[step.importer]
                return chain[::-1]
            queue.append(imp.imported)
    return None


GRAPH = module_level_imports(module_files())
RUNTIME = sorted(m for m in GRAPH if m.startswith("edgetile.runtime"))


@pytest.mark.parametrize("module", RUNTIME)
def test_runtime_module_never_imports_a_heavy_library_at_module_level(module):
    chain = heavy_chain(module, GRAPH)
    if chain is not None:
        pytest.fail(
            f"importing {module} imports {chain[-1].imported} at module level: "
            + "; ".join(str(step) for step in chain)
            + ". Import it inside the function that needs it.",
            pytrace=False,
        )


def _graph_from(sources: dict[str, str], tmp_path: Path) -> dict[str, list[Import]]:
    """module_level_imports() over a made-up tree instead of the project's."""
    known = {}
    for module, text in sources.items():
        known[module] = tmp_path / (module.replace(".", "_") + ".py")
        known[module].write_text(text)
    return module_level_imports(known)


@pytest.mark.parametrize(
    ("sources", "found"),
    [
        # a plain module-level import
        ({"edgetile.runtime.a": "import torch\n"}, "torch"),
        # the submodule's name decides, not the distribution's prefix: onnxruntime is not onnx
        ({"edgetile.runtime.a": "import onnxruntime\n"}, None),
        # inside a function: lazy, allowed
        ({"edgetile.runtime.a": "def f():\n    import tensorrt\n"}, None),
        # under TYPE_CHECKING: never runs
        (
            {"edgetile.runtime.a": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n"},
            None,
        ),
        # in a module-level try: runs at import
        ({"edgetile.runtime.a": "try:\n    import pycuda.driver\nexcept ImportError:\n    pass\n"}, "pycuda"),
        # through another module, by a relative import
        (
            {
                "edgetile.runtime.a": "from . import b\n",
                "edgetile.runtime.b": "from ultralytics import YOLO\n",
            },
            "ultralytics",
        ),
        # the other module's lazy import does not count
        (
            {"edgetile.runtime.a": "from .b import f\n", "edgetile.runtime.b": "def f():\n    import onnx\n"},
            None,
        ),
    ],
)
def test_heavy_chain_sees_only_what_runs_at_import(tmp_path, sources, found):
    chain = heavy_chain("edgetile.runtime.a", _graph_from(sources, tmp_path))
    assert (chain[-1].imported if chain else None) == found
