"""Hardening, each defect replayed for real: planted pickles, two writers, impossible resources, a tracking server
that goes away, stores that cannot be written, interruptions, hung points. Every test asserts the final run statuses."""

import os
import pickle
import shutil
import signal
import socket
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import PYTHON, python_env
from record import schema
from record.runs import search_all_runs
from test_own_study import write_package
from test_tracking_server import free_port
from tune_jobs.tracking_server import TrackingServer

SMALL = ["--grid", "poison_fraction=0,0.5", "--grid", "hidden_width=8", "--grid", "seed=1", "--set", "epochs=10"]


def launch(args, cwd, timeout=600, env=None, **kwargs):
    return subprocess.run([PYTHON, "-m", "tune_jobs", *args], cwd=cwd, env=env or python_env(), capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def start(args, cwd, log):
    return subprocess.Popen([PYTHON, "-m", "tune_jobs", *args], cwd=cwd, env=python_env(), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def runs(uri, experiment, kind=schema.KIND_POINT):
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return search_all_runs(client, [found.experiment_id], f"tags.`{schema.TAG_KIND}` = '{kind}'")


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # the store may not exist yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def n_finished(uri, experiment):
    return sum(r.info.status == "FINISHED" for r in runs(uri, experiment))


def statuses(uri, experiment, kind=schema.KIND_POINT):
    return sorted(r.info.status for r in runs(uri, experiment, kind))


def read_only_mount_prefix(folder: Path) -> list[str]:
    """``unshare -m`` + a read-only bind mount of ``folder`` for the command after it (skip where root can't)."""
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind -o ro {folder} {folder}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no read-only bind mount here: {probe.stderr.strip()}")
    return ["unshare", "-m", "sh", "-c", f'mount --bind -o ro {folder} {folder} && exec "$@"', "sh"]


class PlantedPickle:
    """What an attacker plants as tuner.pkl: unpickling it runs a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_resume_never_unpickles_a_path_from_the_record_nor_state_others_can_write(store):
    uri, common = store["uri"], ["--tracking-uri", store["uri"], "--storage-path", store["ray"]]
    diverging = ["poison_sensitivity", *SMALL, "--set", "lr=5", *common]
    assert launch(diverging, store["dir"]).returncode == 1  # both points FAILED: a sweep to resume
    evil, marker = store["dir"] / "evil", store["dir"] / "PWNED"
    evil.mkdir()
    (evil / "tuner.pkl").write_bytes(pickle.dumps(PlantedPickle(marker)))
    (sweep,) = runs(uri, "poison_sensitivity", schema.KIND_SWEEP)
    MlflowClient(uri).set_tag(sweep.info.run_id, schema.TAG_RAY_EXPERIMENT, str(evil))  # the REST set-tag attack

    resumed = launch([*diverging, "--resume"], store["dir"])
    assert not marker.exists(), "the planted pickle ran"
    assert resumed.returncode == 1 and "restoring the Ray Tune experiment" in resumed.stdout
    assert str(evil) not in resumed.stdout + resumed.stderr
    assert set(statuses(uri, "poison_sensitivity")) <= {"FAILED", "KILLED"}

    state = Path(store["ray"]) / f"poison_sensitivity-{sweep.info.run_id}"
    state.chmod(0o777)  # someone else could have replaced what Ray Tune would unpickle
    refused = launch([*diverging, "--resume"], store["dir"])
    assert refused.returncode == 2 and "is not private" in refused.stderr and "refusing to unpickle" in refused.stderr
    assert not marker.exists()
    assert statuses(uri, "poison_sensitivity", schema.KIND_SWEEP) == ["FAILED"]
    assert "RUNNING" not in statuses(uri, "poison_sensitivity")


def test_a_resume_while_the_sweep_runs_is_refused_and_the_sweep_completes(default_poison_sweep):
    """The session's default sweep (conftest): a second launch tried --resume on it once 10 points had finished."""
    uri, second = default_poison_sweep["uri"], default_poison_sweep["second"]
    assert second is not None, "timed out waiting for 10 finished points: " + default_poison_sweep["output"][-2000:]
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    assert "another launch is running sweep" in second.stderr and "--force" in second.stderr
    assert default_poison_sweep["second_took"] < 60
    assert default_poison_sweep["returncode"] == 0
    assert "8 passed, 0 failed" in default_poison_sweep["output"]
    points = [r.data.tags[schema.TAG_POINT] for r in runs(uri, "poison_sensitivity")]
    assert statuses(uri, "poison_sensitivity") == ["FINISHED"] * 81 and len(set(points)) == 81
    assert statuses(uri, "poison_sensitivity", schema.KIND_SWEEP) == ["FINISHED"]


@pytest.mark.parametrize("flag, message", [
    (["--cpus-per-trial", "4"], "of 4 CPU(s) and 0 GPU(s)"),
    (["--gpus-per-trial", "1"], "of 1 CPU(s) and 1 GPU(s)"),
])
def test_resources_no_node_can_hold_exit_2_before_any_ray_trial(store, flag, message):
    started = time.monotonic()
    proc = launch(["poison_sensitivity", *SMALL, *flag, "--tracking-uri", store["uri"], "--storage-path",
                   store["ray"]], store["dir"])
    assert proc.returncode == 2 and "no node of the Ray cluster can hold a Ray trial " + message in proc.stderr
    assert "--wait-for-resources" in proc.stderr and time.monotonic() - started < 90
    assert statuses(store["uri"], "poison_sensitivity", schema.KIND_SWEEP) == ["FAILED"]
    assert runs(store["uri"], "poison_sensitivity") == []


LONG = ["poison_sensitivity", "--grid", "poison_fraction=0,0.1,0.2,0.3", "--grid", "hidden_width=8",
        "--grid", "seed=1", "--set", "epochs=15000", "--points-per-trial", "1"]  # 4 points of a few seconds each


def test_a_tracking_server_restarted_in_seconds_loses_nothing_and_one_gone_for_good_fails_in_bound(tmp_path):
    port = free_port()
    server = lambda: TrackingServer(f"sqlite:///{tmp_path / 'server.db'}", str(tmp_path / "artifacts"),  # noqa: E731
                                    port=port, log_file=tmp_path / "server.log")
    uri = f"http://127.0.0.1:{port}"
    common = ["--tracking-uri", uri, "--storage-path", str(tmp_path / "ray")]
    first = server().start()
    with open(tmp_path / "bounced.log", "w+") as log:
        bounced = start([*LONG, "--experiment", "bounced", "--tracking-timeout", "240", *common], tmp_path, log)
        wait_for(lambda: n_finished(uri, "bounced") >= 1, 300, "a finished point")
        first.stop()
        restarted = server().start()  # back well within the 62 s of retries that a 240 s bound allows
        assert bounced.wait(timeout=600) == 0, (log.seek(0), log.read()[-3000:])
    assert statuses(uri, "bounced") == ["FINISHED"] * 4

    with open(tmp_path / "gone.log", "w+") as log:
        gone = start([*LONG, "--experiment", "gone", "--tracking-timeout", "30", *common], tmp_path, log)
        wait_for(lambda: n_finished(uri, "gone") >= 1, 300, "a finished point")
        restarted.stop()
        stopped = time.monotonic()
        assert gone.wait(timeout=300) == 1
        took = time.monotonic() - stopped
        log.seek(0)
        output = log.read()
    assert took < 30 + 45, f"the launch took {took:.0f} s to give up"  # the bound, an in-flight point, Ray's stop
    assert uri in output and "Nothing is lost" in output and "--resume " in output, output[-3000:]
    (said,) = [line for line in output.splitlines() if line.startswith("error: ")]
    assert "stopped answering" in said and "Traceback" not in said, said  # what happened, not a traceback's head

    with server():
        resumed = launch([*LONG, "--experiment", "gone", *common, "--resume", "--force"], tmp_path)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        finished = [r.data.tags[schema.TAG_POINT] for r in runs(uri, "gone") if r.info.status == "FINISHED"]
        assert len(finished) == len(set(finished)) == 4
        assert "RUNNING" not in statuses(uri, "gone") + statuses(uri, "gone", schema.KIND_SWEEP)


def test_an_artifact_store_that_cannot_be_written_stops_the_launch_before_any_training(store):
    artifacts = store["dir"] / "read-only-artifacts"
    artifacts.mkdir()
    MlflowClient(store["uri"]).create_experiment("ro", artifact_location=artifacts.as_uri())
    command = ["poison_sensitivity", *SMALL, "--experiment", "ro", "--tracking-uri", store["uri"],
               "--storage-path", store["ray"]]
    proc = subprocess.run([*read_only_mount_prefix(artifacts), PYTHON, "-m", "tune_jobs", *command],
                          cwd=store["dir"], env=python_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and f"the artifact store {artifacts.as_uri()}" in proc.stderr, proc.stderr[-2000:]
    assert statuses(store["uri"], "ro", schema.KIND_SWEEP) == ["FAILED"] and runs(store["uri"], "ro") == []


def test_a_run_whose_artifacts_cannot_be_written_still_ends_failed(store):
    from record.write import SweepWriter

    blocker = store["dir"] / "a-file"
    blocker.write_text("not a folder")  # artifacts below a file cannot be written, not even by root
    client = MlflowClient(store["uri"])
    experiment = client.create_experiment("blocked", artifact_location=(blocker / "artifacts").as_uri())
    parent = client.create_run(experiment).info.run_id
    writer = SweepWriter(store["uri"], experiment, parent, "poison_sensitivity")
    run_id = writer.start("x=1", {"x": 1}, "ray-trial")
    writer.fail(run_id, RuntimeError("boom"))
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags[schema.TAG_ERROR] == "RuntimeError: boom"


@pytest.mark.parametrize("args, message", [
    (["--experiment", ""], "--experiment must be a non-empty name"),
    (["--experiment", " padded"], "--experiment must be a non-empty name"),
    (["--tracking-uri", "sqllite:///x.db"], "unknown scheme 'sqllite'"),
    (["--storage-path", "/proc/x"], "--storage-path /proc/x cannot be written"),
    (["--set", "lr=inf"], "lr must be a finite number, got inf"),
    (["--tracking-timeout", "1"], "--tracking-timeout must be >= 10 seconds"),
])
def test_bad_settings_exit_2_before_ray_starts(tmp_path, args, message):
    started = time.monotonic()
    proc = launch(["poison_sensitivity", *SMALL, *args], tmp_path, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert "Ray" not in proc.stdout + proc.stderr and time.monotonic() - started < 30
    assert not (tmp_path / "mlruns").exists(), "nothing is created for a refused launch"


def test_a_store_in_a_read_only_folder_is_refused_at_once(tmp_path):
    folder = tmp_path / "store"
    folder.mkdir()
    started = time.monotonic()
    proc = subprocess.run([*read_only_mount_prefix(folder), PYTHON, "-m", "tune_jobs", "poison_sensitivity", *SMALL,
                           "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}"], cwd=tmp_path, env=python_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"the tracking store's folder {folder} cannot be written" in proc.stderr
    assert time.monotonic() - started < 30


def test_two_first_launches_on_a_new_store_both_succeed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    logs = [open(tmp_path / f"{i}.log", "w+") for i in range(2)]
    procs = [start(["poison_sensitivity", *SMALL, "--tracking-uri", uri, "--storage-path", str(tmp_path / f"ray{i}")],
                   tmp_path, logs[i]) for i in range(2)]
    for proc, log in zip(procs, logs):
        log.seek(0)
        assert proc.wait(timeout=600) == 0, log.read()[-3000:]
    assert statuses(uri, "poison_sensitivity") == ["FINISHED"] * 4
    assert statuses(uri, "poison_sensitivity", schema.KIND_SWEEP) == ["FINISHED"] * 2


def test_private_by_default(tmp_path):
    proc = launch(["poison_sensitivity", *SMALL, "--storage-path", str(tmp_path / "ray")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    store = tmp_path / "mlruns"
    assert (store.stat().st_mode & 0o777, (store / "mlflow.db").stat().st_mode & 0o777,
            (store / "artifacts").stat().st_mode & 0o777) == (0o700, 0o600, 0o700)
    check = ("import os; from tune_jobs.ray_env import set_private_defaults; set_private_defaults(120); "
             "print(os.environ['RAY_USAGE_STATS_ENABLED'], os.environ['MLFLOW_DISABLE_TELEMETRY'], "
             "os.environ['MLFLOW_HTTP_REQUEST_MAX_RETRIES'], os.environ['MLFLOW_HTTP_REQUEST_TIMEOUT'])")
    defaults = subprocess.run([PYTHON, "-c", check], env=python_env(), capture_output=True, text=True)
    assert defaults.stdout.split() == ["0", "true", "5", "15"]
    chosen = subprocess.run([PYTHON, "-c", check], env=dict(python_env(), RAY_USAGE_STATS_ENABLED="1"),
                            capture_output=True, text=True)
    assert chosen.stdout.split()[0] == "1", "a user's own choice is kept"


def test_the_team_server_refuses_a_taken_port_and_open_hosts_without_authentication(tmp_path):
    server = [PYTHON, "-m", "tune_jobs.tracking_server"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([*server, "--port", str(port)], cwd=tmp_path, env=python_env(), capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2 and f"--port {port} on 127.0.0.1 is taken" in proc.stderr
    env = python_env()
    env.pop("MLFLOW_AUTH_ADMIN_PASSWORD", None)
    proc = subprocess.run([*server, "--host", "0.0.0.0", "--port", str(free_port())], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "needs authentication: set MLFLOW_AUTH_ADMIN_PASSWORD" in proc.stderr
    proc = subprocess.run([*server, "--workers", "0"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "--workers must be >= 1, got 0" in proc.stderr

    port = free_port()
    env["MLFLOW_AUTH_ADMIN_PASSWORD"] = "a-long-admin-password-1"
    with open(tmp_path / "server.log", "w+") as log:
        secured = subprocess.Popen([*server, "--auth", "--port", str(port)], cwd=tmp_path, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
            wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200,
                     120, "the server")
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url, timeout=10)
            assert refused.value.code == 401
            token = b64encode(b"admin:a-long-admin-password-1").decode()
            request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
            assert urllib.request.urlopen(request, timeout=10).status == 200
        finally:
            os.killpg(secured.pid, signal.SIGTERM)
            secured.wait(timeout=60)


# Points that stay RUNNING long after their run opens (a point's run opens once it has run 2 s): the test kills or
# interrupts the launch while one runs, and a slow poll on a busy machine must not find the launch already over.
# Two points, one Ray trial each: on 2 CPUs both run at once, so no point of 60000 epochs is left to run after the
# Ray trials' workers are killed (with four, the launch computed two more before it could end FAILED).
RUNNING_LONG = ["poison_sensitivity", "--grid", "poison_fraction=0,0.1", "--grid", "hidden_width=8", "--grid", "seed=1",
                "--set", "epochs=60000", "--points-per-trial", "1"]


def test_a_killed_ray_trial_and_ctrl_c_leave_nothing_running(store, tmp_path):
    uri, common = store["uri"], ["--tracking-uri", store["uri"], "--storage-path", store["ray"]]
    with open(tmp_path / "killed.log", "w+") as log:
        driver = start([*RUNNING_LONG, "--experiment", "killed", *common], store["dir"], log)
        wait_for(lambda: "RUNNING" in statuses(uri, "killed"), 300, "a running point")
        workers = subprocess.run(["pgrep", "-s", str(driver.pid), "-f", "ray::ImplicitFunc"], capture_output=True,
                                 text=True).stdout.split()
        assert workers, "the Ray trials' worker processes"
        for worker in workers:  # one of them computes the RUNNING point
            os.kill(int(worker), signal.SIGKILL)
        assert driver.wait(timeout=600) == 1
        log.seek(0)
        assert "marked FAILED" in log.read()
    killed = [r for r in runs(uri, "killed") if r.info.status != "FINISHED"]
    assert killed and all(r.info.status == "FAILED" for r in killed)
    assert any("ended without finishing it" in r.data.tags.get(schema.TAG_ERROR, "") for r in killed)
    assert statuses(uri, "killed", schema.KIND_SWEEP) == ["FAILED"]

    with open(tmp_path / "interrupted.log", "w+") as log:
        driver = start([*RUNNING_LONG, "--experiment", "interrupted", *common], store["dir"], log)
        wait_for(lambda: "RUNNING" in statuses(uri, "interrupted"), 300, "a running point")
        os.kill(driver.pid, signal.SIGINT)
        assert driver.wait(timeout=120) == 1
        log.seek(0)
        assert "--resume" in log.read()
    assert statuses(uri, "interrupted", schema.KIND_SWEEP) == ["KILLED"]
    assert set(statuses(uri, "interrupted")) <= {"FINISHED", "KILLED"} and "KILLED" in statuses(uri, "interrupted")


HANGING_LOSS = """
import torch.nn.functional as F

class RobustLoss:
    def compute_loss(self, logits, labels, epoch):
        while {condition}:
            pass
        return F.cross_entropy(logits, labels)
"""


def test_a_hanging_loss_is_reported_by_the_probe_and_a_hanging_point_times_out(store, tmp_path):
    probe_hang, train_hang = tmp_path / "probe_hang.py", tmp_path / "train_hang.py"
    probe_hang.write_text(textwrap.dedent(HANGING_LOSS.format(condition="True")))
    train_hang.write_text(textwrap.dedent(HANGING_LOSS.format(condition="logits.shape[0] == 64")))  # training only
    started = time.monotonic()
    proc = launch(["robust_loss", "--grid", f"loss=cross_entropy,{probe_hang}", "--grid", "seed=42", "--tracking-uri", store["uri"]],
                  store["dir"], timeout=300)
    assert proc.returncode == 2 and f"loss {str(probe_hang)!r}: the probe did not return within 30 s" in proc.stderr
    assert time.monotonic() - started < 30 + 30

    proc = launch(["robust_loss", "--grid", f"loss=cross_entropy,{train_hang}", "--grid", "seed=42", "--set", "epochs=2",
                   "--point-timeout", "20", "--tracking-uri", store["uri"], "--storage-path", store["ray"]],
                  store["dir"])  # 20 s: the cross_entropy point (a few seconds alone) took over 10 s on a loaded machine
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    by_loss = {r.data.params["loss"]: r for r in runs(store["uri"], "robust_loss")}
    assert by_loss["cross_entropy"].info.status == "FINISHED", by_loss["cross_entropy"].data.tags.get(schema.TAG_ERROR)
    assert by_loss[str(train_hang)].info.status == "FAILED"
    assert "longer than --point-timeout 20 s" in by_loss[str(train_hang)].data.tags[schema.TAG_ERROR]


def test_a_contract_error_names_the_loss_that_broke_it(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nclass RobustLoss:\n    def compute_loss(self, logits, labels, epoch):\n"
                      "        return logits.sum(1)\n")
    proc = launch(["robust_loss", "--grid", f"loss=cross_entropy,generalized_ce,{broken}", "--grid", "seed=42",
                   "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"], tmp_path, timeout=120)
    assert proc.returncode == 2 and f"loss {str(broken)!r}: compute_loss returned a tensor of shape" in proc.stderr
    shutil.rmtree(tmp_path / "mlruns", ignore_errors=True)


def test_a_resumed_point_runs_the_loss_code_it_recorded_or_nothing(store, tmp_path):
    loss = tmp_path / "my_loss.py"
    loss.write_text("import torch.nn.functional as F\n\nclass RobustLoss:\n"
                    "    def compute_loss(self, logits, labels, epoch):\n        return F.cross_entropy(logits, labels)\n")
    args = ["robust_loss", "--grid", f"loss={loss}", "--grid", "seed=42", "--scale", "smoke", "--tracking-uri", store["uri"],
            "--storage-path", store["ray"]]
    assert launch(args, store["dir"]).returncode == 0
    loss.write_text(loss.read_text().replace("(logits, labels)", "(logits, labels, label_smoothing=0.1)"))
    proc = launch([*args, "--resume"], store["dir"], timeout=300)
    assert proc.returncode == 2 and "was run with loss_sha256=" in proc.stderr, proc.stderr[-2000:]
    assert statuses(store["uri"], "robust_loss", schema.KIND_SWEEP) == ["FINISHED"], "a refused resume changes nothing"
    assert statuses(store["uri"], "robust_loss") == ["FINISHED"]


IMPORTED_RAY_FIRST = """
import sys
import ray  # a notebook or a test imported Ray before launching: Ray read its settings then
from tune_jobs.runner import main
print("STATUS", main("poison_sensitivity", sys.argv[1:]))
"""


WAITING_STUDY = """
from dataclasses import dataclass
import time

from core.point import PointResult
from tune_jobs.study import Study


@dataclass(frozen=True)
class Config:
    x: int = 1


def run_point(config, context):
    time.sleep(3)
    return PointResult(metrics={"y": float(config.x)})


STUDY = Study(name="waiting", description="Ray trials that wait for CPUs", config_type=Config,
              grid={"x": (1, 2, 3)}, run_point=run_point, metrics=("y",), points_per_trial=1)
"""


def test_ray_trials_waiting_for_cpus_put_no_autoscaler_events_on_the_console(store):
    """A local Ray runs Ray's v2 autoscaler monitor (v1's holds up every shutdown for a second); on one machine its
    events only say that Ray trials wait for CPUs ("no node type fits them"), so the launch turns them off."""
    write_package(store["dir"], "waiting_pkg", {"waiting": WAITING_STUDY})
    env = python_env()
    for name in ("RAY_enable_autoscaler_v2", "RAY_SCHEDULER_EVENTS"):  # set here by an earlier launch in this process
        env.pop(name, None)
    proc = launch(["waiting_pkg.waiting", "--cpus-per-trial", str(os.cpu_count()), "--tracking-uri", store["uri"],
                   "--storage-path", store["ray"]], cwd=store["dir"], env=env)
    assert proc.returncode == 0 and "3/3 grid points finished" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "(autoscaler" not in proc.stdout + proc.stderr, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_a_launch_from_a_process_that_imported_ray_first(store):
    """Ray reads RAY_AUTH_MODE at import; the launcher must not hand its local Ray's processes a setting the
    driver never read (a GCS in token mode that the driver cannot talk to: "Failed to start GCS")."""
    args = [*SMALL, "--tracking-uri", store["uri"], "--storage-path", store["ray"]]
    env = python_env()
    env.pop("RAY_AUTH_MODE", None)
    proc = subprocess.run([PYTHON, "-c", IMPORTED_RAY_FIRST, *args], cwd=store["dir"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert "STATUS 0" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert statuses(store["uri"], "poison_sensitivity") == ["FINISHED", "FINISHED"]
