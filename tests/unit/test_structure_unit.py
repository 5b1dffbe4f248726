"""The house's shape: imports point one way, no cycles, no module grown past its seams.

Read from the source (ast), so it holds for code that is never imported by a test, and for imports
inside functions too: those may only delay a heavy import (the CLI starts fast), never dodge a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "prefect_aimlapi_video"
# Where each subpackage's source is: the layers below the flows in src/, the product card's folders
# mapped in from the repository's top level (pyproject.toml, package-dir).
FOLDERS = {"": REPO / "src" / PACKAGE, "blocks": REPO / "blocks", "flows": REPO / "flows",
           "deployments": REPO / "deployments", "sandbox": REPO / "sandbox"}
MAX_LINES = 300
# A module's layer is its folder; lower layers never import higher ones. The package's own
# `__init__` (the public names) sits above them all; the sandbox stands apart (it is the remote side).
LAYER_ORDER = ("api", "media", "blocks", "storage", "submission", "tasks", "flows", "deployments")
LAZY_ALLOWED = {"deployments.cli", "deployments.cli_options"}  # imports inside functions: the CLI answers --help and bad input fast


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join(p for p in (package, *parts) if p).removesuffix(".__init__")
            found[name or "__init__"] = path
    return found


def layer_of(module: str) -> int | None:
    """The layer of a module: the index of its folder in `LAYER_ORDER` (None: the package root, the sandbox)."""
    folder = module.split(".", 1)[0]
    return LAYER_ORDER.index(folder) if folder in LAYER_ORDER else None


def _imports(name: str, path: Path) -> list[tuple[str, bool]]:
    """(imported module of ours, inside a function?) for each import in a module."""
    tree = ast.parse(path.read_text())
    inside = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: only the sandbox uses them, within itself
                base = name.rsplit(".", node.level if not path.name == "__init__.py" else node.level - 1)[0]
                targets = [f"{PACKAGE}.{base}.{node.module}" if node.module else f"{PACKAGE}.{base}"]
            elif node.module:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for target in targets:
            if target.startswith(PACKAGE + "."):
                found.append((target.removeprefix(PACKAGE + "."), id(node) in inside))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {target for target, _ in _imports(name, path) if target in modules and target != name}
    return graph


def test_no_import_cycles_even_through_imports_inside_functions():
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(trail[trail.index(target):] + [target] if target in trail else [node, target])
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_every_module_lives_in_a_layer_folder():
    homeless = [name for name in _modules() if layer_of(name) is None
                and name != "__init__" and not name.startswith("sandbox")]
    assert homeless == []


def test_imports_point_one_way():
    upward = [f"{name} ({LAYER_ORDER[layer_of(name)]}) imports {target} ({LAYER_ORDER[layer_of(target)]})"
              for name, targets in _graph().items() if layer_of(name) is not None
              for target in targets if layer_of(target) is not None and layer_of(target) > layer_of(name)]
    assert upward == []


def test_nothing_below_the_deployments_imports_them_and_the_sandbox_imports_nothing_of_ours():
    graph = _graph()
    assert [n for n, t in graph.items() if not n.startswith("deployments") and any(
        x.startswith("deployments") for x in t)] == []
    assert {t for n, ts in graph.items() if n.startswith("sandbox") for t in ts if not t.startswith("sandbox")} == set()


def test_imports_inside_functions_only_where_startup_time_asks_for_them():
    modules = _modules()
    lazy = sorted({f"{name} -> {target}" for name, path in modules.items() if name not in LAZY_ALLOWED
                   for target, in_function in _imports(name, path) if in_function})
    assert lazy == []


def test_no_module_past_its_seams():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_every_module_lives_in_its_layers_folder():
    homeless = sorted(name for name in _modules() if name != "__init__" and layer_of(name) is None
                      and not name.startswith("sandbox"))
    assert homeless == []


def test_unit_tests_mirror_the_layers():
    """A unit test sits in its module's layer folder; only tests of the whole house stay at the top."""
    unit = REPO / "tests" / "unit"
    folders = {p.name for p in unit.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    assert folders <= set(LAYER_ORDER)
    assert {p.name for p in unit.glob("test_*.py")} == {"test_structure_unit.py", "test_packaging_unit.py",
                                                        "test_local_services_unit.py", "test_docs_site_unit.py"}
    for folder in folders:
        modules = {name.rsplit(".", 1)[-1] for name in _modules() if name.startswith(f"{folder}.") or name == folder}
        strays = [p.name for p in (unit / folder).glob("test_*.py")
                  if not any(p.name.removeprefix("test_").startswith(m) for m in modules)]
        assert strays == [], f"tests/unit/{folder}: no module of that layer matches {strays}"
