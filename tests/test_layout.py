"""The package's layout holds: Keras internals behind one door, dependencies one way,
small modules. Read from the source itself, so a change that breaks the layout fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "frostline"
# Lower layers first; a module may import its own layer and the layers below it.
LAYERS = {
    "_backend": 0, "_keras": 0, "_state": 0, "errors": 0,
    "model": 1, "plan": 2, "inspect": 3, "apply": 4, "cache": 5, "train": 6, "app": 7,
    "__init__": 8, "__main__": 8,
}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(("frostline",) + parts)
        out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS["__init__"] if len(parts) == 1 else LAYERS[parts[1]]


def _imports(module: str, path: Path) -> set[str]:
    """Every frostline module `module` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from frostline import _keras` imports frostline._keras, not the package.
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            names += [node.module] if node.module != "frostline" else []
        else:
            continue
        found.update(n for n in names if n in MODULES and n != module)
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _private_names_frostline_defines() -> set[str]:
    names = set()
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


_BY_NAME = {"getattr", "hasattr", "setattr", "delattr"}
_DICT_METHODS = {"get", "pop", "setdefault"}


def _is_dict_of(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "__dict__"


def _attribute_names_in_strings(node: ast.AST) -> list[ast.Constant]:
    """String constants used as attribute names: `getattr(x, "_n")`, `x.__dict__["_n"]`,
    `x.__dict__.get("_n")`."""
    if isinstance(node, ast.Call):
        func = node.func
        by_name = isinstance(func, ast.Name) and func.id in _BY_NAME
        by_dict = isinstance(func, ast.Attribute) and func.attr in _DICT_METHODS and _is_dict_of(func.value)
        if by_name or by_dict:
            return [a for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    if isinstance(node, ast.Subscript) and _is_dict_of(node.value):
        if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            return [node.slice]
    return []


def _private_keras_uses(path: Path, ours: set[str]) -> list[str]:
    """Private attributes (`x._name`, `getattr(x, "_name")`, `x.__dict__["_name"]`) that
    frostline does not define, and `keras.src` imports. Python's own (`sys._getframe`)
    are not Keras's."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        for constant in _attribute_names_in_strings(node):
            text = constant.value
            if text.startswith("_") and not text.startswith("__") and text not in ours:
                found.append(f"line {constant.lineno}: {text!r}")
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras.src"):
            found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import) and any(a.name.startswith("keras.src") for a in node.names):
            found.append(f"line {node.lineno}: import keras.src...")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            python_own = isinstance(node.value, ast.Name) and node.value.id == "sys"
            if node.attr not in ours and not python_own:
                found.append(f"line {node.lineno}: .{node.attr}")
    return found


def test_no_module_outside_keras_door_touches_a_private_keras_name():
    ours = _private_names_frostline_defines()
    offenders = {
        module: uses
        for module, path in MODULES.items()
        if module != "frostline._keras" and (uses := _private_keras_uses(path, ours))
    }
    assert offenders == {}, "private Keras names outside frostline/_keras.py: " + repr(offenders)


def test_the_keras_door_really_is_where_the_private_names_are():
    # The check above must be able to fail: _keras.py itself is full of them.
    assert _private_keras_uses(MODULES["frostline._keras"], _private_names_frostline_defines())


def test_dependencies_point_one_way_between_layers():
    upward = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_no_import_cycle_also_through_function_level_imports():
    visiting, done, cycles = set(), set(), []

    def visit(module: str, trail: list[str]) -> None:
        if module in done:
            return
        if module in visiting:
            cycles.append(" -> ".join(trail[trail.index(module):] + [module]))
            return
        visiting.add(module)
        for target in sorted(GRAPH[module]):
            # A package imports its submodules when they are imported; that is no cycle.
            if not target.startswith(module + "."):
                visit(target, trail + [module])
        visiting.discard(module)
        done.add(module)

    for module in sorted(GRAPH):
        visit(module, [])
    assert cycles == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_at_most_400_lines(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines"


def test_every_layer_named_is_a_folder_or_module():
    top = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert top == set(LAYERS)
