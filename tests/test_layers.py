"""The import graph of ``celltally`` against the layers documented in docs/architecture.md: no
module imports upward, there is no cycle, and the table names every module."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "celltally"
ROW = re.compile(r"^\| (\d+) \| ([^|]+) \|")


def documented_layers() -> dict[str, int]:
    """Top-level module or package name -> layer, from the table in docs/architecture.md."""
    layers = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        match = ROW.match(line)
        if match:
            for name in re.findall(r"`([\w.]+)`", match.group(2)):
                layers[name] = int(match.group(1))
    return layers


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path) -> set[str]:
    """The ``celltally`` modules ``path`` imports when it runs (anywhere in it, functions
    included), leaving out those under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    hints = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in hints:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("celltally"):
            for alias in node.names:  # ``from celltally import diameter``: the submodule
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("celltally"))
    return found


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def graph() -> dict[str, set[str]]:
    """Module -> the modules it imports."""
    return {
        name: {target for target in runtime_imports(path) if target in MODULES} - {name}
        for name, path in MODULES.items()
    }


def layer_of(module: str, layers: dict[str, int]) -> int | None:
    parts = module.split(".")[1:]
    return layers.get(parts[0]) if parts else None  # the package root re-exports: no layer


def test_the_table_names_every_module_and_only_modules():
    layers = documented_layers()
    assert layers, "no layer table found in docs/architecture.md"
    tops = {name.split(".")[1] for name in MODULES if "." in name}
    assert tops == set(layers), (sorted(tops - set(layers)), sorted(set(layers) - tops))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_layer(module):
    layers = documented_layers()
    own = layer_of(module, layers)
    if own is None:
        return
    upward = [m for m in graph()[module] if (layer_of(m, layers) or 0) > own]
    assert not upward, f"{module} (layer {own}) imports {upward}"


def test_there_is_no_import_cycle():
    imports = graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in imports[module]:
            if state.get(target) == "open":
                cycle = [*path[path.index(target) :], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in imports:
        if module not in state:
            visit(module, [module])


MAX_FUNCTION_LINES = 60


def test_no_function_is_longer_than_a_screen():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = node.decorator_list[0].lineno if node.decorator_list else node.lineno
                if node.end_lineno - start + 1 > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {node.end_lineno - start + 1} lines")
    assert not long, long
