"""The MLflow record: the value codec, sweeps written by the code before the record module, torch-free reading."""

import io
import json
import subprocess
import tarfile

import pandas as pd
import pytest

from conftest import PYTHON, ROOT, python_env
from record import schema

#: The last commit before the record module (issue "Spine v2"): its launchers wrote the sweeps users have today.
OLD_CODE = "500c55e"


@pytest.mark.parametrize("value, hint, kind", [
    (0.05, float, "float"), (64, int, "int"), (True, bool, "bool"), ("cross_entropy", str, "str"),
    ((0.01, 0.5), tuple[float, ...], "tuple[float]"), (None, int | None, "int?"), (7, int | None, "int?"),
    ((1, 2), tuple[int, ...], "tuple[int]"), (None, str | None, "str?"),
])
def test_values_round_trip_through_their_recorded_type(value, hint, kind):
    assert schema.type_name(hint) == kind
    decoded = schema.decode(schema.encode(value), kind)
    assert decoded == value and type(decoded) is type(value)


def test_decoding_names_the_param_and_the_text():
    with pytest.raises(schema.DecodeError, match="hidden_width: expected int, got 'wide'"):
        schema.decode("wide", "int", "hidden_width")
    with pytest.raises(schema.DecodeError, match="epsilons: needs at least one value"):
        schema.decode(",", "tuple[float]", "epsilons")


@pytest.mark.parametrize("text, value", [
    ("42", 42), ("0.05", 0.05), ("True", True), ("None", None), ("0.01,0.05,0.1", (0.01, 0.05, 0.1)),
    ("resnet20-cifar10-labelflip", "resnet20-cifar10-labelflip"), ("path/a,b.py", "path/a,b.py"),
])
def test_sweeps_without_recorded_types_are_read_by_inference(text, value):
    assert schema.infer(text) == value


def _old_code(tmp_path):
    """The launchers and analyses of commit OLD_CODE, extracted beside the test (skip where history is missing)."""
    found = subprocess.run(["git", "-C", str(ROOT), "archive", OLD_CODE, "core", "tune_jobs", "analysis"],
                           capture_output=True)
    if found.returncode != 0:
        pytest.skip(f"commit {OLD_CODE} is not in this clone's history ({found.stderr.decode().strip()})")
    folder = tmp_path / "old"
    tarfile.open(fileobj=io.BytesIO(found.stdout)).extractall(folder, filter="data")
    return folder


def _run(args, cwd, pythonpath):
    env = dict(python_env(), PYTHONPATH=str(pythonpath))
    proc = subprocess.run([PYTHON, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_a_sweep_written_by_the_old_code_is_read_by_the_new_analysis_to_the_digit(tmp_path):
    old = _old_code(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    uri = f"sqlite:///{work / 'mlflow.db'}"
    common = ["--tracking-uri", uri, "--storage-path", str(work / "ray")]
    _run(["-m", "tune_jobs.poison_sensitivity", "--grid", "poison_fraction=0,0.1,0.3,0.5", "--grid", "hidden_width=16",
          "--grid", "seed=1,2", "--set", "epochs=40", "--analyze", str(work / "old-ps"), *common], work, old)
    # two seeds each: with one, the old code wrote a std of 0.000 where there is none (now: the mean alone, null)
    _run(["-m", "tune_jobs.adversarial_scaling", "--grid", "hidden_width=16,32,64", "--grid", "seed=1,2",
          "--set", "max_epochs=30", "--set", "epsilons=0.05,0.2", "--analyze", str(work / "old-adv"), *common],
         work, old)
    from record.read import read_sweep

    for study in ("poison_sensitivity", "adversarial_scaling"):  # the old record: no types, read by inference
        sweep = read_sweep(study, uri)
        assert schema.TAG_PARAM_TYPES not in sweep.client.get_run(sweep.sweep_id).data.tags
    assert sweep.grid == {"dataset": ("circles", "moons"), "hidden_width": (16, 32, 64), "seed": (1, 2)}
    assert sweep.fixed["epsilons"] == (0.05, 0.2) and sweep.runs["hidden_width"].dtype.kind == "i"
    for study, table in (("poison_sensitivity", "sigmoid_fits"), ("adversarial_scaling", "robustness_by_width")):
        _run(["-m", f"analysis.{study}", "--tracking-uri", uri, "--out", str(work / f"new-{study}"), "--no-log",
              "--validate"], work, ROOT)
        old_out = work / ("old-ps" if study == "poison_sensitivity" else "old-adv")
        # every column and value the old analysis wrote is written again to the digit (the new one adds intervals)
        new_table, old_table = (pd.read_csv(folder / f"{table}.csv", dtype=str) for folder in (work / f"new-{study}", old_out))
        assert new_table[list(old_table.columns)].equals(old_table)
        new, before = (json.loads((folder / "summary.json").read_text()) for folder in (work / f"new-{study}", old_out))
        _assert_contains(new, before)


def _assert_contains(new, before, path="summary"):
    """``new`` holds everything ``before`` holds, equal (dicts may have more keys)."""
    if isinstance(before, dict):
        assert isinstance(new, dict), path
        for key, value in before.items():
            assert key in new, f"{path}.{key} is gone"
            _assert_contains(new[key], value, f"{path}.{key}")
    elif isinstance(before, list) and before and isinstance(before[0], dict):
        assert len(new) == len(before), path
        for i, (a, b) in enumerate(zip(new, before)):
            _assert_contains(a, b, f"{path}[{i}]")
    elif isinstance(before, list) and before and all(isinstance(b, str) for b in before):  # findings: more now
        assert [b for b in before if b not in new] == [], path
    else:
        assert new == before, (path, new, before)


WRITE_SWEEPS = """
import sys
from mlflow.tracking import MlflowClient
from core.point import PLAIN
from record.runs import get_or_create_experiment
from record.write import SweepWriter, create_sweep
from tune_jobs.study import load_study

uri = sys.argv[1]
client = MlflowClient(uri)
for name, grid, fixed in (
    ("poison_sensitivity", {"poison_fraction": (0.0, 0.5), "hidden_width": (8,), "seed": (1, 2)}, {"epochs": 10}),
    ("robust_loss", {"loss": ("cross_entropy", "generalized_ce"), "seed": (42,)}, {"scale": "smoke"}),
):
    study = load_study(name)
    defaults = study.defaults() | fixed
    grid = dict(study.grid) | grid
    points = study.points(grid, defaults)
    experiment = get_or_create_experiment(client, name, uri)
    sweep = create_sweep(client, experiment, study=name, run_name=name, command="test", fixed=defaults, grid=grid,
                         n_points=len(points), param_types=study.param_types())
    writer = SweepWriter(uri, experiment, sweep, name)
    for config in points:
        run = writer.start(study.point_key(config), study.params(config), "no-ray")
        writer.finish(run, study.run_point(config, PLAIN))
    writer.close(len(points), len(points), False)
"""

READ_WITHOUT_TORCH = """
import runpy, sys
sys.argv = ["analysis.{study}", "--tracking-uri", {uri!r}, "--out", {out!r}]
try:
    runpy.run_module("analysis.{study}", run_name="__main__", alter_sys=True)
except SystemExit as exit:
    print("STATUS", exit.code)
from record.read import read_sweep
sweep = read_sweep("{study}", {uri!r})
print("ROWS", len(sweep.runs), "GRID", sweep.grid)
print("LOADED", sorted(m for m in ("torch", "ray", "tune_jobs", "core.vision_data", "core.studies") if m in sys.modules))
"""


def test_analyses_and_the_read_model_run_without_torch_or_ray(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _run(["-c", WRITE_SWEEPS, uri], tmp_path, ROOT)
    for study, rows, grid in (("poison_sensitivity", 4, "'hidden_width': (8,)"), ("robust_loss", 2, "'seed': (42,)")):
        out = _run(["-c", READ_WITHOUT_TORCH.format(study=study, uri=uri, out=str(tmp_path / study))], tmp_path, ROOT)
        assert "STATUS 0" in out and f"ROWS {rows}" in out and grid in out, out[-2000:]
        assert "LOADED []" in out, out[-2000:]
        assert (tmp_path / study / "summary.json").exists()


def test_metric_key_keeps_documented_names_and_makes_paths_safe():
    from record.schema import metric_key

    assert metric_key("robust_score_cnn-digits-labelflip_generalized_ce") == "robust_score_cnn-digits-labelflip_generalized_ce"
    assert metric_key("test_acc_b_/tmp//my loss.py") == "test_acc_b__tmp__my_loss.py"


def _toy_sweep(uri, param_types=True):
    """A search-like sweep written through the record's own writer, with start times chosen by the test: three
    complete points (two tied on val_acc, the later-started one read back first) and two a scheduler stopped."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from record.runs import get_or_create_experiment
    from record.write import create_sweep, log_flat

    client = MlflowClient(uri)
    experiment = get_or_create_experiment(client, "toy", uri)
    grid = {"hidden_width": (8, 16), "poison_fraction": (0.0, 0.5)}
    kinds = {"hidden_width": "int", "poison_fraction": "float", "lr": "float", "epochs": "int"} if param_types else {}
    sweep = create_sweep(client, experiment, study="toy", run_name="toy", command="test", fixed={"epochs": 10},
                         grid=grid, n_points=5, param_types=kinds)
    runs = {}
    for name, start, lr, val_acc, stopped in (("late", 2000, 0.1, 0.9, None), ("early", 1000, 0.2, 0.9, None),
                                              ("worse", 1500, 0.3, 0.8, None), ("cut", 500, 0.4, 0.95, 4),
                                              ("cut2", 600, 0.5, 0.5, 2)):
        tags = {schema.TAG_PARENT: sweep, schema.TAG_SWEEP: sweep, schema.TAG_STUDY: "toy",
                schema.TAG_KIND: schema.KIND_POINT, schema.TAG_POINT: f"lr={lr}"}
        if stopped is not None:
            tags[schema.TAG_STOPPED] = str(stopped)
        run_id = client.create_run(experiment, start_time=start, tags=tags, run_name=name).info.run_id
        log_flat(client, run_id, params={"lr": lr, "epochs": 10, "hidden_width": 8},
                 metrics=[Metric("val_acc", val_acc, 0, 0)])
        client.set_terminated(run_id, "FINISHED")
        runs[name] = run_id
    return client, sweep, runs


def test_the_best_point_is_typed_and_deterministic_on_ties(tmp_path):
    from record.read import read_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, _, runs = _toy_sweep(uri)
    sweep = read_sweep("toy", uri)
    assert list(sweep.runs.run_id) == [runs["late"], runs["worse"], runs["early"]], "read back newest first"
    best = sweep.best_point("val_acc", "max")  # "cut" reached 0.95 but was stopped early: not a candidate
    assert (best.run_id, best.value, best.point) == (runs["early"], 0.9, "lr=0.2"), "tie -> the earliest start"
    assert best.params == {"lr": 0.2, "epochs": 10, "hidden_width": 8} and type(best.params["epochs"]) is int
    worst = sweep.best_point("val_acc", "min")
    assert (worst.run_id, worst.params["lr"]) == (runs["worse"], 0.3)
    # the same start time: the smallest run id wins, whatever the order the rows are in
    sweep.start_times = dict.fromkeys(sweep.start_times, 0)
    expected = min(runs["late"], runs["early"])
    assert sweep.best_point("val_acc", "max").run_id == expected
    sweep.runs = sweep.runs.iloc[::-1].reset_index(drop=True)
    assert sweep.best_point("val_acc", "max").run_id == expected
    assert sweep.best_point("test_acc", "max") is None
    with pytest.raises(ValueError, match="mode must be 'max' or 'min'"):
        sweep.best_point("val_acc", "maximum")


def test_early_stopping_counts_stopped_points_and_untrained_epochs(tmp_path):
    from record.read import EarlyStopping, read_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _toy_sweep(uri)
    sweep = read_sweep("toy", uri)
    assert sorted(sweep.stopped.stopped_early) == [2, 4]  # the epochs each stopped point trained
    assert sweep.early_stopping() == EarlyStopping(n_points=5, n_stopped=2, planned_epochs=50, untrained_epochs=14)
    assert sweep.early_stopping("max_epochs") == EarlyStopping(5, 2, 0, 0), "a study without the param counts 0"


@pytest.mark.parametrize("param_types", [True, False], ids=["typed", "inferred"])
def test_the_recorded_grid_compares_as_values_not_text(tmp_path, param_types):
    from record.read import find_sweep, read_sweep, recorded_grid

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, sweep_id, _ = _toy_sweep(uri, param_types)
    parent = find_sweep(client, client.get_experiment_by_name("toy").experiment_id, "toy")
    assert parent.data.params["grid.poison_fraction"] == "0.0,0.5"
    grid = recorded_grid(parent)
    assert grid == {"hidden_width": (8, 16), "poison_fraction": (0, 0.5)}  # "0,0.5" as text would differ
    assert all(type(v) is int for v in grid["hidden_width"]) and type(grid["poison_fraction"][0]) is float
    assert grid == read_sweep("toy", uri).grid


def test_two_sqlite_stores_in_one_folder_share_no_artifact_files(tmp_path):
    """Issue 25 item 7: ``a.db`` and ``b.db`` side by side, each with experiment 'toy': their artifacts land in
    ``a-artifacts/`` and ``b-artifacts/``; the default ``mlflow.db`` keeps ``artifacts/``."""
    from mlflow.tracking import MlflowClient

    from record.runs import get_or_create_experiment
    from record.store import prepare_store

    written = {}
    for name in ("a.db", "b.db", "mlflow.db"):
        uri = f"sqlite:///{tmp_path / name}"
        prepare_store(uri)
        client = MlflowClient(uri)
        run_id = client.create_run(get_or_create_experiment(client, "toy", uri)).info.run_id
        client.log_text(run_id, name, "which.txt")
        written[name] = sorted(p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("which.txt")
                               if p.read_text() == name)
    assert written == {"a.db": ["a-artifacts"], "b.db": ["b-artifacts"], "mlflow.db": ["artifacts"]}
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["a-artifacts", "artifacts", "b-artifacts"]
