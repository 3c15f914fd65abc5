"""Issue 26 item 4: a search sweep's robust_loss analysis does not take its samples for seeds. The sweep is
written through the record's own writer into a real SQLite store (what an Optuna search over (loss.q, lr) with
every point at seed 42 leaves), then analysed by the real analysis."""

import json

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from record import schema


def _search_sweep(uri):
    from record.runs import get_or_create_experiment
    from record.write import create_sweep, log_flat

    client = MlflowClient(uri)
    experiment = get_or_create_experiment(client, "robust_loss", uri)
    fixed = {"epochs": 3, "val_fraction": 0.1, "search": "optuna", "num_samples": 3, "search_seed": 0,
             "scheduler": "fifo", "space.loss.q": "uniform(0.1, 0.9)", "space.lr": "loguniform(0.001, 0.1)",
             "metric": "val_acc", "mode": "max"}
    sweep = create_sweep(client, experiment, study="robust_loss", run_name="robust_loss-search", command="test",
                         fixed=fixed, grid={"benchmark": ("cnn-digits-labelflip",), "loss": ("generalized_ce",),
                                            "seed": (42,)}, n_points=3,
                         param_types={"epochs": "int", "seed": "int", "val_fraction": "float", "lr": "float"})
    for q, lr, val, test, fit in ((0.4812893194050143, 0.01, 0.91, 0.80, 0.30), (0.2, 0.05, 0.95, 0.70, 0.50),
                                  (0.7, 0.002, 0.85, 0.90, 0.10)):
        point = f"loss.q={q!r} lr={lr!r}"
        tags = {schema.TAG_PARENT: sweep, schema.TAG_SWEEP: sweep, schema.TAG_STUDY: "robust_loss",
                schema.TAG_KIND: schema.KIND_POINT, schema.TAG_POINT: point}
        run_id = client.create_run(experiment, tags=tags, run_name=point).info.run_id
        metrics = {"val_acc": val, "test_acc": test, "poison_fit": fit, "robust_score": (test + 1 - fit) / 2,
                   "final_train_loss": 0.5}
        log_flat(client, run_id, params={"benchmark": "cnn-digits-labelflip", "loss": "generalized_ce", "seed": 42,
                                         "lr": lr, "loss.q": q, "epochs": 3},
                 metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()])
        client.set_terminated(run_id, "FINISHED")
    client.set_terminated(sweep, "FINISHED")


def test_a_search_sweep_is_reported_per_point_not_as_seeds(tmp_path):
    from analysis.common import run_analysis
    from analysis.robust_loss import ANALYSIS
    from record.read import read_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _search_sweep(uri)
    out = tmp_path / "out"
    assert run_analysis(ANALYSIS, read_sweep("robust_loss", uri), out, log=False) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert '"n_seeds": 3' not in (out / "summary.json").read_text() and "benchmarks" not in summary
    assert summary["search"] == {"algorithm": "optuna", "keys": ["loss.q", "lr"], "ranked_by": "val_acc",
                                 "mode": "max", "n_points": 3, "n_distinct_seeds": 1, "seeds": [42]}
    assert [p["val_acc"] for p in summary["points"]] == [0.95, 0.91, 0.85], "best first by the validation metric"
    text = (out / "leaderboard.md").read_text()
    assert "3 seed(s)" not in text and "[" not in text and "±" not in text, "no interval or std over the samples"
    assert "search sweep (optuna) over loss.q, lr: 3 point(s), 1 distinct seed(s)" in text
    assert "| 0.4813 |" in text and "0.4812893194050143" not in text
    assert "best point by val_acc" in text and "loss.q=0.2 lr=0.05" in text
