"""The package's import graph: no cycles, no reaching into another module's private names, nothing below the
training flow importing it. Read from the source (every import, including those inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nemo_hs2"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, list[tuple[str, list[str], int]]]:
    """module -> [(imported nemo_hs2 module, names taken from it, line)]."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nemo_hs2"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    if sub in modules:  # ``from nemo_hs2.data import cache``
                        edges.append((sub, [], node.lineno))
                    else:
                        edges.append((node.module, [alias.name], node.lineno))
            elif isinstance(node, ast.Import):
                edges += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("nemo_hs2.")]
        graph[name] = [e for e in edges if e[0] != name]
    return graph


def test_no_import_cycle():
    graph = {m: sorted({e[0] for e in edges}) for m, edges in _imports().items()}
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
           for target, names, line in edges for name in names
           if name.startswith("_") and not name.startswith("__")]
    assert not bad, bad


def test_library_modules_do_not_import_the_training_flow():
    bad = [f"{m}:{line} imports {target}" for m, edges in _imports().items() if m != "nemo_hs2.megatron.train_recipe"
           for target, _, line in edges if target == "nemo_hs2.megatron.train_recipe"]
    assert not bad, bad
