"""The house's shape, checked on the source: imports point one way, routes stay thin."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Each package may import only the packages listed for it (besides itself).
ALLOWED = {
    "editor_core": set(),
    "editor_lab": {"editor_core"},
    "service": {"editor_core"},
    "bench": {"editor_core", "editor_lab", "service"},
    "instructedit_cli": {"editor_core", "editor_lab", "service", "bench"},
}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package: str) -> None:
    wrong = {str(p.relative_to(ROOT)): sorted(_imported_packages(p) - ALLOWED[package]
                                              - {package})
             for p in _modules(package)}
    assert not {k: v for k, v in wrong.items() if v}


def _route_functions() -> list[tuple[Path, ast.AsyncFunctionDef | ast.FunctionDef]]:
    out = []
    for path in [*_modules("service/routes"), *_modules("service/console")]:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
                    isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute)
                    and d.func.attr in {"get", "post", "put", "delete"}
                    for d in node.decorator_list):
                out.append((path, node))
    return out


def test_routes_are_thin_and_reach_nothing_but_handlers() -> None:
    routes = _route_functions()
    assert len(routes) >= 14
    for path, node in routes:
        lines = node.end_lineno - node.lineno + 1
        assert lines <= 20, f"{path.name}:{node.name} is {lines} lines"
        names = {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
        assert not names & {"engine", "store", "follower", "ledger"}, (path.name, node.name)


def test_each_dependency_alias_is_defined_once() -> None:
    defined = [str(p.relative_to(ROOT)) for p in _modules("service")
               if "Depends(" in p.read_text() and "Annotated[" in p.read_text()]
    assert defined == ["service/deps.py"]


def test_the_method_keeps_no_module_level_mutable_state() -> None:
    """Every object of ``editor_core`` lives in an instance someone holds (the edit memory's
    routing in its runtime, per model): no module-level dict, list, set or thread-local."""
    import importlib
    import pkgutil
    import threading
    import weakref

    import editor_core

    mutable = (dict, list, set, bytearray, threading.local, weakref.WeakKeyDictionary,
               weakref.WeakValueDictionary)
    found = []
    for info in pkgutil.walk_packages(editor_core.__path__, "editor_core."):
        module = importlib.import_module(info.name)
        found += [f"{info.name}.{name}" for name, value in vars(module).items()
                  if not name.startswith("__") and isinstance(value, mutable)]
    assert found == []


def _attribute_assignments(attribute: str) -> list[str]:
    """``path:line`` of each ``x.<attribute> = ...`` outside ``self.`` in the packages."""
    out = []
    for package in ALLOWED:
        for path in _modules(package):
            for node in ast.walk(ast.parse(path.read_text())):
                targets = node.targets if isinstance(node, ast.Assign) else []
                out += [f"{path.relative_to(ROOT)}:{node.lineno}" for t in targets
                        if isinstance(t, ast.Attribute) and t.attr == attribute
                        and not (isinstance(t.value, ast.Name) and t.value.id == "self")]
    return out


def test_the_live_stack_is_wired_in_one_place() -> None:
    """An editor's combination is chosen by ``load_editor`` or the live-stack factory, and
    no caller asks a combiner its class: the protocol says whether it routes."""
    assert _attribute_assignments("combination") == ["editor_core/live_stack.py:70"]
    combiners = {"EditMemory", "SumCombiner", "RidgeCombiner"}
    owners = {"editor_core/combination.py", "editor_core/memory.py"}
    for package in ALLOWED:
        for path in _modules(package):
            if str(path.relative_to(ROOT)) in owners:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance":
                    names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                    assert not names & combiners, f"{path}:{node.lineno}"
