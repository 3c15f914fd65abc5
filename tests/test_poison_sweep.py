"""A reduced poison_sensitivity sweep through real Ray and a real SQLite MLflow store, then its analysis."""

import json

from mlflow.tracking import MlflowClient

from analysis.poison_sensitivity import ANALYSIS
from record import schema
from record.runs import search_all_runs
from record.read import read_sweep
from tune_jobs.studies.poison_sensitivity import STUDY


def test_reduced_sweep_tracked_and_analysed(reduced_poison_sweep):
    """The session's reduced sweep (conftest: REDUCED_POISON_GRID launched in-process, then run_analysis)."""
    store = reduced_poison_sweep
    assert store["status"] == 0
    client = MlflowClient(store["uri"])
    experiment = client.get_experiment_by_name("ps-test")
    runs = search_all_runs(client, [experiment.experiment_id], "")
    parents = [r for r in runs if r.data.tags.get(schema.TAG_KIND) == "sweep"]
    children = [r for r in runs if r.data.tags.get(schema.TAG_KIND) == schema.KIND_POINT]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    sweep_id = parents[0].info.run_id
    assert parents[0].data.params["grid.hidden_width"] == "16,32" and parents[0].data.params["epochs"] == "30"
    assert len(children) == 16
    assert all(c.data.tags[schema.TAG_PARENT] == sweep_id and c.info.status == "FINISHED" for c in children)
    assert len({c.data.tags[schema.TAG_POINT] for c in children}) == 16
    ray_trials = {c.data.tags[schema.TAG_RAY_TRIAL] for c in children}  # 16 points, one Ray trial per CPU (2)
    assert len(ray_trials) == 2, ray_trials
    child = children[0]
    for name in ("poison_fraction", "hidden_width", "seed", "epochs", "lr", "batch_size", "n_samples", "torch_threads"):
        assert name in child.data.params
    assert set(STUDY.metrics) <= set(child.data.metrics)
    assert not any(k.startswith("system/") for k in child.data.metrics), "no system metrics for short points"
    [data] = child.inputs.dataset_inputs
    assert data.dataset.name == "gaussian_clusters" and data.tags[0].value == "training"
    assert json.loads(data.dataset.profile)["seed"] == int(child.data.params["data_seed"])
    assert len({c.inputs.dataset_inputs[0].dataset.digest for c in children}) == 1, "one data set (data_seed)"
    history = client.get_metric_history(child.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(30))

    out = store["out"]
    assert store["analysis_status"] == 0  # run_analysis(ANALYSIS, read_sweep("ps-test", ...), out)
    for name in ("summary.json", "sigmoid_fits.md", "sigmoid_fits.csv", "accuracy_vs_poison.png",
                 "generalization_gap.png", "train_vs_test.png"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sweep_id"] == sweep_id and summary["n_finished_runs"] == 16
    assert set(summary["widths"]) == {"16", "32"}
    for entry in summary["widths"].values():
        assert {"clean_acc", "L", "k", "x0", "b", "r2", "threshold", "gen_gap_at_max"} <= set(entry)
    analysis_runs = search_all_runs(client, [experiment.experiment_id], "tags.`robustlab.kind` = 'analysis'")
    assert len(analysis_runs) == 1 and analysis_runs[0].data.tags[schema.TAG_PARENT] == sweep_id
    logged = {a.path for a in client.list_artifacts(analysis_runs[0].info.run_id)}
    assert {"summary.json", "accuracy_vs_poison.png"} <= logged

    sweep = read_sweep("ps-test", store["uri"], study="poison_sensitivity")
    results = {c.name: c.passed for c in ANALYSIS.checks(sweep, ANALYSIS.analyze(sweep))}
    assert results["all grid points finished"] and results["aggregate points"] and results["no duplicate grid points"]
