"""The package's architecture, enforced from the source (every import, including those inside functions):

* layers: ``core`` (plain Python) under everything; ``data`` and ``plan`` on ``core``; ``megatron`` (the only
  package that touches NeMo / megatron-core / NeMo-Aligner / Lightning) on ``data``; ``hf`` on ``megatron``;
  ``evaluation`` and ``serving`` reach models only through the ``Scorer`` protocol or a loader; ``cli`` on top;
* no import cycle, no reaching into another module's private names;
* modules over ~400 lines and functions over ~60 are listed below with a reason, or split.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nemo_hs2"
THIRD_PARTY_STACK = ("nemo", "megatron", "nemo_aligner", "lightning", "pytorch_lightning", "apex",
                     "transformer_engine")
# package -> the packages it may import (itself included)
LAYERS = {
    "core": {"core"},
    "data": {"core", "data"},
    "plan": {"core", "plan"},
    "megatron": {"core", "data", "plan", "megatron"},
    "hf": {"core", "data", "megatron", "hf"},
    "evaluation": {"core", "data", "megatron", "hf", "evaluation"},
    "serving": {"core", "data", "serving"},
    "cli": {"core", "data", "plan", "megatron", "hf", "evaluation", "serving", "cli"},
}
LONG_MODULES = {  # path -> why it stays one file
    "serving/app.py": "the HTTP server: admission, routes and their limits are one state machine",
}
LONG_FUNCTIONS = {  # (path, function) -> why it stays one function
    ("megatron/train_recipe.py", "_train"): "NeMo-Aligner's recipe, one straight sequence of its steps in its order",
    ("evaluation/annotate.py", "annotate"): "the resumable loop: its progress state is shared by the row loop and "
                                            "the batch writer",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _trees() -> dict[str, tuple[Path, ast.Module]]:
    return {_module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in PACKAGE.rglob("*.py")}


def _imports() -> dict[str, list[tuple[str, list[str], int]]]:
    """module -> [(imported module, names taken from it, line)] for every import, third-party included."""
    trees = _trees()
    graph = {}
    for name, (_, tree) in trees.items():
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    edges.append((sub, [], node.lineno) if sub in trees else (node.module, [alias.name], node.lineno))
            elif isinstance(node, ast.Import):
                edges += [(a.name, [], node.lineno) for a in node.names]
        graph[name] = [e for e in edges if e[0] != name]
    return graph


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None


def test_no_import_cycle():
    graph = {m: sorted({e[0] for e in edges if e[0].startswith("nemo_hs2")}) for m, edges in _imports().items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in graph.get(m, ()):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_private_names_across_modules():
    bad = [f"{m}:{line} takes {name} from {target}" for m, edges in _imports().items()
           for target, names, line in edges if target.startswith("nemo_hs2") for name in names
           if name.startswith("_") and not name.startswith("__")]
    assert not bad, bad


def test_only_megatron_touches_the_nemo_stack():
    bad = [f"{m}:{line} imports {target}" for m, edges in _imports().items() if _package(m) != "megatron"
           for target, _, line in edges if target.split(".")[0] in THIRD_PARTY_STACK]
    assert not bad, bad


def test_layers_import_only_downward():
    bad = []
    for m, edges in _imports().items():
        layer = _package(m)
        for target, _, line in edges:
            if not target.startswith("nemo_hs2."):
                continue
            used = _package(target)
            if layer is None or used is None:  # the package root and its __init__ import nothing of ours
                bad.append(f"{m}:{line} imports {target} (every module lives in a layer)")
            elif used not in LAYERS[layer]:
                bad.append(f"{m}:{line} ({layer}) imports {target} ({used})")
    assert not bad, bad


def test_every_module_is_in_a_layer():
    assert {_package(m) for m in _trees() if m != "nemo_hs2"} == set(LAYERS)


def test_long_modules_and_functions_say_why():
    long_modules, long_functions = set(), set()
    for name, (path, tree) in _trees().items():
        rel = str(path.relative_to(PACKAGE))
        if len(path.read_text().splitlines()) > 400:
            long_modules.add(rel)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long_functions.add((rel, node.name))
    assert long_modules == set(LONG_MODULES), "split it, or say why in LONG_MODULES"
    assert long_functions == set(LONG_FUNCTIONS), "split it, or say why in LONG_FUNCTIONS"
