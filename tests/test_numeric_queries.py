"""Numeric questions through MLflow's own API (issue 26, item 5): a point's numeric grid values are also metrics
(``dim.<name>``: compared and ordered as numbers), and a finding's curve over an integer dimension is a metric
history of the analysis run with that dimension as its step. README's worked query runs verbatim."""

import re

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from conftest import ROOT
from record import schema
from record.read import read_sweep
from record.runs import search_all_runs
from tune_jobs.runner import main

GRID = ["--grid", "hidden_width=8,16,32", "--grid", "seed=42,43"]  # the default poison fractions 0 ... 0.5 and epochs


@pytest.fixture
def sweep_with_analysis(store):
    """A finished poison_sensitivity sweep with its analysis, in the embedded default store of ``store["dir"]``."""
    uri = f"sqlite:///{store['dir'] / 'mlruns' / 'mlflow.db'}"
    assert main("poison_sensitivity", [*GRID, "--tracking-uri", uri, "--storage-path", store["ray"],
                                       "--analyze", str(store["dir"] / "out")]) == 0
    return uri


def test_numeric_grid_values_are_metrics_and_the_readme_query_runs_verbatim(sweep_with_analysis, store):
    uri = sweep_with_analysis
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("poison_sensitivity").experiment_id
    points = search_all_runs(client, [experiment_id], f"tags.`{schema.TAG_KIND}` = '{schema.KIND_POINT}'")
    assert len(points) == 54
    for run in points:
        for dim in ("poison_fraction", "hidden_width", "seed"):
            assert run.data.metrics[f"dim.{dim}"] == float(run.data.params[dim])
    mlflow.set_tracking_uri(uri)
    try:
        with pytest.raises(MlflowException):  # the defect: params are text, MLflow refuses to compare them
            mlflow.search_runs(experiment_ids=[experiment_id], filter_string="params.poison_fraction >= '0.3'")
        text = (ROOT / "README.md").read_text()
        match = re.search(r"<!-- example: numeric questions -->\s*```python\n(.*?)```", text, re.S)
        assert match, "README lost its 'numeric questions' example"
        scope: dict = {}
        exec(compile(match.group(1), "README.md", "exec"), scope)  # verbatim, in the folder the launch ran in
    finally:
        mlflow.set_tracking_uri(None)
    runs = scope["runs"]
    assert len(runs) == 3 * 3 * 2  # fractions 0.3, 0.4 and 0.5, every width and seed
    assert runs["metrics.dim.poison_fraction"].min() >= 0.3
    widths = runs["metrics.dim.hidden_width"].tolist()
    assert widths == sorted(widths) and widths[0] == 8 and widths[-1] == 32, "ordered as numbers, 8 before 16"
    summary = read_sweep("poison_sensitivity", uri)
    assert not [c for c in summary.runs.columns if c.startswith("dim.")], "the read model's columns are unchanged"
    import json

    widths_found = json.loads((store["dir"] / "out" / "summary.json").read_text())["widths"]
    expected = {int(w): fit["threshold"] for w, fit in widths_found.items() if fit["threshold"] is not None}
    assert expected and scope["thresholds"] == pytest.approx(expected)
