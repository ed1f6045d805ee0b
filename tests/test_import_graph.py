"""moeframe's imports flow one way: run/serve/workloads -> api -> engine -> components -> registry.

Every import statement counts, wherever it is written (module level, inside
a function, under ``TYPE_CHECKING``): a lazy import that closes a circle
still ties the layers together, and moving it to module level would crash.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "moeframe"

# Higher layers may import lower ones, never the reverse. The root package's
# re-export of the API (moeframe/__init__.py) is the public facade, outside the layers.
TOP_LAYER_PACKAGES = ("workloads", "server", "frontend")
BASE_MODULES = ("moeframe.registry", "moeframe.errors")


def module_files() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package)."""
    modules = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the moeframe modules its import statements name (a name imported from a package counts as the package)."""
    modules = module_files()

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, (path, is_package) in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(known(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = module.split(".") if is_package else module.split(".")[:-1]
                    base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else known(base))
        graph[module] = {t for t in targets if t and t.startswith("moeframe") and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path that returns to its start, else None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def layer(module: str) -> int:
    parts = module.split(".")
    if module in ("moeframe.run", "moeframe.serve") or parts[1] in TOP_LAYER_PACKAGES:
        return 4
    if module == "moeframe.api":
        return 3
    if parts[1] == "engine":
        return 2
    return 0 if module in BASE_MODULES else 1


def test_find_cycle_finds_a_hand_made_circle_and_passes_a_chain() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_lazy_and_type_checking_imports() -> None:
    graph = import_graph()
    assert "moeframe.api" in graph["moeframe.workloads.base"]  # under TYPE_CHECKING
    assert "moeframe.model.presets" in graph["moeframe.engine.builder"]  # inside a function


def test_moeframe_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_no_module_imports_a_higher_layer() -> None:
    graph = import_graph()
    upward = [
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module != "moeframe"
        for target in targets
        if target != "moeframe" and layer(target) > layer(module)
    ]
    assert not upward, "imports against the layers (run/serve/workloads -> api -> engine -> components -> registry): " + ", ".join(sorted(upward))
