"""A real 2-node Ray cluster (separate `ray start` processes on loopback aliases) and a tracking server."""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import PYTHON, python_env
from test_tracking_server import free_port
from record import schema
from record.runs import search_all_runs
from tune_jobs.tracking_server import TrackingServer

RAY = str(Path(PYTHON).parent / "ray")
HEAD, WORKER = "127.0.0.2", "127.0.0.3"


# long enough that the first node to boot its worker cannot finish every trial before the other node's is up
EPOCHS = 4000


def _session_pids(session: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == session:
                    pids.append(int(entry))
            except ProcessLookupError:
                continue
    return pids


def _stop_session(session: int) -> None:
    """SIGTERM, then SIGKILL, every process of the session the test started (some Ray daemons ignore SIGTERM)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        for pid in _session_pids(session):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _session_pids(session):
            time.sleep(0.2)


@pytest.fixture
def two_node_cluster(tmp_path):
    port = free_port()
    env = dict(python_env(), RAY_AUTH_MODE="token")
    temp_dir = Path(tempfile.mkdtemp(prefix="rl-ray-", dir="/tmp"))  # AF_UNIX socket paths must stay short
    common = ["--num-cpus", "1", "--temp-dir", str(temp_dir), "--disable-usage-stats"]
    head = subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--node-ip-address", HEAD,
                             "--include-dashboard=false", *common], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sessions = [head.pid]
    try:
        out, _ = head.communicate(timeout=120)
        assert head.returncode == 0, out[-3000:]
        worker = subprocess.Popen([RAY, "start", "--address", f"{HEAD}:{port}", "--node-ip-address", WORKER,
                                   *common], env=env, start_new_session=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        sessions.append(worker.pid)
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, out[-3000:]
        yield f"{HEAD}:{port}", env
    finally:
        for session in sessions:
            _stop_session(session)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_sweep_on_two_nodes_reaches_the_tracking_server(two_node_cluster, tmp_path):
    address, env = two_node_cluster
    with TrackingServer(f"sqlite:///{tmp_path / 'server.db'}", str(tmp_path / "artifacts"), port=free_port(),
                        log_file=tmp_path / "server.log") as server:
        proc = subprocess.run([PYTHON, "-m", "tune_jobs.poison_sensitivity", "--address", address,
                               "--tracking-uri", server.uri, "--grid", "poison_fraction=0,0.1,0.2,0.3",
                               "--grid", "hidden_width=8", "--grid", "seed=1,2", "--set", f"epochs={EPOCHS}",
                               "--points-per-trial", "1", "--storage-path", str(tmp_path / "ray")],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        client = MlflowClient(server.uri)
        experiment_id = client.get_experiment_by_name("poison_sensitivity").experiment_id
        runs = search_all_runs(client, [experiment_id], "tags.`robustlab.kind` = 'trial'")
        assert len(runs) == 8 and all(r.info.status == "FINISHED" for r in runs)
        assert all(len(client.get_metric_history(r.info.run_id, "train_loss")) == EPOCHS for r in runs)
        nodes = {r.data.tags[schema.TAG_NODE] for r in runs}
        assert nodes == {HEAD, WORKER}, f"trials ran on {nodes}"


def test_ray_address_that_does_not_answer_fails_fast(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = subprocess.run([PYTHON, "-m", "tune_jobs.poison_sensitivity", "--address", address,
                           "--tracking-uri", f"sqlite:///{tmp_path}/m.db"], capture_output=True, text=True,
                          env=python_env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and address in proc.stderr and "no Ray cluster answers" in proc.stderr
    assert time.monotonic() - started < 15 + 10  # 15 s budget plus interpreter start-up
