"""Per-epoch reporting without checkpoints (Study.reports_epochs): packed points keep their epochs as histories
(step = epoch) written when each point ends, with no console line per epoch; ASHA stops such points between epochs."""

import re

import pytest
from mlflow.tracking import MlflowClient

from core.point import PLAIN
from record import schema
from record.runs import search_all_runs, sweep_runs
from test_own_study import write_package
from tune_jobs.runner import main

EPOCH_STUDY = """
    from dataclasses import dataclass

    from core.point import PointResult
    from tune_jobs.study import Study


    @dataclass(frozen=True)
    class Config:
        x: float = 1.0
        seed: int = 1
        epochs: int = 6


    def run_point(config, context):
        score = 0.0
        for epoch in range(config.epochs):
            if config.seed == 13:
                raise ValueError("seed 13 is unlucky")
            score = config.x * (epoch + 1) + config.seed / 100
            context.hooks.epoch_end(epoch, {"val_score": score, "train_loss": 1.0 / (epoch + 1)}, lambda: {})
        return PointResult(metrics={"val_score": score, "test_score": 2 * score})


    STUDY = Study(name="epochs", description="reports epochs, no checkpoints", config_type=Config,
                  grid={"x": (1.0, 2.0, 3.0), "seed": (1, 2)}, run_point=run_point, metrics=("test_score",),
                  search_metrics=("val_score",), reports_epochs=True, points_per_trial=3)
    PROMISES = Study(name="promises", description="declares a search metric it never reports", config_type=Config,
                     grid={"x": (1.0, 2.0), "seed": (1,)}, run_point=run_point, metrics=("test_score",),
                     search_metrics=("val_score", "val_other"), reports_epochs=True)
"""


def _children(uri, experiment):
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = search_all_runs(client, [experiment_id], f"tags.`{schema.TAG_KIND}` = '{schema.KIND_POINT}'")
    return client, runs, sweep_runs(client, experiment_id)[0]


@pytest.fixture
def epoch_study(store, monkeypatch):
    write_package(store["dir"], "epoch_pkg", {"study": EPOCH_STUDY})
    monkeypatch.syspath_prepend(str(store["dir"]))  # the driver imports it; Ray's workers get the cwd (store["dir"])
    return store


def test_packed_points_that_report_epochs_log_them_as_histories_without_a_line_per_epoch(epoch_study, capsys):
    store = epoch_study
    status = main("epoch_pkg.study", ["--max-concurrent", "2", "--tracking-uri", store["uri"],
                                      "--storage-path", store["ray"]])
    out = capsys.readouterr().out
    assert status == 0, out[-3000:]
    assert "6 grid points (0 already finished) in 2 Ray trials" in out, "points that report epochs still share trials"
    assert not re.search(r"\] epoch ", out), "no console line per epoch for packed points"
    client, runs, _ = _children(store["uri"], "epochs")
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags[schema.TAG_RAY_TRIAL] for r in runs}) == 2
    for run in runs:
        x, seed = float(run.data.params["x"]), int(run.data.params["seed"])
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_score"))
        assert history == [(e, x * (e + 1) + seed / 100) for e in range(6)]
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 6
        assert run.data.metrics["test_score"] == 2 * history[-1][1]


def test_asha_stops_points_that_report_epochs_without_checkpointing(epoch_study, capsys):
    store = epoch_study
    args = ["--search", "random", "--num-samples", "4", "--grid", "seed=1", "--space", "x=uniform(0.1,3)",
            "--scheduler", "asha", "--metric", "val_score", "--mode", "max", "--reduction-factor", "2",
            "--max-concurrent", "1", "--tracking-uri", store["uri"], "--storage-path", store["ray"]]
    status = main("epoch_pkg.study", args)
    out = capsys.readouterr().out
    assert status == 0, out[-3000:]
    client, runs, parent = _children(store["uri"], "epochs")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    stopped = [r for r in runs if schema.TAG_STOPPED in r.data.tags]
    assert stopped, "ASHA stopped at least one point between epochs"
    for run in runs:
        trained = len(client.get_metric_history(run.info.run_id, "val_score"))
        assert trained == (int(run.data.tags[schema.TAG_STOPPED]) if run in stopped else 6)
    assert parent.data.params["scheduler"] == "asha" and "best_val_score" in parent.data.metrics
    shown = [name for i, name in enumerate(re.findall(r"\] (?:epoch|finished|stopped) +(x=\S+)", out)) if i == 0
             or name != re.findall(r"\] (?:epoch|finished|stopped) +(x=\S+)", out)[i - 1]]
    assert len(shown) == len(set(shown)) == 4, f"--max-concurrent 1: one point at a time ({shown})"
    assert re.search(r"\] stopped  x=\d\.\d{1,4}  after \d epoch\(s\) by the scheduler", out), out[-2500:]


def test_a_point_failing_in_a_search_on_a_metric_fails_alone_not_the_launch(epoch_study, capsys):
    """A failed point reports no --metric: Ray Tune's strict metric check would end the whole launch with a
    traceback and leave runs RUNNING; the launcher checks --metric before Ray starts instead."""
    store = epoch_study
    args = ["--search", "random", "--num-samples", "2", "--grid", "seed=13", "--space", "x=uniform(0.1,3)",
            "--scheduler", "asha", "--metric", "val_score", "--mode", "max", "--max-concurrent", "1",
            "--tracking-uri", store["uri"], "--storage-path", store["ray"]]
    status = main("epoch_pkg.study", args)
    captured = capsys.readouterr()
    assert status == 1 and "TuneError" not in captured.out + captured.err
    assert "0/2 points finished" in captured.out, captured.out[-3000:]
    _, runs, parent = _children(store["uri"], "epochs")
    assert len(runs) == 2 and all(r.info.status == "FAILED" for r in runs)
    assert all(r.data.tags[schema.TAG_ERROR] == "ValueError: seed 13 is unlucky" for r in runs)
    assert parent.info.status == "FAILED"


@pytest.mark.parametrize("flags", [["--scheduler", "asha"], ["--search", "random", "--space", "x=uniform(1,2)"]])
def test_a_point_that_does_not_report_the_metric_it_declared_fails_naming_it(epoch_study, capsys, flags):
    """The launcher trusts the study's declaration before Ray starts; a point that breaks it fails, naming the metric
    (a scheduler or searcher would otherwise select on nothing, silently)."""
    store = epoch_study
    status = main("epoch_pkg.study:PROMISES", [*flags, "--metric", "val_other", "--mode", "max", "--max-concurrent",
                                               "1", "--tracking-uri", store["uri"], "--storage-path", store["ray"]])
    assert status == 1
    _, runs, _ = _children(store["uri"], "promises")
    assert runs and all(r.info.status == "FAILED" for r in runs)
    assert all("reports no 'val_other' (--metric, " in r.data.tags[schema.TAG_ERROR] for r in runs), runs[0].data.tags


def test_reports_epochs_is_a_capability_of_its_own():
    from tune_jobs.studies.poison_sensitivity import STUDY as POISON
    from tune_jobs.studies.robust_loss import STUDY as ROBUST_LOSS

    assert ROBUST_LOSS.checkpoints and ROBUST_LOSS.reports_epochs, "a checkpointing study reports its epochs"
    assert not POISON.reports_epochs and not POISON.checkpoints
    seen = []

    class Hooks:
        def restore(self):
            return None

        def epoch_end(self, epoch, metrics, state):
            seen.append(epoch)

    namespace = {}
    exec(re.sub(r"(?m)^    ", "", EPOCH_STUDY), namespace)
    study = namespace["STUDY"]
    assert study.points_per_trial == 3 and not study.checkpoints
    study.run_point(study.config_type(), PLAIN)  # the same run_point runs in a plain loop, hooks doing nothing
    from dataclasses import replace

    study.run_point(study.config_type(), replace(PLAIN, hooks=Hooks()))
    assert seen == list(range(6))
