"""A reduced adversarial_scaling sweep through real Ray and SQLite MLflow, then its analysis and validation."""

import json

from mlflow.tracking import MlflowClient

from record import schema
from record.runs import search_all_runs
from tune_jobs.runner import main


def test_reduced_sweep_logs_per_epsilon_histories_and_analyses(store):
    out = store["dir"] / "out"
    status = main("adversarial_scaling", ["--grid", "hidden_width=16,32,64", "--grid", "seed=1,2",
                                          "--set", "max_epochs=40", "--set", "epsilons=0.05,0.2",
                                          "--tracking-uri", store["uri"], "--storage-path", store["ray"],
                                          "--analyze", str(out)])
    assert status == 0  # sweep, analysis and validation checks all passed
    client = MlflowClient(store["uri"])
    experiment = client.get_experiment_by_name("adversarial_scaling")
    children = search_all_runs(client, [experiment.experiment_id], schema.POINT_FILTER)
    assert len(children) == 12 and all(c.info.status == "FINISHED" for c in children)
    child = children[0]
    assert child.data.params["epsilons"] == "0.05,0.2"
    assert int(child.data.params["param_count"]) == int(child.data.params["hidden_width"]) ** 2 + 6 * int(
        child.data.params["hidden_width"]) + 2
    for key in ("fgsm_acc", "pgd_acc", "fgsm_gap", "pgd_gap"):
        assert sorted(m.step for m in client.get_metric_history(child.info.run_id, key)) == [0, 1]
    assert {"clean_acc", "epochs_trained", "final_train_loss", "mean_fgsm_gap", "mean_pgd_gap"} <= set(child.data.metrics)
    ordered = [m.value for m in sorted(client.get_metric_history(child.info.run_id, "pgd_acc"), key=lambda m: m.step)]
    by_eps = client.get_metric_history(child.info.run_id, "pgd_acc_by_eps_x1000")  # step = 1000 x epsilon
    assert sorted((m.step, m.value) for m in by_eps) == list(zip((50, 200), ordered))
    assert child.data.metrics["pgd_acc/eps_0.2"] == ordered[1]
    [data] = child.inputs.dataset_inputs
    assert data.dataset.name == child.data.params["dataset"] and data.dataset.source_type == "code"
    assert json.loads(data.dataset.profile) == {"n_samples": 2000, "noise": 0.15, "seed": int(child.data.params["seed"])}
    assert [(t.key, t.value) for t in data.tags] == [("mlflow.data.context", "training")]
    csv = client.download_artifacts(child.info.run_id, "robustness.csv", str(store["dir"]))
    assert open(csv).readline().strip() == "epsilon,fgsm_acc,pgd_acc,fgsm_gap,pgd_gap"

    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_evaluations"] == 12 * 2
    for dataset in ("circles", "moons"):
        entry = summary["datasets"][dataset]
        assert len(entry["widths"]) == 3
        for attack in ("fgsm", "pgd"):
            c = entry["correlations"][attack]
            assert -1 <= c["r"] <= 1 and 0 <= c["p_value"] <= 1 and c["ci_low"] <= c["r"] <= c["ci_high"]
    for name in ("clean_vs_robust.png", "robustness_gap.png", "param_scaling.png", "robustness_by_width.md"):
        assert (out / name).stat().st_size > 0
    # the width means as curves over the width (issue 26): the analysis run's histories with step = hidden_width
    [analysis] = search_all_runs(client, [experiment.experiment_id], f"tags.`{schema.TAG_KIND}` = '{schema.KIND_ANALYSIS}'")
    for dataset in ("circles", "moons"):
        widths = {w["hidden_width"]: w["mean_pgd_gap_mean"] for w in summary["datasets"][dataset]["widths"]}
        curve = client.get_metric_history(analysis.info.run_id, f"mean_pgd_gap_{dataset}_by_hidden_width")
        assert {m.step: m.value for m in curve} == widths
    assert child.data.metrics["dim.hidden_width"] == float(child.data.params["hidden_width"])
