"""Issue 26: a store that lived for months. One default store (./mlruns) holds, oldest first, a random search, a
robust_loss sweep, an analysed poison_sensitivity sweep with its models, a launch that failed after its parent run
existed and an interrupted sweep; every README query and loading example then runs verbatim against it, in a fresh
interpreter in that folder, and finds the sweep it promises (real launches, real processes, real SQLite)."""

import json
import re
import signal
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import PYTHON, ROOT, python_env
from record import schema
from record.runs import search_all_runs
from test_sweeps import _failed_launch

pytestmark = pytest.mark.xdist_group(__name__)  # its module fixture: computed once, on one worker

SEARCH = ["poison_sensitivity", "--search", "random", "--num-samples", "2", "--space", "lr=loguniform(0.01,0.3)",
          "--grid", "hidden_width=8", "--grid", "poison_fraction=0.1", "--grid", "seed=1", "--set", "epochs=10"]
ROBUST_LOSS = ["robust_loss", "--grid", "loss=cross_entropy,symmetric_ce", "--grid", "seed=42", "--set", "epochs=2",
               "--set", "val_fraction=0.1"]
ANALYSED = ["poison_sensitivity", "--grid", "hidden_width=8,128", "--grid", "seed=42,43", "--log-models", "--analyze",
            "results/poison_sensitivity"]
INTERRUPTED = ["poison_sensitivity", "--grid", "poison_fraction=0,0.1", "--grid", "hidden_width=8", "--grid",
               "seed=1", "--set", "epochs=60000", "--points-per-trial", "1"]


def _launch(args, cwd):
    proc = subprocess.run([PYTHON, "-m", "tune_jobs", *args], cwd=cwd, env=python_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def _sweep_ids(uri, experiment):
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = search_all_runs(client, [experiment_id], f"tags.`{schema.TAG_KIND}` = '{schema.KIND_SWEEP}'")
    return {r.info.run_id: r.info.status for r in runs}


def _interrupt(cwd, uri):
    """A launch stopped with Ctrl-C while its points train: its points and sweep end, none FINISHED."""
    with open(cwd / "interrupted.log", "w+") as log:
        launch = subprocess.Popen([PYTHON, "-m", "tune_jobs", *INTERRUPTED], cwd=cwd, env=python_env(), stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        client, deadline = MlflowClient(uri), time.monotonic() + 300
        while time.monotonic() < deadline and launch.poll() is None:
            experiment = client.get_experiment_by_name("poison_sensitivity")
            points = search_all_runs(client, [experiment.experiment_id], schema.POINT_FILTER)
            if any(r.info.status == "RUNNING" and r.data.params.get("epochs") == "60000" for r in points):
                break
            time.sleep(0.5)
        launch.send_signal(signal.SIGINT)
        assert launch.wait(timeout=120) == 1, (log.seek(0), log.read()[-3000:])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    work = tmp_path_factory.mktemp("months")
    uri = f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"
    _launch(SEARCH, work)
    _launch(ROBUST_LOSS, work)
    before = set(_sweep_ids(uri, "poison_sensitivity"))
    _launch(ANALYSED, work)
    (analysed,) = set(_sweep_ids(uri, "poison_sensitivity")) - before
    failed = _failed_launch(uri)
    _interrupt(work, uri)
    return {"dir": work, "uri": uri, "analysed": analysed, "failed": failed}


def _example(name):
    match = re.search(rf"<!-- example: {re.escape(name)} -->\s*```python\n(.*?)```", (ROOT / "README.md").read_text(),
                      re.S)
    assert match, f"README lost its example {name!r}"
    return match.group(1)


def _run_example(name, cwd, check=""):
    proc = subprocess.run([PYTHON, "-c", _example(name) + check], cwd=cwd, env=python_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_the_store_holds_every_kind_of_sweep(store):
    statuses = sorted(_sweep_ids(store["uri"], "poison_sensitivity").values())
    assert statuses == ["FAILED", "FINISHED", "FINISHED", "KILLED"], "failed; search, analysed; interrupted"
    listed = subprocess.run([PYTHON, "-m", "tune_jobs", "sweeps", "--json"], cwd=store["dir"], env=python_env(),
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert len(json.loads(listed.stdout)) == 5, "every sweep of both studies listed"


def test_readme_queries_find_the_latest_finished_sweep(store):
    out = _run_example("query one sweep", store["dir"], "\nprint('the sweep:', sweep.run_id, len(runs))")
    assert f"the sweep: {store['analysed']} 18" in out, out  # its width-128 points: 9 poison fractions x 2 seeds
    out = _run_example("numeric questions", store["dir"], "\nprint('thresholds:', sorted(thresholds))")
    assert re.search(r"thresholds: \[(8, )?128\]", out), out  # width 8 may not cross 50 % within 0 ... 0.5


def test_readme_model_examples_load_from_the_store(store):
    out = _run_example("load a trained model", store["dir"], "\nprint('loaded', sweep.study, type(model).__name__)")
    assert "loaded robust_loss" in out, out
    out = _run_example("a point's MLflow logged model", store["dir"], "\nprint('from sweep', sweep.sweep_id)")
    assert "same predictions: True" in out and f"from sweep {store['analysed']}" in out, out
