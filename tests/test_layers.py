"""Dependencies point one way, as README's "Layout" states: core knows no Ray or MLflow, the record no torch, Ray
or launcher, analysis no launcher and of core only its torch-free statistics (core.fits, core.stats).

Checked twice: on the source (every import statement, also inside functions)
and in fresh processes (what importing every module of a package loads).
"""

import ast
import json
import subprocess

import pytest

from conftest import PYTHON, ROOT, python_env

FORBIDDEN = {  # package -> top-level modules it must never import
    "core": {"ray", "mlflow", "tune_jobs", "record", "analysis"},
    "record": {"torch", "ray", "tune_jobs", "core", "analysis"},
    "analysis": {"torch", "ray", "tune_jobs"},
}
# Loading a trained model needs torch; that module imports it inside its one function (so the fresh-process test
# below still finds torch unloaded by importing analysis).
EXCEPTIONS = {"analysis/models.py": {"torch"}}
#: package -> the only modules of core it may import (None: any)
CORE_ALLOWED = {"analysis": {"core.fits", "core.stats"}}
CORE_EXCEPTIONS = {"analysis/models.py": {"core.models"}}


def imported_modules(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_source_file_imports_across_the_layer(package):
    offending = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        allowed = EXCEPTIONS.get(str(path.relative_to(ROOT)), set())
        bad = {name for name in imported_modules(path) if name.split(".")[0] in FORBIDDEN[package] - allowed}
        if package in CORE_ALLOWED:
            fine = CORE_ALLOWED[package] | CORE_EXCEPTIONS.get(str(path.relative_to(ROOT)), set())
            bad |= {name for name in imported_modules(path) if name.split(".")[0] == "core" and name not in fine}
        if bad:
            offending[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offending, offending


LOAD_ALL = """
import importlib, json, pkgutil, sys
package = importlib.import_module({package!r})
for info in pkgutil.walk_packages(package.__path__, {package!r} + "."):
    importlib.import_module(info.name)
print(json.dumps(sorted({{name.split(".")[0] for name in sys.modules}})))
"""


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_importing_every_module_loads_nothing_across_the_layer(package, tmp_path):
    proc = subprocess.run([PYTHON, "-c", LOAD_ALL.format(package=package)], cwd=tmp_path, env=python_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert not loaded & FORBIDDEN[package], sorted(loaded & FORBIDDEN[package])


LAUNCHER_IMPORTS = """
import sys
from tune_jobs.cli import parse_launch
from tune_jobs.study import load_study
import tune_jobs.runner, tune_jobs.worker, tune_jobs.progress, record.write
launch = parse_launch(load_study({study!r}), ["--tracking-uri", {uri!r}])
print(len(launch.points), "torch" in sys.modules)
"""


@pytest.mark.parametrize(("study", "n_points"), [("poison_sensitivity", 81), ("adversarial_scaling", 36)])
def test_the_launcher_of_a_synthetic_study_never_loads_torch(study, n_points, tmp_path):
    """torch (~220 MB, ~1.3 s) is for the Ray trials that compute points; the driver only builds configs."""
    code = LAUNCHER_IMPORTS.format(study=study, uri=f"sqlite:///{tmp_path / 'm.db'}")
    proc = subprocess.run([PYTHON, "-c", code], cwd=tmp_path, env=python_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [str(n_points), "False"]
