"""A real Ray cluster with no shared storage: separate `ray start` processes on loopback aliases, the worker
nodes each seeing their own private folder at --storage-path (a tmpfs mounted in a mount namespace of their own),
and a real tracking server (with proxied artifacts) as the only thing the nodes have in common."""

import dataclasses
import os
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import PYTHON, python_env
from test_tracking_server import free_port
from vision_fixtures import write_cifar10, write_fashion_mnist
from record import schema
from record.runs import search_all_runs
from record.checkpoints import checkpoint_note
from tune_jobs.tracking_server import TrackingServer

pytestmark = pytest.mark.xdist_group(__name__)  # its module fixture: computed once, on one worker

RAY = str(Path(PYTHON).parent / "ray")
HEAD, WORKERS = "127.0.0.2", ("127.0.0.3", "127.0.0.4")

# long enough that the first node to boot its worker cannot finish every trial before the other node's is up
EPOCHS = 4000


def _unshare_works() -> str | None:
    """Why private mounts cannot be made here, or None."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare -m fails ({probe.stderr.strip()}; it needs root)"


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


def _stop_session(*sessions: int, signals=((signal.SIGTERM, 5), (signal.SIGKILL, 5))) -> None:
    """Signal every process of the sessions the test started (some Ray daemons ignore SIGTERM), all sessions at once:
    each signal's wait is shared rather than spent once per session."""
    for sig, wait in signals:
        for session in sessions:
            for pid in _session_pids(session):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(_session_pids(session) for session in sessions):
            time.sleep(0.2)


@pytest.mark.parametrize("address", [pytest.param("auto", marks=pytest.mark.solo), "127.0.0.1:PORT"])
def test_an_address_where_no_cluster_answers_exits_2_and_leaves_nothing_running(tmp_path, address):
    """'auto' must find no cluster: Ray also looks for one among this machine's processes, so that case runs alone
    (``solo``), after the other tests."""
    address = address.replace("PORT", str(free_port()))
    uri = f"sqlite:///{tmp_path}/m.db"
    env = python_env()
    env.pop("RAY_ADDRESS", None)
    # 'auto' reads the address file under the temp folder: a private one, so no other Ray on this machine answers
    (tmp_path / "tmp").mkdir()
    env.update(TMPDIR=str(tmp_path / "tmp"), RAY_TMPDIR=str(tmp_path / "tmp"))
    started = time.monotonic()
    proc = subprocess.run([PYTHON, "-m", "tune_jobs.poison_sensitivity", "--address", address, "--tracking-uri", uri],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and f"--address {address}: no Ray cluster answers" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - started < 15 + 10  # 15 s budget plus interpreter start-up
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("poison_sensitivity")
    statuses = [r.info.status for r in search_all_runs(client, [experiment.experiment_id], "")] if experiment else []
    assert "RUNNING" not in statuses


@dataclasses.dataclass
class Cluster:
    address: str
    env: dict
    storage: Path  # the launch's --storage-path: each worker node sees a private tmpfs there
    data_dir: Path
    sessions: dict  # node IP -> session id of its `ray start`


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (0 CPUs: trials land on the workers) and two 1-CPU workers with private storage; stopped afterwards."""
    reason = _unshare_works()
    if reason:
        pytest.skip(f"the private-storage cluster needs private mounts: {reason}")
    root = tmp_path_factory.mktemp("cluster")
    storage, data_dir = root / "storage", root / "data"
    storage.mkdir(mode=0o700)
    write_cifar10(data_dir / "cifar-10-batches-py", per_batch=16, n_test=24)
    write_fashion_mnist(data_dir / "FashionMNIST" / "raw", n_train=60, n_test=16)
    port = free_port()
    env = dict(python_env(), RAY_AUTH_MODE="token")
    temp_dir = Path(tempfile.mkdtemp(prefix="rl-ray-", dir="/tmp"))  # AF_UNIX socket paths must stay short
    common = ["--temp-dir", str(temp_dir), "--disable-usage-stats"]
    sessions = {}

    def start(ip: str, command: list[str]) -> None:
        proc = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        sessions[ip] = proc.pid
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out[-3000:]

    try:
        start(HEAD, [RAY, "start", "--head", "--port", str(port), "--node-ip-address", HEAD, "--num-cpus", "0",
                     "--include-dashboard=false", *common])
        for ip in WORKERS:
            join = " ".join([RAY, "start", "--address", f"{HEAD}:{port}", "--node-ip-address", ip, "--num-cpus", "1",
                             *common])
            start(ip, ["unshare", "-m", "--propagation", "private", "sh", "-c",
                       f"mount -t tmpfs tmpfs {storage} && exec {join}"])
        yield Cluster(f"{HEAD}:{port}", env, storage, data_dir, sessions)
    finally:
        _stop_session(*sessions.values())
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One tracking server for the module's launches (each test writes its own experiment); stopped afterwards."""
    root = tmp_path_factory.mktemp("server")
    with TrackingServer(f"sqlite:///{root / 'server.db'}", str(root / "artifacts"), port=free_port(),
                        log_file=root / "server.log") as running:
        yield running


def _launch(cluster: Cluster, study: str, args: list[str], cwd: Path, wait: bool = True):
    command = [PYTHON, "-m", f"tune_jobs.{study}", "--address", cluster.address, "--storage-path",
               str(cluster.storage), *args]
    if not wait:
        return subprocess.Popen(command, env=cluster.env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    return subprocess.run(command, env=cluster.env, cwd=cwd, capture_output=True, text=True, timeout=600)


def _point_runs(uri: str, experiment: str) -> tuple[MlflowClient, list]:
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client, search_all_runs(client, [experiment_id], f"tags.`{schema.TAG_KIND}` = '{schema.KIND_POINT}'")


def _files(folder: Path, part: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and part in p.parts]


def test_sweep_on_two_nodes_reaches_the_tracking_server(cluster, server, tmp_path):
    proc = _launch(cluster, "poison_sensitivity", [
        "--tracking-uri", server.uri, "--grid", "poison_fraction=0,0.1,0.2,0.3", "--grid", "hidden_width=8",
        "--grid", "seed=1,2", "--set", f"epochs={EPOCHS}", "--points-per-trial", "1"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client, runs = _point_runs(server.uri, "poison_sensitivity")
    assert len(runs) == 8 and all(r.info.status == "FINISHED" for r in runs)
    assert all(len(client.get_metric_history(r.info.run_id, "train_loss")) == EPOCHS for r in runs)
    nodes = {r.data.tags[schema.TAG_NODE] for r in runs}
    assert nodes == set(WORKERS), f"trials ran on {nodes}"


def test_checkpointing_sweep_with_no_shared_storage(cluster, server, tmp_path):
    """Ray Tune alone fails these points after their first epoch (its checkpoints must reach --storage-path from
    every node); kept in the MLflow runs, they finish, leave no checkpoint behind and log their models."""
    proc = _launch(cluster, "robust_loss", [
        "--tracking-uri", server.uri, "--scale", "smoke", "--data-dir", str(cluster.data_dir),
        "--grid", "benchmark=resnet20-cifar10-labelflip,mobilenetv2-fmnist-labelflip", "--grid", "loss=cross_entropy",
        "--grid", "seed=42",
        "--checkpoint-every", "1", "--analyze", str(tmp_path / "out")], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client, runs = _point_runs(server.uri, "robust_loss")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags[schema.TAG_NODE] for r in runs} <= set(WORKERS)
    models = {m.source_run_id: m for m in client.search_logged_models([runs[0].info.experiment_id])}
    for run in runs:
        assert schema.TAG_CHECKPOINT not in run.data.tags
        files = {a.path for a in client.list_logged_model_artifacts(models[run.info.run_id].model_id)}
        assert {"MLmodel", schema.MODEL_SPEC, schema.MODEL_WEIGHTS} <= files, files  # through the server, any node
    assert not _files(Path(server.artifacts_destination), schema.CHECKPOINT_DIR), "checkpoints left behind on the server"
    assert not _files(cluster.storage, "checkpoint_000000"), "Ray Tune checkpoints on the driver's storage"


def test_a_local_store_on_a_cluster_is_refused_before_any_training(cluster, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = _launch(cluster, "poison_sensitivity", ["--tracking-uri", uri, "--grid", "poison_fraction=0",
                                                   "--grid", "hidden_width=8", "--grid", "seed=1"], tmp_path)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "cannot reach the tracking store" in proc.stderr and "--tracking-uri http://" in proc.stderr
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("poison_sensitivity").experiment_id
    statuses = [r.info.status for r in search_all_runs(client, [experiment_id], "")]
    assert statuses == ["FAILED"], "only the parent run, ended FAILED"


def test_a_point_whose_node_dies_resumes_on_another_node_from_its_checkpoint(cluster, server, tmp_path):
    """SIGKILL the raylet and workers of the node computing the point: with --max-failures 1 the point continues
    on the surviving node from its last checkpoint, in the same run, with the numbers of an uninterrupted run."""
    from core.point import PLAIN
    from core.studies.robust_loss import RobustLossConfig, run_point

    epochs = 40
    # The uninterrupted run to compare with, computed in this process meanwhile: the launch is one Ray trial, so one
    # node's CPU computes at a time and the driver only waits (before, it was computed after the launch, ~25 s).
    background = ThreadPoolExecutor(1)
    uninterrupted = background.submit(run_point, RobustLossConfig(loss="cross_entropy", epochs=epochs), PLAIN)
    background.shutdown(wait=False)
    launch = _launch(cluster, "robust_loss", [
        "--tracking-uri", server.uri, "--experiment", "node-dies", "--grid", "loss=cross_entropy", "--grid", "seed=42",
        "--set", f"epochs={epochs}",
        "--checkpoint-every", "2", "--max-failures", "1", "--analyze", str(tmp_path / "out")], tmp_path, wait=False)
    try:
        deadline, victim = time.monotonic() + 300, None
        while victim is None and time.monotonic() < deadline and launch.poll() is None:
            time.sleep(0.5)
            try:
                _, runs = _point_runs(server.uri, "node-dies")
            except Exception:  # noqa: BLE001 - the experiment is not there yet
                continue
            note = checkpoint_note(runs[0]) if runs else None
            if note is not None and note["epoch"] >= 3:
                victim = runs[0].data.tags[schema.TAG_NODE]
        assert victim in WORKERS, f"no checkpoint of epoch >= 3 seen (launch exit {launch.poll()})"
        _stop_session(cluster.sessions.pop(victim), signals=((signal.SIGKILL, 5),))
        out, _ = launch.communicate(timeout=600)
    finally:
        if launch.poll() is None:
            launch.kill()
    assert launch.returncode == 0, out[-4000:]
    client, runs = _point_runs(server.uri, "node-dies")
    assert len(runs) == 1, "no duplicate run"
    (run,) = runs
    survivor = next(ip for ip in WORKERS if ip != victim)
    assert run.info.status == "FINISHED" and run.data.tags[schema.TAG_NODE] == survivor
    resumed = int(run.data.tags[schema.TAG_RESUMED])
    assert resumed >= 3 and resumed % 2 == 1, resumed  # --checkpoint-every 2 keeps epochs 1, 3, 5, ...
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "test_acc"))
    assert steps == list(range(epochs)), "every epoch logged exactly once"
    for name, value in uninterrupted.result(timeout=600).metrics.items():
        assert run.data.metrics[name] == value, name
