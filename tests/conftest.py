"""Shared fixtures: a fresh SQLite MLflow store and Ray storage folder per test."""

import os
import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Under pytest-xdist (scripts/test.sh runs two workers), each worker keeps its Ray clusters, sessions and address
# file in a temp folder of its own: a local Ray started by one worker's test is not the cluster another's joins.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import tempfile

    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix=f"ray-{os.environ['PYTEST_XDIST_WORKER']}-", dir="/tmp")

from tune_jobs.ray_env import local_ray_settings  # noqa: E402 - after RAY_TMPDIR, before anything imports Ray

# Before any test module imports Ray (Ray reads some of these at import): a launch in this process starts its local
# Ray as `python -m tune_jobs` does, the v2 autoscaler monitor included (v1's holds up each shutdown for a second).
local_ray_settings()


def pytest_unconfigure(config):
    """Remove this worker's Ray temp folder (its Ray sessions have ended with the tests that started them)."""
    folder = os.environ.get("RAY_TMPDIR", "")
    if os.environ.get("PYTEST_XDIST_WORKER") and os.path.basename(folder).startswith("ray-"):
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


#: Session fixtures worth computing once: under pytest-xdist the tests that read one run on one worker.
SHARED_SWEEPS = ("default_poison_sweep", "reduced_poison_sweep")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Group the readers of each shared sweep (``--dist loadgroup``); a module with a costly module fixture groups
    itself with ``pytestmark = pytest.mark.xdist_group(...)``."""
    for item in items:
        for name in SHARED_SWEEPS:
            if name in item.fixturenames:
                item.add_marker(pytest.mark.xdist_group(name))
                break


UNGROUPED = pytest.StashKey[str]()


def pytest_collection_finish(session):
    """Under ``--dist loadgroup``, note whether pytest-xdist could group the tests (it adds ``@GROUP`` to a grouped
    test's id; under pytest 9.2 that no longer takes, pytest-xdist#1386): ungrouped, each worker would compute every
    shared sweep and module fixture again, so every test then fails at once saying so."""
    if not session.config.getoption("loadgroup", False):
        return
    lost = [item.nodeid for item in session.items
            if item.get_closest_marker("xdist_group") and "@" not in item.nodeid.rsplit("]", 1)[-1]]
    if lost:
        from importlib.metadata import version

        session.config.stash[UNGROUPED] = (
            f"pytest-xdist did not group {len(lost)} tests marked xdist_group (first: {lost[0]}): pytest "
            f"{pytest.__version__} with pytest-xdist {version('pytest-xdist')} cannot (see the pin in pyproject.toml)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if UNGROUPED in item.config.stash:
        pytest.fail(item.config.stash[UNGROUPED], pytrace=False)


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


@pytest.fixture(scope="session")
def default_poison_sweep(tmp_path_factory):
    """One finished default (81-point) poison_sensitivity sweep with ``--analyze``, launched once per session as
    ``python -m tune_jobs poison_sensitivity`` and read by the tests that only read it (test_poison_full_table).

    While it runs (10 points finished), a second launch tries ``--resume`` on it: test_hardening asserts that this
    launch is refused and that the sweep still completes; here it is only recorded, so that every reader sees the
    same single launch."""
    import subprocess
    import time

    from mlflow.tracking import MlflowClient

    from record import schema
    from record.runs import search_all_runs

    root = tmp_path_factory.mktemp("default_poison_sweep")
    uri, out, log_path = f"sqlite:///{root / 'mlflow.db'}", root / "analysis", root / "first.log"
    common = ["--tracking-uri", uri, "--storage-path", str(root / "ray")]

    def finished() -> int:
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("poison_sensitivity")
        runs = search_all_runs(client, [experiment.experiment_id], f"tags.`{schema.TAG_KIND}` = '{schema.KIND_POINT}'")
        return sum(r.info.status == "FINISHED" for r in runs)

    with open(log_path, "w+") as log:
        first = subprocess.Popen([PYTHON, "-m", "tune_jobs", "poison_sensitivity", *common, "--analyze", str(out)],
                                 cwd=root, env=python_env(), stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        try:
            second, second_took = None, None
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and first.poll() is None:
                try:
                    if finished() >= 10:
                        break
                except Exception:  # the store may not exist yet
                    pass
                time.sleep(0.5)
            if first.poll() is None:
                started = time.monotonic()
                second = subprocess.run([PYTHON, "-m", "tune_jobs", "poison_sensitivity", *common, "--resume"],
                                        cwd=root, env=python_env(), capture_output=True, text=True, timeout=600)
                second_took = time.monotonic() - started
            returncode = first.wait(timeout=600)
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
                first.wait()
        log.seek(0)
        output = log.read()
    return {"uri": uri, "out": out, "dir": root, "returncode": returncode, "output": output,
            "second": second, "second_took": second_took}


#: The reduced poison_sensitivity sweep of ``reduced_poison_sweep``: 4 fractions x 2 widths x 2 seeds, 30 epochs.
REDUCED_POISON_GRID = ["--grid", "poison_fraction=0,0.2,0.4,0.5", "--grid", "hidden_width=16,32", "--grid", "seed=1,2",
                       "--set", "epochs=30"]


@pytest.fixture(scope="session")
def reduced_poison_sweep(tmp_path_factory):
    """One reduced poison_sensitivity sweep (REDUCED_POISON_GRID, experiment 'ps-test') launched in this process,
    then its analysis (``run_analysis``: one analysis run); computed once per session and read by the tests that only
    read it (test_poison_sweep, test_findings_metrics). Both statuses are recorded for the tests to assert."""
    from analysis.common import run_analysis
    from analysis.poison_sensitivity import ANALYSIS
    from record.read import read_sweep
    from tune_jobs.runner import main

    root = tmp_path_factory.mktemp("reduced_poison_sweep")
    uri, out = f"sqlite:///{root / 'mlflow.db'}", root / "out"
    here = os.getcwd()
    saved_uri = os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(root)
    try:
        status = main("poison_sensitivity", REDUCED_POISON_GRID + ["--tracking-uri", uri, "--storage-path",
                                                                   str(root / "ray"), "--experiment", "ps-test"])
        analysis_status = run_analysis(ANALYSIS, read_sweep("ps-test", uri, study="poison_sensitivity"), out)
    finally:
        os.chdir(here)
        if saved_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved_uri
    return {"uri": uri, "out": out, "dir": root, "experiment": "ps-test", "status": status,
            "analysis_status": analysis_status}
