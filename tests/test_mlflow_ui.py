"""What a user sees on first opening the MLflow UI: headless Chromium against a real `mlflow ui` on 127.0.0.1.

Skipped (with the reason) where Chromium is not installed; `.ci/run` installs Debian's `chromium` package.
"""

import html
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from conftest import python_env
from record import schema
from record.runs import search_all_runs
from test_tracking_server import free_port
from tune_jobs.runner import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")


def visible_text(url: str, screenshot=None) -> str:
    """The page's text once its scripts ran (virtual time: the UI's requests and rendering finish first)."""
    common = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--run-all-compositor-stages-before-draw",
              "--window-size=1500,1000", "--virtual-time-budget=20000"]
    if screenshot is not None:
        subprocess.run([*common, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    text = re.sub(r"<script.*?</script>|<style.*?</style>|<[^>]+>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(text))


@pytest.fixture
def mlflow_ui(store):
    """`mlflow ui` over the test's store on a free loopback port; stopped (its whole process group) afterwards."""
    port = free_port()
    log = open(store["dir"] / "ui.log", "w")
    process = subprocess.Popen([shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow", "ui",
                                "--backend-store-uri", store["uri"], "--host", "127.0.0.1", "--port", str(port)],
                               env=python_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("mlflow ui did not start: " + (store["dir"] / "ui.log").read_text()[-2000:])
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def test_the_printed_link_opens_the_sweep_with_its_points_nested_and_findings_shown(store, mlflow_ui, capsys):
    status = main("poison_sensitivity", ["--grid", "hidden_width=32", "--grid", "seed=42,43",
                                         "--tracking-uri", store["uri"], "--storage-path", store["ray"],
                                         "--analyze", str(store["dir"] / "out")])
    printed = capsys.readouterr().out
    assert status == 0, printed[-3000:]
    links = re.findall(r"MLflow UI: http://127\.0\.0\.1:\d+(/#/experiments/\d+/runs\?workflowType=machine_learning"
                       r"&searchFilter=\S+)", printed)
    assert len(links) == 2, printed  # after the launch and after the analysis
    client = MlflowClient(store["uri"])
    experiment = client.get_experiment_by_name("poison_sensitivity")
    [sweep] = search_all_runs(client, [experiment.experiment_id], "tags.`robustlab.kind` = 'sweep'")
    [analysis] = search_all_runs(client, [experiment.experiment_id], "tags.`robustlab.kind` = 'analysis'")
    points = search_all_runs(client, [experiment.experiment_id], schema.POINT_FILTER)
    assert len(points) == 18

    runs_page = visible_text(mlflow_ui + links[0], store["dir"] / "runs.png")
    assert "Model training" in runs_page and "Run Name" in runs_page, runs_page[:2000]  # the training runs table
    assert sweep.info.run_name in runs_page and sweep.info.run_name.startswith("poison_sensitivity-20")
    assert re.search(r"\b1 matching runs?\b", runs_page), runs_page[-1000:]  # the sweeps only ...
    assert not any(p.info.run_name in runs_page for p in points)
    # ... and a sweep's points and analysis run are one filter away (README, "Looking at the runs")
    from urllib.parse import quote

    sweep_filter = quote(f"tags.`robustlab.sweep_id` = '{sweep.info.run_id}' and tags.`robustlab.kind` = 'point'",
                         safe="")
    points_page = visible_text(mlflow_ui + links[0].partition("&searchFilter=")[0] + "&searchFilter=" + sweep_filter,
                               store["dir"] / "points.png")
    # the 18 points match; the UI adds their sweep as the row whose + expands them
    assert "19 matching runs" in points_page and sweep.info.run_name in points_page, points_page[:2000]

    point = points[0]
    point_page = visible_text(f"{mlflow_ui}/#/experiments/{experiment.experiment_id}/runs/{point.info.run_id}")
    assert point.info.run_name in point_page and re.fullmatch(r"pf=[\d.]+ s=4[23] w=32", point.info.run_name)
    assert f"Parent run {sweep.info.run_name}" in point_page
    assert "gaussian_clusters" in point_page and "python -m tune_jobs poison_sensitivity" in point_page

    analysis_page = visible_text(f"{mlflow_ui}/#/experiments/{experiment.experiment_id}/runs/{analysis.info.run_id}",
                                 store["dir"] / "analysis.png")
    threshold = analysis.data.metrics["threshold_w32"]
    assert "threshold_w32" in analysis_page and repr(threshold)[:5] in analysis_page, analysis_page[:3000]


def _many_sweeps(uri: str, n_sweeps: int, n_points: int) -> tuple[str, list[str]]:
    """``n_sweeps`` sweeps of ``n_points`` FINISHED points each, written through the record's own writer (as a store
    that lived for months holds them); their run names."""
    from record.runs import get_or_create_experiment
    from record.write import create_sweep

    client = MlflowClient(uri)
    experiment = get_or_create_experiment(client, "poison_sensitivity", uri)
    names = []
    for s in range(n_sweeps):
        name = f"poison_sensitivity-2026120{s + 1}-120000"
        sweep = create_sweep(client, experiment, study="poison_sensitivity", run_name=name, command="test",
                             fixed={"epochs": 5}, grid={"seed": tuple(range(n_points))}, n_points=n_points,
                             param_types={"seed": "int"})
        for p in range(n_points):
            tags = {schema.TAG_PARENT: sweep, schema.TAG_SWEEP: sweep, schema.TAG_STUDY: "poison_sensitivity",
                    schema.TAG_KIND: schema.KIND_POINT, schema.TAG_POINT: f"seed={p}"}
            run = client.create_run(experiment, tags=tags, run_name=f"s={p}")
            client.set_terminated(run.info.run_id, "FINISHED")
        client.set_terminated(sweep, "FINISHED")
        names.append(client.get_run(sweep).info.run_name)
    return experiment, names


def test_the_printed_link_shows_every_sweep_of_a_store_that_lived_for_months(store, mlflow_ui):
    from record.runs import ui_link

    experiment, names = _many_sweeps(store["uri"], n_sweeps=5, n_points=24)  # 125 runs: more than the UI's page
    link = ui_link(store["uri"], experiment).split(" ")[0].replace("http://127.0.0.1:5000", mlflow_ui)
    assert "&searchFilter=" in link
    page = visible_text(link, store["dir"] / "sweeps.png")
    assert "Model training" in page and "Run Name" in page, page[:2000]
    shown = [name for name in names if name in page]
    assert shown == names, f"the link shows {shown} of {names}"
    unfiltered = visible_text(link.partition("&searchFilter=")[0])  # the link as it was: one page of nested runs
    assert [name for name in names if name in unfiltered] != names


def test_a_points_model_opens_in_the_models_tab(store, mlflow_ui):
    """A point's trained model is an MLflow logged model (issue 26): listed in the experiment's Models tab with its
    point's run as source, its page showing its params, metrics and source run, and the point's run page listing it."""
    assert main("poison_sensitivity", ["--grid", "poison_fraction=0.2", "--grid", "hidden_width=8", "--grid", "seed=1",
                                       "--set", "epochs=5", "--log-models", "--tracking-uri", store["uri"],
                                       "--storage-path", store["ray"]]) == 0
    client = MlflowClient(store["uri"])
    experiment = client.get_experiment_by_name("poison_sensitivity").experiment_id
    [model] = client.search_logged_models([experiment])
    run = client.get_run(model.source_run_id)
    base = f"{mlflow_ui}/#/experiments/{experiment}"
    models_tab = visible_text(f"{base}/models?workflowType=machine_learning", store["dir"] / "models.png")
    assert re.search(rf"\bmodel Ready\b.*{re.escape(run.info.run_name)}", models_tab), models_tab[:3000]
    model_page = visible_text(f"{base}/models/{model.model_id}", store["dir"] / "model.png")
    for shown in (model.model_id, "registry_name mlp", f"Source run {run.info.run_name}", "Register model",
                  f"test_acc - {run.info.run_name} {run.data.metrics['test_acc']!r}"[:60]):
        assert shown in model_page, (shown, model_page[:3000])
    run_page = visible_text(f"{base}/runs/{run.info.run_id}")
    assert "Logged models (1)" in run_page and "dim.poison_fraction 0.2" in run_page, run_page[:3000]
