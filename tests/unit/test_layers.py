"""The package's imports go one way, with the data flow, and a registered model carries only what serving needs."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from transfer_rec.registry.code import PACKAGE_DIR, import_graph, stage_code

# Lower layers first; a module may import its own layer's modules and any layer listed before it.
LAYERS = [
    ["transfer_rec", "transfer_rec.config", "transfer_rec.manifests", "transfer_rec.runtime"],
    ["transfer_rec.io"],
    ["transfer_rec.schema"],
    ["transfer_rec.ops"],
    ["transfer_rec.metrics"],
    ["transfer_rec.recommender"],
    ["transfer_rec.selection"],
    ["transfer_rec.serving"],
    ["transfer_rec.registry"],
    ["transfer_rec.stages.pull"],
    ["transfer_rec.stages.validate"],
    # the Spark engine of unify and features sits beside the pandas stages it shares its logic with
    ["transfer_rec.spark", "transfer_rec.spark.session", "transfer_rec.spark.validate"],
    ["transfer_rec.stages.unify"],
    ["transfer_rec.spark.unify"],
    ["transfer_rec.stages.features"],
    ["transfer_rec.spark.features"],
    ["transfer_rec.stages.linked"],
    ["transfer_rec.stages.train"],
    ["transfer_rec.stages.evaluate"],
    ["transfer_rec.stages.promote"],
    ["transfer_rec.stages.publish"],
    ["transfer_rec.stages.pipeline", "transfer_rec.stages"],
    ["transfer_rec.benchmark", "transfer_rec.benchmark_linked", "transfer_rec.cli"],
]


def layer_of(module: str) -> int:
    """The index of the most specific layer prefix that names `module`."""
    best, best_len = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (module.startswith(prefix + ".") and prefix != "transfer_rec")
            if matches and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")
    return best


def test_every_import_points_down_or_sideways():
    upward = [(m, dep) for m, deps in import_graph().items() for dep in deps if layer_of(dep) > layer_of(m)]
    assert upward == [], f"imports against the data flow: {upward}"


def test_the_import_graph_has_no_cycles():
    graph = import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep) :] + [dep] if dep in path else [module, dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_package_never_imports_airflow_or_the_harnesses():
    offenders = []
    for path in PACKAGE_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            offenders += [(path.name, n) for n in names if n.split(".")[0] in {"airflow", "bench", "tests"}]
    assert offenders == []


def test_the_layer_check_catches_an_upward_import():
    # the rule itself must be able to fail: a metric importing a stage is against the flow
    assert layer_of("transfer_rec.stages.train") > layer_of("transfer_rec.metrics.ranking")
    assert layer_of("transfer_rec.io.storage") < layer_of("transfer_rec.schema.suites")
    with pytest.raises(AssertionError, match="no layer"):
        layer_of("elsewhere.module")


def test_a_registered_model_carries_the_serving_closure_only(tmp_path: Path):
    staged = stage_code(["transfer_rec.serving.pyfunc"], tmp_path)
    files = {p.relative_to(staged).as_posix() for p in staged.rglob("*.py")}
    assert "serving/pyfunc.py" in files
    assert not [
        f for f in files if f.startswith(("stages/", "registry/", "selection/")) or f in {"cli.py", "benchmark.py"}
    ]
    # and it is closed: the staged copy imports on its own, every package module it loads coming from the copy
    code = (
        "import sys, transfer_rec.serving.pyfunc; "
        "print('\\n'.join(m.__file__ for n, m in sys.modules.items() if n.startswith('transfer_rec')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(staged.parent)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert loaded and all(Path(f).is_relative_to(staged) for f in loaded), loaded


def test_the_import_graph_sees_the_package_imports():
    # the layer and cycle checks above read this graph: an empty one would pass them
    graph = import_graph()
    assert "transfer_rec.serving.bundle" in graph["transfer_rec.serving.pyfunc"]
    assert "transfer_rec.stages.features" in graph["transfer_rec.spark.features"]
