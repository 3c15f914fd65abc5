"""Real failures and real interruptions: failing trials, a SIGKILLed driver, --resume."""

import json
import os
import signal
import subprocess
import time

from mlflow.tracking import MlflowClient

from conftest import PYTHON, python_env
from record import schema
from record.runs import search_all_runs
from tune_jobs.runner import main


def _children(uri, experiment="poison_sensitivity"):
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return search_all_runs(client, [experiment_id], "tags.`robustlab.kind` = 'trial'")


def test_diverging_trials_end_failed_with_error_and_traceback(store, capsys):
    status = main("poison_sensitivity", ["--grid", "poison_fraction=0,0.5", "--grid", "hidden_width=8",
                                         "--grid", "seed=1", "--set", "lr=5", "--set", "epochs=10",
                                         "--tracking-uri", store["uri"], "--storage-path", store["ray"]])
    assert status == 1
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "2 grid point(s) did not finish (2 failed" in last_line and "robustlab.error" in last_line
    children = _children(store["uri"])
    assert len(children) == 2, "every point is attempted although the first one fails"
    client = MlflowClient(store["uri"])
    for run in children:
        assert run.info.status == "FAILED"
        assert "train loss became non-finite" in run.data.tags[schema.TAG_ERROR]
        traceback_file = client.download_artifacts(run.info.run_id, "error/traceback.txt", str(store["dir"]))
        assert "FloatingPointError" in open(traceback_file).read()
    parent = [r for r in client.search_runs([children[0].info.experiment_id]) if r.data.tags.get(schema.TAG_KIND) == "sweep"]
    assert parent[0].info.status == "FAILED"


def test_sigkilled_driver_resumes_without_loss_or_duplicates(store):
    command = [PYTHON, "-m", "tune_jobs.poison_sensitivity", "--tracking-uri", store["uri"],
               "--storage-path", store["ray"]]
    driver = subprocess.Popen(command, cwd=store["dir"], env=python_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    finished = 0
    while time.monotonic() < deadline and driver.poll() is None:
        time.sleep(1)
        try:
            finished = sum(r.info.status == "FINISHED" for r in _children(store["uri"]))
        except Exception:  # the experiment may not exist yet
            continue
        if finished >= 10:
            break
    assert driver.poll() is None and finished >= 10, "the sweep must be running with >= 10 finished points"
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    killed_at = sum(r.info.status == "FINISHED" for r in _children(store["uri"]))
    assert killed_at < 81

    out = store["dir"] / "analysis"
    resumed = subprocess.run(command + ["--resume", "--analyze", str(out)], cwd=store["dir"], env=python_env(),
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"({killed_at} already finished)" in resumed.stdout or "already finished" in resumed.stdout
    children = _children(store["uri"])
    finished_points = [r.data.tags[schema.TAG_POINT] for r in children if r.info.status == "FINISHED"]
    assert len(finished_points) == 81 and len(set(finished_points)) == 81
    assert all(r.info.status in ("FINISHED", "KILLED") for r in children)
    summary = json.loads((out / "summary.json").read_text())
    table = {w: (round(e["clean_acc"], 3), round(100 * e["threshold"], 1), round(e["r2"], 3),
                 round(e["gen_gap_at_max"], 3)) for w, e in summary["widths"].items()}
    from test_poison_full_table import ONE_THREAD

    assert table == ONE_THREAD, "the resumed sweep gives the uninterrupted sweep's table"


SLOW_CE = """
import time
import torch.nn.functional as F

class RobustLoss:
    def compute_loss(self, logits, labels, epoch):
        time.sleep(0.2)  # slow enough to be interrupted mid-point; the numbers are cross-entropy's
        return F.cross_entropy(logits, labels)
"""


def test_an_interrupted_robust_loss_sweep_resumes_from_ray_tunes_saved_experiment(store, tmp_path):
    """Ctrl-C, then --resume with the same --storage-path: Ray Tune restores its experiment, whose saved configs
    hold the loss's tuple of hyperparameters; the point continues once, with the uninterrupted numbers."""
    loss = tmp_path / "slow_ce.py"
    loss.write_text(SLOW_CE)
    common = ["--grid", f"loss={loss}", "--grid", "seed=42", "--set", "epochs=3", "--checkpoint-every", "1",
              "--system-metrics", "0", "--tracking-uri", store["uri"], "--storage-path", store["ray"]]
    command = [PYTHON, "-m", "tune_jobs", "robust_loss", *common, "--experiment", "interrupted"]
    driver = subprocess.Popen(command, cwd=store["dir"], env=python_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, client = time.monotonic() + 300, MlflowClient(store["uri"])
    while time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.5)
        try:
            runs = _children(store["uri"], "interrupted")
        except Exception:  # the experiment may not exist yet
            continue
        if runs and client.get_run(runs[0].info.run_id).data.tags.get(schema.TAG_CHECKPOINT):
            break
    assert driver.poll() is None, "the point must still be training when interrupted"
    os.killpg(driver.pid, signal.SIGINT)
    assert driver.wait(timeout=120) != 0
    resumed = subprocess.run(command + ["--resume"], cwd=store["dir"], env=python_env(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "restoring the Ray Tune experiment" in resumed.stdout
    assert main("robust_loss", [*common, "--experiment", "uninterrupted"]) == 0
    (run,) = [r for r in _children(store["uri"], "interrupted") if r.info.status == "FINISHED"]
    (plain,) = _children(store["uri"], "uninterrupted")
    for key in ("train_loss", "test_acc", "poison_fit"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [0, 1, 2], key
    for key in ("test_acc", "poison_fit", "robust_score", "final_train_loss"):
        assert run.data.metrics[key] == plain.data.metrics[key], key
