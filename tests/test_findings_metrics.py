"""The analysis's findings are MLflow metrics of the analysis run and of the sweep's parent, with stable names."""

import json
import math

import mlflow
from mlflow.tracking import MlflowClient

from record import schema
from record.runs import search_all_runs


def test_poison_findings_are_metrics_of_the_analysis_run_and_the_parent(reduced_poison_sweep):
    """The session's reduced sweep (conftest: 4 fractions x widths 16, 32 x seeds 1, 2, and one analysis run)."""
    store, out, experiment = reduced_poison_sweep, reduced_poison_sweep["out"], reduced_poison_sweep["experiment"]
    summary = json.loads((out / "summary.json").read_text())
    client = MlflowClient(store["uri"])
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    (analysis,) = search_all_runs(client, [experiment_id], f"tags.`{schema.TAG_KIND}` = '{schema.KIND_ANALYSIS}'")
    parent = client.get_run(analysis.data.tags[schema.TAG_SWEEP])
    expected = {}
    for width, fit in summary["widths"].items():
        for name in ("threshold", "k", "r2", "gen_gap_at_max"):
            if fit[name] is not None:
                expected[f"{name}_w{width}"] = fit[name]
    intervals = summary["intervals"]  # 2 seeds: seed-bootstrap intervals, as metrics too (infinite ends left out)
    assert intervals["available"] and intervals["n_seeds"] == 2 and intervals["n_resamples"] == 1000
    named = {f"{key}_ci_{{}}_w{width}": pair for width, by_key in intervals["widths"].items()
             for key, pair in by_key.items()}
    named |= {f"threshold_diff_ci_{{}}_w{pair.replace('->', '_w')}": values
              for pair, values in intervals["threshold_differences"].items()}
    for name, pair in named.items():
        for end, value in zip(("low", "high"), pair or ()):
            if value is not None and math.isfinite(value):
                expected[name.format(end)] = value
    thresholds = {w: fit["threshold"] for w, fit in summary["widths"].items()}
    if None not in thresholds.values():
        expected["threshold_diff_w16_w32"] = thresholds["32"] - thresholds["16"]
    assert any("_ci_" in name for name in expected)
    curves = {name for name in analysis.data.metrics if name.endswith("_by_hidden_width")}
    assert expected and parent.data.metrics == expected
    assert {k: v for k, v in analysis.data.metrics.items() if k not in curves} == expected
    # each finding over width also a metric history of the analysis run, step = width (the UI plots it over width)
    assert {f"{name}_by_hidden_width" for name in ("threshold", "k", "r2", "gen_gap_at_max")
            if f"{name}_w16" in expected or f"{name}_w32" in expected} <= curves
    assert {"k_by_hidden_width", "gen_gap_at_max_by_hidden_width", "k_ci_low_by_hidden_width"} <= curves
    for name in curves:
        by_width = {m.step: m.value for m in client.get_metric_history(analysis.info.run_id, name)}
        stem = name[:-len("_by_hidden_width")]
        assert by_width == {int(k.rsplit("_w", 1)[1]): v for k, v in expected.items()
                            if k.startswith(stem + "_w") and k[len(stem) + 2:].isdigit()}, name

    mlflow.set_tracking_uri(store["uri"])
    try:
        sweeps = mlflow.search_runs(experiment_names=[experiment],
                                    filter_string=f"tags.`{schema.TAG_KIND}` = '{schema.KIND_SWEEP}'")
    finally:
        mlflow.set_tracking_uri(None)
    assert sweeps["metrics.gen_gap_at_max_w32"].tolist() == [expected["gen_gap_at_max_w32"]]
