"""The modules of inferbridge import each other without a cycle, and each imports on its own.

The import graph is read from the source with ``ast``: every import of an inferbridge module,
at module level or inside a function (a function-local import that only breaks a cycle is still
a cycle), except those under ``if TYPE_CHECKING:``, which never run.
"""

import ast
import subprocess
import sys
from pathlib import Path

import inferbridge
import pytest

PACKAGE_DIR = Path(inferbridge.__file__).resolve().parent
# Modules that checking a spec imports: they must stay free of Beam's inference package, which
# imports torch where it is installed (seconds, and gigabytes of shared libraries).
LIGHT = ("inferbridge.frameworks", "inferbridge.model_checks", "inferbridge.policy", "inferbridge.spec")


def _module_names() -> dict[str, Path]:
    """{dotted module name: source file} for every module of the package."""
    names = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


MODULES = _module_names()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST):
    """Every Import and ImportFrom node in ``node``, but not those under ``if TYPE_CHECKING:``."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
        return
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        children = node.orelse
    else:
        children = list(ast.iter_child_nodes(node))
    for child in children:
        yield from _imports(child)


def _ancestors(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _targets(module: str, node: ast.AST) -> set[str]:
    """The inferbridge modules that ``node``, in ``module``, runs when it is executed.

    Importing ``a.b.c`` runs ``a`` and ``a.b`` first, except those already being imported (the
    importer's own packages). ``from p import name`` needs the module ``p.name`` if there is
    one, else the attribute of ``p``, so ``p`` itself, even when ``p`` is the importer's package.
    """
    wanted: set[str] = set()
    if isinstance(node, ast.Import):
        wanted = {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        for alias in node.names:
            wanted.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    targets = set()
    for name in wanted:
        if name.split(".")[0] != "inferbridge":
            continue
        targets.add(name)
        targets |= _ancestors(name) - _ancestors(module) - {module}
    return targets & set(MODULES) - {module}


def import_graph() -> dict[str, set[str]]:
    return {
        module: set().union(*(_targets(module, node) for node in _imports(ast.parse(path.read_text()))))
        for module, path in MODULES.items()
    }


def _cycle(graph: dict[str, set[str]]):
    """One cycle of ``graph`` as a list of modules, or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str):
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_is_read_from_the_source():
    graph = import_graph()
    assert "inferbridge.frameworks" in graph["inferbridge.policy"]
    assert "inferbridge.model_checks" in graph["inferbridge.spec"]
    assert "inferbridge.frameworks.sklearn" in graph["inferbridge.frameworks"]
    # Under TYPE_CHECKING only: no edge.
    assert "inferbridge.spec" not in graph["inferbridge.models"]


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_modules_import_each_other_without_a_cycle():
    cycle = _cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _fresh_import(*modules: str) -> set[str]:
    """Imports ``modules`` in a fresh interpreter, so that no other module was imported first;
    returns the names of the modules it then holds."""
    script = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    script += "print(' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_every_module_imports():
    _fresh_import(*sorted(MODULES))


@pytest.mark.parametrize("module", LIGHT)
def test_checking_a_spec_imports_no_framework(module):
    assert "torch" not in _fresh_import(module), f"importing {module} imported torch"


def test_the_package_the_service_and_a_sklearn_pipeline_import_no_torch(tmp_path):
    # Beam's inference module imports torch for its model manager, which InferBridge never uses.
    script = f"""
import pickle, sys
import apache_beam as beam
from sklearn.linear_model import LinearRegression
from inferbridge import Inference, LoadPolicy, Model
import inferbridge.expansion_service
assert "torch" not in sys.modules, "importing inferbridge imported torch"
with open({str(tmp_path / "m.pkl")!r}, "wb") as f:
    pickle.dump(LinearRegression().fit([[0.0], [1.0]], [0.0, 2.0]), f)
with beam.Pipeline() as p:
    _ = p | beam.Create([beam.Row(id="a", f=[3.0])]) | Inference(
        Model.sklearn({str(tmp_path / "m.pkl")!r}), key_field="id", feature_fields="f",
        policy=LoadPolicy(trusted_roots=({str(tmp_path)!r},)))
assert "torch" not in sys.modules, "running a scikit-learn pipeline imported torch"
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
