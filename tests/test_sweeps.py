"""Issue 26: a store that lives for months. A launch that failed after its parent run existed is not "the latest
sweep"; ``python -m tune_jobs sweeps`` lists a store's sweeps (real launch, real SQLite store, real processes)."""

import json
import re
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from conftest import PYTHON, ROOT, python_env

pytestmark = pytest.mark.xdist_group(__name__)  # its module fixture: computed once, on one worker

GRID = ["--grid", "hidden_width=128", "--grid", "poison_fraction=0,0.3", "--grid", "seed=42", "--set", "epochs=5"]


def _run(args, cwd, **kwargs):
    return subprocess.run([PYTHON, *args], cwd=cwd, env=python_env(), capture_output=True, text=True, timeout=300,
                          **kwargs)


def _failed_launch(uri: str) -> str:
    """What a launch that fails after its parent run exists leaves (SIGTERM, ``--address auto`` with no cluster):
    an empty sweep ended FAILED through the launcher's own abandon path (tune_jobs.opening.abandon)."""
    from record.runs import get_or_create_experiment
    from record.lease import Lease
    from record.write import SweepWriter, create_sweep
    from tune_jobs.opening import abandon

    client = MlflowClient(uri)
    experiment = get_or_create_experiment(client, "poison_sensitivity", uri)
    sweep_id = create_sweep(client, experiment, study="poison_sensitivity", run_name="poison_sensitivity-failed",
                            command="python -m tune_jobs poison_sensitivity --address auto", fixed={"epochs": 5},
                            grid={"hidden_width": (8,), "poison_fraction": (0.0, 0.3), "seed": (42,)}, n_points=2,
                            param_types={"hidden_width": "int", "poison_fraction": "float", "seed": "int"})
    lease = Lease(client, sweep_id)
    lease.acquire(settle_s=0)
    abandon(SweepWriter(uri, experiment, sweep_id, "poison_sensitivity"), lease, RuntimeError("no Ray cluster"))
    assert client.get_run(sweep_id).info.status == "FAILED"
    return sweep_id


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory):
    """A finished tiny poison_sensitivity sweep in the default store (./mlruns), then a failed launch after it
    (read only by the tests: one launch for the module)."""
    folder = tmp_path_factory.mktemp("store")
    proc = _run(["-m", "tune_jobs", "poison_sensitivity", *GRID, "--storage-path", str(folder / "ray")], folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    assert f"tracking {uri}, experiment 'poison_sensitivity'" in proc.stdout, "the store, absolute, in the first line"
    from record.read import find_sweep

    client = MlflowClient(uri)
    good = find_sweep(client, client.get_experiment_by_name("poison_sensitivity").experiment_id).info.run_id
    return {"dir": folder, "uri": uri, "good": good, "failed": _failed_launch(uri)}


def test_a_failed_launch_is_not_the_latest_sweep(two_sweeps, monkeypatch):
    from record.read import find_sweep, read_sweep

    uri, good, failed = two_sweeps["uri"], two_sweeps["good"], two_sweeps["failed"]
    sweep = read_sweep("poison_sensitivity", uri)
    assert sweep.sweep_id == good and len(sweep.runs) == 2
    assert read_sweep("poison_sensitivity", uri, any_state=True).sweep_id == failed
    assert read_sweep("poison_sensitivity", uri, sweep_id=failed).n_finished == 0, "an explicit id still works"
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("poison_sensitivity").experiment_id
    # --resume with no id (tune_jobs/opening.py) keeps meaning the study's latest sweep, whatever its state
    assert find_sweep(client, experiment_id, "poison_sensitivity").info.run_id == failed

    out = two_sweeps["dir"] / "out"
    proc = _run(["-m", "analysis", "poison_sensitivity", "--no-log", "--out", str(out)], two_sweeps["dir"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["sweep_id"] == good
    proc = _run(["-m", "analysis.validate", "poison_sensitivity"], two_sweeps["dir"])
    assert proc.returncode in (0, 1) and f"sweep {good}" in proc.stdout, proc.stdout + proc.stderr[-2000:]

    example = re.search(r"<!-- example: query one sweep -->\s*```python\n(.*?)```",
                        (ROOT / "README.md").read_text(), re.S).group(1)
    scope: dict = {}
    monkeypatch.chdir(two_sweeps["dir"])
    try:
        exec(compile(example, "README.md", "exec"), scope)  # verbatim, in the folder the launch ran in
    finally:
        import mlflow

        mlflow.set_tracking_uri(None)
    assert scope["sweep"].run_id == good


def test_sweeps_lists_a_stores_sweeps_as_a_table_and_as_json(two_sweeps):
    cwd, good, failed = two_sweeps["dir"], two_sweeps["good"], two_sweeps["failed"]
    proc = _run(["-m", "tune_jobs", "sweeps"], cwd)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:6] == ["experiment", "sweep", "id", "study", "status", "points"]
    assert failed[:8] in lines[1] and " FAILED " in lines[1] and " 0/2 " in lines[1], "newest first"
    assert good[:8] in lines[2] and " FINISHED " in lines[2] and " 2/2 " in lines[2]
    assert "python -m tune_jobs poison_sensitivity --grid hidden_width=128" in lines[2]

    proc = _run(["-m", "tune_jobs", "sweeps", "--json", "--status", "finished", "--study", "poison_sensitivity",
                 "--experiment", "poison_sensitivity", "--tracking-uri", two_sweeps["uri"]], "/")
    assert proc.returncode == 0, proc.stderr
    [entry] = json.loads(proc.stdout)
    assert (entry["sweep_id"], entry["status"], entry["n_finished"], entry["n_points"]) == (good, "FINISHED", 2, 2)
    assert entry["study"] == "poison_sensitivity" and entry["duration_s"] > 0 and entry["command"].startswith("python")
    assert isinstance(entry["findings"], dict)
    assert json.loads(_run(["-m", "tune_jobs", "sweeps", "--json", "--study", "other"], cwd).stdout) == []

    for bad, said in ((["--status", "DONE"], "--status"), (["--experiment", "nope"], "no experiment 'nope'"),
                      (["--tracking-uri", "file:///x"], "file store"), (["--bogus"], "--bogus")):
        proc = _run(["-m", "tune_jobs", "sweeps", *bad], cwd)
        assert proc.returncode == 2 and said in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, \
            (bad, proc.stderr)
    help_ = _run(["-m", "tune_jobs", "sweeps", "--help"], cwd)
    assert help_.returncode == 0 and "--status S" in help_.stdout and "--json" in help_.stdout


def test_no_study_can_be_named_sweeps():
    import dataclasses

    from tune_jobs.studies.poison_sensitivity import STUDY

    with pytest.raises(ValueError, match="cannot be named 'sweeps'"):
        dataclasses.replace(STUDY, name="sweeps")


def test_point_names_show_what_differs_first_and_floats_to_4_digits():
    from tune_jobs.studies.robust_loss import STUDY
    from tune_jobs.study import point_name

    point = "benchmark=cnn-digits-labelflip loss=generalized_ce seed=42"  # the robustlab.point tag: unchanged
    single = tuple(d for d, values in STUDY.grid.items() if len(values) == 1)
    assert single == ("benchmark",), "the default grid has one benchmark"
    assert STUDY.run_name(point, single) == "loss=generalized_ce s=42 bench=cnn-digits-labelflip"
    assert STUDY.run_name(point) == "bench=cnn-digits-labelflip loss=generalized_ce s=42"  # several benchmarks
    assert point_name("loss.q=0.4812893194050143 lr=0.001 seed=42", {"seed": "s"}, ("seed",)) == \
        "loss.q=0.4813 lr=0.001 s=42"


def test_the_analysis_run_is_named_after_its_sweep_with_its_findings_and_settings(two_sweeps):
    from analysis.common import run_analysis
    from analysis.poison_sensitivity import ANALYSIS
    from record import schema
    from record.read import read_sweep
    from record.runs import search_all_runs

    sweep = read_sweep("poison_sensitivity", two_sweeps["uri"])
    points = search_all_runs(sweep.client, [sweep.experiment_id], f"tags.`{schema.TAG_SWEEP}` = '{sweep.sweep_id}' "
                             f"and tags.`{schema.TAG_KIND}` = 'point'")
    assert sorted(r.data.tags[schema.TAG_POINT] for r in points) == \
        ["poison_fraction=0.0 hidden_width=128 seed=42", "poison_fraction=0.3 hidden_width=128 seed=42"]
    assert sorted(r.info.run_name for r in points) == ["pf=0 w=128 s=42", "pf=0.3 w=128 s=42"]

    assert run_analysis(ANALYSIS, sweep, two_sweeps["dir"] / "logged") == 0
    [run] = search_all_runs(sweep.client, [sweep.experiment_id], f"tags.`{schema.TAG_SWEEP}` = '{sweep.sweep_id}' "
                            f"and tags.`{schema.TAG_KIND}` = 'analysis'")
    assert run.info.run_name == f"analysis-{sweep.name}"
    findings = json.loads((two_sweeps["dir"] / "logged" / "summary.json").read_text())["findings"]
    assert findings and run.data.tags[schema.TAG_NOTE] == "\n".join(f"- {f}" for f in findings)
    assert run.data.params == {"confidence": "0.95", "bootstrap_resamples": "1000", "bootstrap_seed": "0"}
