"""How a point's run is written (issue 15): whole when the point ends, RUNNING at once when opened, FAILED either
way; the close reads only what it needs; SQLite stores in write-ahead-log mode. Real MLflow on SQLite, no Ray."""

import sqlite3
import threading

import pytest
from mlflow.tracking import MlflowClient

from core.point import PLAIN
from record import schema
from record.runs import get_or_create_experiment, point_runs, point_statuses
from record.store import prepare_store
from record.write import SweepWriter, create_sweep
from tune_jobs.study import load_study
from tune_jobs.point_run import PointRun
from tune_jobs.watchdog import Watchdog


@pytest.fixture()
def sweep(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    prepare_store(uri)
    client = MlflowClient(uri)
    experiment = get_or_create_experiment(client, "points", uri)
    sweep_id = create_sweep(client, experiment, study="poison_sensitivity", run_name="s", command="test", fixed={},
                            grid={}, n_points=3, param_types={})
    study = load_study("poison_sensitivity")
    config = study.make_config({"hidden_width": 8, "epochs": 5})
    return {"uri": uri, "client": client, "writer": SweepWriter(uri, experiment, sweep_id, study.name),
            "study": study, "config": config, "result": study.run_point(config, PLAIN)}


def _run(sweep, point):
    (run,) = [r for r in point_runs(sweep["client"], sweep["writer"].experiment_id, sweep["writer"].sweep_id)
              if r.data.tags[schema.TAG_POINT] == point]
    return run


def test_a_short_point_is_written_whole_and_an_opened_one_the_same(sweep):
    params = sweep["study"].params(sweep["config"])
    dims = {"poison_fraction": 0.0, "hidden_width": 8, "seed": 42, "flag": True, "name": "x"}
    whole = PointRun(sweep["writer"], "short", params, "trial-1", "short", dims)
    whole.finish(sweep["result"])
    opened = PointRun(sweep["writer"], "long", params, "trial-1", "long", dims)
    assert sweep["client"].get_run(opened.open()).info.status == "RUNNING"
    opened.open()  # a second open (the watchdog's, then the model's) writes nothing new
    opened.finish(sweep["result"])
    short, long = _run(sweep, "short"), _run(sweep, "long")
    for run in (short, long):
        assert run.info.status == "FINISHED" and run.info.run_name == run.data.tags[schema.TAG_POINT]
        assert run.data.params == {k: schema.encode(v) for k, v in params.items()}
        assert run.data.tags[schema.TAG_RAY_TRIAL] == "trial-1" and run.data.tags[schema.TAG_PARENT]
        assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["gaussian_clusters"]
        history = sweep["client"].get_metric_history(run.info.run_id, "train_loss")
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == sweep["result"].histories["train_loss"]
    assert short.data.metrics == long.data.metrics and set(short.data.metrics) >= set(sweep["study"].metrics)
    # the numeric grid values as numbers too (issue 26): bools and text stay params only
    assert {k: v for k, v in short.data.metrics.items() if k.startswith("dim.")} == {
        "dim.poison_fraction": 0.0, "dim.hidden_width": 8.0, "dim.seed": 42.0}


def test_the_last_logged_epoch_is_read_from_the_histories_not_grid_values_or_system_metrics(sweep):
    """What a retried or resumed long point continues after: a run holding dim.* (step 0, named first) and MLflow's
    system metrics (a step per sample) beside epochs 0 and 1 has logged through epoch 1."""
    writer, client = sweep["writer"], sweep["client"]
    run_id = writer.start("long", {"hidden_width": 8}, "trial-1", dims={"a_dim": 3})
    assert writer.last_step(run_id) == -1, "grid values are not epochs"
    for epoch in (0, 1):
        writer.log_step(run_id, epoch, {"train_loss": 1.0 / (epoch + 1), "test_acc": 0.5})
    for sample in range(5):
        client.log_metric(run_id, "system/cpu_utilization_percentage", 10.0, step=sample)
    assert writer.last_step(run_id) == 1


def test_a_point_that_fails_before_its_run_exists_gets_a_failed_run_with_its_params(sweep):
    run = PointRun(sweep["writer"], "broken", {"hidden_width": 8}, "trial-1", None)
    run.fail(ValueError("lr=5 diverged"))
    failed = _run(sweep, "broken")
    assert failed.info.status == "FAILED" and failed.data.params == {"hidden_width": "8"}
    assert failed.data.tags[schema.TAG_ERROR] == "ValueError: lr=5 diverged"
    assert point_statuses(sweep["client"], sweep["writer"].experiment_id, sweep["writer"].sweep_id) == {
        "broken": {"FAILED"}}
    assert sweep["writer"].point_outcomes() == (set(), {"broken"})


def test_the_watchdog_opens_a_long_point_while_it_runs_and_not_a_short_one(sweep):
    opened = threading.Event()
    with Watchdog(None, on_stuck=None, on_long=opened.set, long_after=0.05):
        pass  # a short point: over before the watchdog looks
    assert not opened.wait(0.2)
    with Watchdog(None, on_stuck=None, on_long=opened.set, long_after=0.05):
        assert opened.wait(5)


def test_orphans_are_found_by_status_and_the_store_logs_ahead(sweep):
    writer = sweep["writer"]
    PointRun(writer, "done", {}, "t", None).finish(sweep["result"])
    orphan = PointRun(writer, "lost", {}, "t", None).open()
    assert [r.info.run_id for r in point_runs(sweep["client"], writer.experiment_id, writer.sweep_id,
                                              status="RUNNING")] == [orphan]
    assert writer.end_orphans("FAILED", "its worker died") == 1
    assert writer.point_outcomes() == ({"done"}, {"lost"})
    database = sweep["uri"][len("sqlite:///"):]
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
