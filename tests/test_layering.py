"""The package's import graph: no cycles, and the layering rules hold (runtimes and devices never
import converters, commands or torch; converters never import commands or the CLI; the core never
imports a command; only the loader, the PyTorch->ONNX converter and the torch runtime adapter
import torch). Imports inside functions count: the walk reads every `import` statement."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = {"edgepack": ROOT / "edgepack", "edgepack.converters": ROOT / "converters",
                "edgepack.runtimes": ROOT / "runtimes", "edgepack.devices": ROOT / "devices"}
TORCH_ALLOWED = {"edgepack.load", "edgepack.safe_pt2", "edgepack.converters.torch_to_onnx", "edgepack.runtimes.torch_eager"}


def _modules() -> dict[str, Path]:
    mods = {}
    for prefix, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods[".".join([prefix, *parts])] = path
    return mods


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in _walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package.split(".")
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def _walk(node: ast.AST):
    """ast.walk, less `if TYPE_CHECKING:` blocks (annotations only: they never run)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and getattr(child.test, "id", getattr(child.test, "attr", None)) == "TYPE_CHECKING":
            continue
        yield child
        yield from _walk(child)


def _internal(targets: set[str]) -> set[str]:
    return {t for t in targets if t in MODULES}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(name: str) -> str:
    for prefix in ("edgepack.commands", "edgepack.converters", "edgepack.runtimes", "edgepack.devices"):
        if name == prefix or name.startswith(prefix + "."):
            return prefix.split(".")[1]
    return "cli" if name in ("edgepack.cli", "edgepack.__main__") else "core"


def test_the_walk_sees_the_whole_package():
    assert len(MODULES) > 60
    assert "edgepack.converters.export_tflite.quantize" in MODULES and "edgepack.commands.pack" in MODULES


def test_no_import_cycles_between_modules():
    """Package __init__ re-exports aside, no module imports (directly or through others) a module
    that imports it back."""
    graph = {n: {t for t in _internal(GRAPH[n]) if t != n} for n in MODULES}
    state: dict[str, int] = {}
    cycles = []

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycle = stack[stack.index(m):] + [m]
                if not all(MODULES[c].name == "__init__.py" or c == n for c in cycle[:-1]):
                    cycles.append(" -> ".join(cycle))
            elif m not in state:
                visit(m, stack + [m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert cycles == []


@pytest.mark.parametrize("layer, forbidden", [
    ("runtimes", ("converters", "commands", "cli")),
    ("devices", ("converters", "commands", "cli")),
    ("converters", ("commands", "cli")),
    ("core", ("commands", "cli")),
])
def test_layers_import_only_downwards(layer, forbidden):
    bad = sorted(f"{n} imports {t}" for n in MODULES if _layer(n) == layer
                 for t in _internal(GRAPH[n]) if _layer(t) in forbidden)
    assert bad == []


def test_only_three_modules_import_torch():
    users = {n for n, targets in GRAPH.items() if any(t == "torch" or t.startswith("torch.") for t in targets)}
    assert users <= TORCH_ALLOWED, sorted(users - TORCH_ALLOWED)
    assert "edgepack.load" in users  # the walk does see imports inside functions
