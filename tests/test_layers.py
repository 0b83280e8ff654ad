"""The layout is the flow: spec → run → results → analysis, each layer importing only layers below it."""

import ast
from pathlib import Path

import mue_bench

PACKAGE = Path(mue_bench.__file__).parent
# Lower number = lower layer. A module may import its own layer or lower ones, never a higher one.
LAYERS = {
    "errors": 0,
    "mue": 1, "data": 1,
    "spec": 2, "results": 2,
    "models": 3, "scoring": 3,
    "run": 4, "training": 4,
    "analysis": 5,
    "cli": 6, "__main__": 6,
}


def _unit(module: str) -> str:
    """The layer unit of a dotted module name: its first part below mue_bench."""
    return module.split(".")[1] if module.count(".") else "__init__"


def _imports() -> list[tuple[str, str]]:
    """(importing module, imported mue_bench module) for every import in the package, lazy ones included."""
    edges = []
    for path in PACKAGE.rglob("*.py"):
        module = "mue_bench." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mue_bench"):
                # `from mue_bench import x` imports the unit x; `from mue_bench.a.b import y` the unit a
                edges += ([(module, f"mue_bench.{a.name}") for a in node.names] if node.module == "mue_bench"
                          else [(module, node.module)])
            elif isinstance(node, ast.Import):
                edges += [(module, a.name) for a in node.names if a.name.startswith("mue_bench")]
    return edges


def test_every_module_belongs_to_a_layer():
    units = {_unit("mue_bench." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts))
             for p in PACKAGE.rglob("*.py")}
    assert units - {"__init__"} <= set(LAYERS), units - set(LAYERS)


def test_no_import_runs_from_a_lower_layer_to_a_higher_one():
    upward = []
    for importer, imported in _imports():
        src, dst = _unit(importer), _unit(imported)
        if "__init__" in (src, dst):
            continue  # mue_bench/__init__ holds only the version
        if LAYERS[dst] > LAYERS[src]:
            upward.append(f"{importer} imports {imported}")
    assert not upward, "\n".join(upward)


def test_the_layer_order_is_the_one_the_readme_draws():
    assert LAYERS["spec"] < LAYERS["run"] < LAYERS["analysis"]
    assert LAYERS["results"] < LAYERS["run"]
    assert LAYERS["mue"] < LAYERS["run"] and LAYERS["models"] < LAYERS["run"]
    assert LAYERS["cli"] == max(LAYERS.values())


def test_no_import_cycles_between_layer_units():
    graph: dict[str, set[str]] = {}
    for importer, imported in _imports():
        src, dst = _unit(importer), _unit(imported)
        if src != dst and "__init__" not in (src, dst):
            graph.setdefault(src, set()).add(dst)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    assert not [u for u in graph if reaches(u, u, {u})]
