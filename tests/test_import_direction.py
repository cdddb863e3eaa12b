"""Imports inside ``src/skintriage`` point one way: no module imports what sits above it, and none imports in a cycle.

Read statically (``ast``), without importing anything, over every ``src/skintriage/**/*.py``. Every import
statement counts, wherever it is: at module level and inside functions, methods and ``try`` blocks (a lazy
import still makes its module depend on the imported one; it only moves the cost), ``import x`` and
``from x import y``, absolute and relative. The one exclusion: imports in the body of ``if TYPE_CHECKING:``
(or ``if typing.TYPE_CHECKING:``) never run, so they are not edges; their ``else`` branch is.

An edge goes to the module the statement names: ``import a.b`` and ``from a import b`` (``b`` a module) give
``a.b``; ``from a.b import name`` (``name`` not a module) gives ``a.b``. The parent packages that Python also
initialises on the way are not added: a package ``__init__`` that imports its own submodules is the ordinary
pattern, not a cycle.

Rules:

* the library is a stack of layers in pipeline order (``LAYERS``, lowest first); a module imports only its own
  layer and those below it. Importing a layer above is an error, lazy imports included;
* no import cycle among the library's modules (lazy imports included), also within a layer;
* nothing imports the demo ``app``.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "skintriage"
# The stack, lowest first. A module belongs to the first entry it is, or sits under; each layer may import
# only itself and the layers listed before it. `metrics` sits under triage because calibration fits its
# referral thresholds with the same functions the evaluation reports (one definition of each score).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("skintriage", "skintriage.common"),  # the package root (version, disclaimer) and leaf helpers
    ("skintriage.data",),  # source -> manifest -> split -> dataset; the taxonomy and label maps
    ("skintriage.metrics",),  # pure scoring functions over arrays
    ("skintriage.model",),  # architectures, bundles, model card
    ("skintriage.triage",),  # calibration, uncertainty gates, photo type, referral rules, guidance
    ("skintriage.inference",),  # batch forward, predictor, backends, ONNX, Grad-CAM
    ("skintriage.evaluation",),  # evaluate a bundle, its result, its report
    ("skintriage.training",),  # config, loop, post-training pipeline, distributed launch
    ("skintriage.ui",),  # what the demo shows: cards, examples
    ("skintriage.bench",),  # benchmarks: use the library, never the reverse
    ("skintriage.cli",),  # the command line, on top
)
# Known cycles left in place, each a sorted tuple of module names with the reason. Empty: keep it so.
ALLOWED_CYCLES: dict[tuple[str, ...], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def library_files() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((SRC / PACKAGE).rglob("*.py"))}


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in ``tree``, at any depth, except those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        if isinstance(node, ast.If) and is_type_checking(node.test):
            children: list[ast.AST] = [node.test, *node.orelse]
        else:
            children = list(ast.iter_child_nodes(node))
        for child in children:
            visit(child)

    visit(tree)
    return found


def resolve_base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names, relative levels resolved against ``module``."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    anchor = package[: len(package) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def imported_modules(module: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported module, line) for every import in ``path``; names outside the library are kept as written."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    out: list[tuple[str, int]] = []
    for node in import_nodes(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno) for alias in node.names)
            continue
        base = resolve_base(module, is_package, node)
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            out.append((candidate if candidate in known else base, node.lineno))
    return out


def import_graph() -> tuple[dict[str, set[str]], dict[str, list[tuple[str, int]]]]:
    """(edges between library modules, every import of every module with its line)."""
    files = library_files()
    known = set(files)
    imports = {module: imported_modules(module, path, known) for module, path in files.items()}
    edges = {module: {target for target, _ in found if target in known} for module, found in imports.items()}
    return edges, imports


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def cycles(edges: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The strongly connected components with more than one module (or a module importing itself), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[str, ...]] = []

    def connect(node: str) -> None:  # Tarjan; the library is small enough for recursion
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges[node]:
                found.append(tuple(sorted(component)))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return sorted(found)


def cycle_path(edges: dict[str, set[str]], component: tuple[str, ...]) -> list[str]:
    """One concrete cycle through the component's first module (for the failure message)."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in sorted(edges[node] & members):
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if target not in previous:
                previous[target] = node
                queue.append(target)
    return [start]


def test_the_walk_sees_lazy_relative_and_type_checking_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "from ..up import name\n"
        "if TYPE_CHECKING:\n"
        "    import skipped\n"
        "else:\n"
        "    import kept\n"
        "def f():\n"
        "    import lazy.module\n"
    )
    tree = ast.parse(source)
    nodes = import_nodes(tree)
    named = [alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names]
    assert named == ["kept", "lazy.module"]
    froms = [node for node in nodes if isinstance(node, ast.ImportFrom)]
    assert resolve_base("skintriage.data.records", False, froms[1]) == "skintriage.data"
    assert resolve_base("skintriage.data.records", False, froms[2]) == "skintriage.up"
    assert resolve_base("skintriage.data", True, froms[1]) == "skintriage.data"


def test_the_graph_has_the_library() -> None:
    edges, _ = import_graph()
    assert {
        "skintriage.cli",
        "skintriage.inference.predictor",
        "skintriage.bench.suite",
        "skintriage.data.splits",
    } <= set(edges)
    assert "skintriage.inference.predictor" in edges["skintriage.bench.suite"]


def layer_of(module: str) -> int | None:
    """Index in ``LAYERS`` of the most specific layer entry ``module`` is or sits under; None outside the library."""
    best: tuple[int, int] | None = None  # (length of the matching entry, layer)
    for layer, entries in enumerate(LAYERS):
        for entry in entries:
            if within(module, entry) and (best is None or len(entry) > best[0]):
                best = (len(entry), layer)
    return None if best is None else best[1]


def wrong_way_imports(imports: dict[str, list[tuple[str, int]]]) -> list[str]:
    """Every import of a higher layer, or of the demo app, as ``module:line imports target (why)``."""
    wrong = []
    for module, found in sorted(imports.items()):
        here = layer_of(module)
        for target, line in found:
            if within(target, "app"):
                wrong.append(f"{module}:{line} imports {target} (the demo app sits above the library)")
                continue
            there = layer_of(target)
            if here is not None and there is not None and there > here:
                wrong.append(f"{module}:{line} imports {target} ({LAYERS[there][0]} sits above {LAYERS[here][0]})")
    return wrong


def test_every_library_module_has_a_layer() -> None:
    assert not [module for module in library_files() if layer_of(module) is None]
    packages = {path.parent.name for path in (SRC / PACKAGE).glob("*/__init__.py")}
    placed = {entry.split(".")[1] for entries in LAYERS for entry in entries if entry.count(".") == 1}
    assert packages <= placed, f"stage packages missing from LAYERS: {sorted(packages - placed)}"


def test_no_module_imports_what_sits_above_it() -> None:
    _, imports = import_graph()
    wrong = wrong_way_imports(imports)
    assert not wrong, "wrong-way imports:\n" + "\n".join(wrong)


def test_a_deliberate_upward_import_is_caught() -> None:
    """The check is live: the import issue 15 removed (the predictor backend timing itself with the benchmark
    package) and an evaluation module reaching into training are both reported, with their line."""
    _, imports = import_graph()
    planted = {module: list(found) for module, found in imports.items()}
    planted["skintriage.inference.backend"].append(("skintriage.bench.inference", 1))
    planted["skintriage.evaluation.report"].append(("skintriage.training.loop", 2))
    wrong = wrong_way_imports(planted)
    assert wrong == [
        "skintriage.evaluation.report:2 imports skintriage.training.loop "
        "(skintriage.training sits above skintriage.evaluation)",
        "skintriage.inference.backend:1 imports skintriage.bench.inference "
        "(skintriage.bench sits above skintriage.inference)",
    ]


def test_no_import_cycles() -> None:
    edges, _ = import_graph()
    found = [component for component in cycles(edges) if component not in ALLOWED_CYCLES]
    described = [" -> ".join(cycle_path(edges, component)) for component in found]
    assert not found, "import cycles (lazy imports count):\n" + "\n".join(described)
    stale = [component for component in ALLOWED_CYCLES if component not in cycles(edges)]
    assert not stale, f"allowed cycles that no longer exist (remove them from ALLOWED_CYCLES): {stale}"
