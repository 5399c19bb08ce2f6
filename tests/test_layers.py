"""The layer rules of the design map: `iap/` is the library and never reaches Prefect or the layers above it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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


def test_only_the_storage_module_commits_outputs():
    """One copy of the atomic-write code: no other module renames, replaces or fsyncs a file."""
    calls = ("os.rename(", "os.replace(", "os.fsync(", "fs.pipe_file(", "fs.mv(")
    found = [f"{path.relative_to(ROOT)}: {call}" for path in sorted((ROOT / "iap").rglob("*.py"))
             if path.name != "storage.py" for call in calls if call in path.read_text()]
    assert not found, found


def test_the_core_knows_no_shapes_world():
    """The demo's world plugs in through iap.worlds: evaluation, reports, registry and training never import it."""
    core = ["evaluate.py", "report.py", "registry.py", "train.py", "objective.py", "cache.py", "stages.py",
            "pipeline.py", "image_metrics.py", "export.py", "generate.py"]
    found = [f"{name}: {module}" for name in core for module in _imported_modules(ROOT / "iap" / name)
             if module == "iap.shapes" or module.startswith("iap.shapes.") or module.endswith("import shapes")]
    assert not found, found
