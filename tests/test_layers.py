"""The layer rules of the design map: `iap/` is the library and never reaches Prefect or the layers above it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ABOVE_THE_LIBRARY = ("prefect", "tasks", "flows")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            names.add(str(node.args[0].value))
    return names


def test_no_library_module_imports_prefect_or_the_layers_above():
    """Every import statement in iap/, lazy ones inside functions included."""
    found = {f"{path.relative_to(ROOT)}: {name}"
             for path in sorted((ROOT / "iap").rglob("*.py"))
             for name in _imported_modules(path)
             if name.split(".")[0] in ABOVE_THE_LIBRARY}
    assert not found, sorted(found)


def test_importing_every_library_module_loads_no_prefect():
    """At run time too: importing all of iap (the CLI included) brings in no Prefect module."""
    code = ("import importlib, pkgutil, sys, iap\n"
            "for m in pkgutil.walk_packages(iap.__path__, 'iap.'):\n"
            "    if not m.name.endswith('__main__'):\n"
            "        importlib.import_module(m.name)\n"
            f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {ABOVE_THE_LIBRARY!r})\n"
            "print(bad[:5]); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]


MODEL_LIBRARIES = ("torch", "diffusers", "transformers", "accelerate", "peft")


def test_the_program_and_the_data_flow_start_without_the_model_libraries():
    """`iap --help` took 10 s, and every command as long before its work began: the CLI imported torch,
    diffusers and transformers through the stage configs and result types. The program, its stage configs
    and the data flow (no model until img2dataset's workers) import none of them."""
    code = ("import sys, iap.cli.main, iap.pipeline.request, flows.data\n"
            f"heavy = [m for m in {MODEL_LIBRARIES!r} if m in sys.modules]\n"
            "print(heavy); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]


def test_only_the_storage_module_commits_outputs():
    """One copy of the atomic-write code: no other module renames, replaces or fsyncs a file."""
    calls = ("os.rename(", "os.replace(", "os.fsync(", "fs.pipe_file(", "fs.mv(")
    found = [f"{path.relative_to(ROOT)}: {call}" for path in sorted((ROOT / "iap").rglob("*.py"))
             if path.name != "storage.py" for call in calls if call in path.read_text()]
    assert not found, found


# The library's layers, lowest first: a module imports only from its own layer or the ones below, and the
# import graph has no cycle. The shapes world (the demo's data) sits low because it needs only the models, and
# only the preset layer, the demo and the CLI may import it, so the core never depends on the demo.
LAYERS = [["iap.errors"], ["iap.system"], ["iap.config"], ["iap.models"], ["iap.shapes"], ["iap.presets"],
          ["iap.attention", "iap.objective"], ["iap.data"], ["iap.cache"], ["iap.training"], ["iap.evaluation"],
          ["iap.release"], ["iap.pipeline"], ["iap.cli"], ["iap.entry", "iap.__main__"]]
MAY_IMPORT_SHAPES = ("iap.shapes", "iap.presets", "iap.pipeline.demo", "iap.cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    for rank, group in enumerate(LAYERS):
        if any(module == g or module.startswith(g + ".") for g in group):
            return rank
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py: place it")


def _library_graph() -> dict[str, set[str]]:
    """module -> the library modules it imports (any import statement, lazy ones included), by module name;
    `from pkg import module` counts as importing the module."""
    modules = {_module_name(p): p for p in sorted((ROOT / "iap").rglob("*.py"))}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for imported in _imported_modules(path) | _imported_names(path):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported not in ("iap", name):
                deps.add(imported)
        graph[name] = deps
    return graph


def _imported_names(path: Path) -> set[str]:
    """`from a.b import c` as the dotted name a.b.c (a module when c is one)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return {f"{node.module}.{alias.name}" for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 for alias in node.names}


def test_every_library_import_runs_downward_or_within_its_layer():
    graph = _library_graph()
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if _layer(d) > _layer(m))
    assert not upward, upward


def test_the_library_import_graph_has_no_cycle():
    graph, state, cycles = _library_graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [node, dep]) if dep in stack else f"{node} -> {dep}")
            elif dep not in state:
                visit(dep, stack + [node])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, cycles


def test_only_presets_the_demo_and_the_cli_import_the_shapes_world():
    found = sorted(f"{m} -> {d}" for m, deps in _library_graph().items() for d in deps
                   if d.startswith("iap.shapes") and not m.startswith(MAY_IMPORT_SHAPES))
    assert not found, found


def test_the_layer_rules_catch_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks above can fail: a planted upward import and a planted cycle are both reported."""
    planted = tmp_path / "iap"
    (planted / "models").mkdir(parents=True)
    (planted / "__init__.py").write_text("")
    (planted / "models" / "__init__.py").write_text("")
    (planted / "models" / "a.py").write_text("from iap.models import b\nfrom iap.pipeline import x\n")
    (planted / "models" / "b.py").write_text("import iap.models.a\n")
    (planted / "pipeline").mkdir()
    (planted / "pipeline" / "__init__.py").write_text("")
    (planted / "pipeline" / "x.py").write_text("from iap.shapes import y\n")
    (planted / "shapes").mkdir()
    (planted / "shapes" / "__init__.py").write_text("")
    (planted / "shapes" / "y.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    for check in (test_every_library_import_runs_downward_or_within_its_layer, test_the_library_import_graph_has_no_cycle,
                  test_only_presets_the_demo_and_the_cli_import_the_shapes_world):
        with pytest.raises(AssertionError):
            check()
