"""The code's data flows one way: each package imports only from the layers below it, and no module
imports another that (directly or not) imports it back. Walked from the source, imports inside
functions included (a deferred import hides a cycle, it does not remove it)."""

import ast
from pathlib import Path

import nfpsim

ROOT = Path(nfpsim.__file__).parent
# bottom to top; packages on one line may not import each other
LAYERS = [
    ("errors", ""),  # "" is nfpsim/__init__.py (the version and lazy re-exports)
    ("cache", "config", "io", "routing"),
    ("shapes",),
    ("latency",),
    ("kernels", "nfp", "nfp_settings"),
    ("calibration", "capture"),
    ("validation",),
    ("sim",),
    ("search",),
    ("report",),
    ("cli",),
]
LEVEL = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "nfpsim":
                for alias in node.names:  # `from package import module` imports the module
                    sub = ROOT.parent / (node.module + "." + alias.name).replace(".", "/")
                    found.add(f"{node.module}.{alias.name}" if sub.with_suffix(".py").exists() or sub.is_dir()
                              else node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.split(".")[0] == "nfpsim")
        graph[module_name(path)] = found
    return graph


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_package_has_a_layer():
    assert {package(m) for m in imports()} <= set(LEVEL)


def test_no_package_imports_from_a_layer_above_or_beside_it():
    upward = sorted(f"{m} imports {d}" for m, deps in imports().items() for d in deps
                    if package(m) != package(d) and LEVEL[package(d)] >= LEVEL[package(m)]
                    and package(d) != "")  # the root is imported for __version__ only
    assert upward == []


def test_no_import_cycle_between_modules():
    graph = imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if dep not in graph:
                continue
            if state.get(dep) == 1:
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]) if dep in path else f"{module} -> {dep}")
            elif dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
