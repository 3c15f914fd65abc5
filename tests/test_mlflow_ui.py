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
    links = re.findall(r"MLflow UI: http://127\.0\.0\.1:\d+(/#/experiments/\d+/runs\?workflowType=machine_learning)",
                       printed)
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
    assert "20 matching runs" in runs_page  # the sweep, its 18 points and its analysis ...
    assert not any(p.info.run_name in runs_page for p in points)  # ... the points nested (collapsed) under it

    point = points[0]
    point_page = visible_text(f"{mlflow_ui}/#/experiments/{experiment.experiment_id}/runs/{point.info.run_id}")
    assert point.info.run_name in point_page and re.fullmatch(r"pf=[\d.]+ w=32 s=4[23]", point.info.run_name)
    assert f"Parent run {sweep.info.run_name}" in point_page
    assert "gaussian_clusters" in point_page and "python -m tune_jobs poison_sensitivity" in point_page

    analysis_page = visible_text(f"{mlflow_ui}/#/experiments/{experiment.experiment_id}/runs/{analysis.info.run_id}",
                                 store["dir"] / "analysis.png")
    threshold = analysis.data.metrics["threshold_w32"]
    assert "threshold_w32" in analysis_page and repr(threshold)[:5] in analysis_page, analysis_page[:3000]
