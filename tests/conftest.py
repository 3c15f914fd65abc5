"""Shared fixtures: a fresh SQLite MLflow store and Ray storage folder per test."""

import os
import sys
from pathlib import Path

import pytest

from tune_jobs.ray_env import local_ray_settings

ROOT = Path(__file__).resolve().parents[1]

# Before any test module imports Ray (Ray reads some of these at import): a launch in this process starts its local
# Ray as `python -m tune_jobs` does, the v2 autoscaler monitor included (v1's holds up each shutdown for a second).
local_ray_settings()


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A per-test SQLite tracking URI and Ray storage path; the test runs in ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "ray": str(tmp_path / "ray"), "dir": tmp_path}


def python_env() -> dict[str, str]:
    """Environment for subprocesses running the project's modules."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # an in-process local launch sets it; clusters need it unset
    return env


PYTHON = sys.executable
