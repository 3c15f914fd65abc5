"""Resume and record integrity (issue 24), each fault replayed for real: checkpoint and lease tags someone changed, a
point resumed from its last checkpoint, a loss file that exits, telemetry in every entry point."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import PYTHON, python_env
from record import schema
from record.checkpoints import checkpoint_note
from test_hardening import launch, n_finished, runs, start, statuses, wait_for
from test_tracking_server import free_port
from tune_jobs.tracking_server import TrackingServer

TINY = ["poison_sensitivity", "--grid", "hidden_width=8", "--grid", "poison_fraction=0.1", "--grid", "seed=42",
        "--set", "epochs=2"]
RL = ["robust_loss", "--grid", "loss=cross_entropy", "--grid", "seed=42", "--scale", "smoke", "--set", "epochs=2",
      "--checkpoint-every", "1"]


def common(store):
    return ["--tracking-uri", store["uri"], "--storage-path", store["ray"]]


def steps(client, run_id):
    """Each metric's steps, in order, as logged (duplicates kept)."""
    return {name: sorted(m.step for m in client.get_metric_history(run_id, name))
            for name in client.get_run(run_id).data.metrics}


def test_a_checkpoint_tag_pointing_outside_its_run_is_ignored_and_the_point_starts_over(store):
    uri, client = store["uri"], MlflowClient(store["uri"])
    other = launch([*RL, "--keep-checkpoints", "--experiment", "other", *common(store)], store["dir"])
    assert other.returncode == 0, other.stdout[-2000:] + other.stderr[-2000:]
    (donor,) = runs(uri, "other")
    donor_note = checkpoint_note(donor)
    assert donor_note is not None and donor_note["epoch"] == 1, "another sweep's final checkpoint"
    assert launch([*RL, *common(store)], store["dir"]).returncode == 0
    (victim,) = runs(uri, "robust_loss")
    # <store>/artifacts/<experiment>/<run>/artifacts/checkpoint/..: four levels up is the store's artifact root
    escape = f"{schema.CHECKPOINT_DIR}/../../../../other/{donor.info.run_id}/artifacts/{donor_note['path']}"
    for path in (escape, "checkpoint/a/../../../x.pt", "checkpoint/c/point_state.pt", "checkpoint//etc/passwd",
                 "checkpoint/a/sub/point_state.pt", "checkpoint/a/.."):
        client.set_tag(victim.info.run_id, schema.TAG_CHECKPOINT, json.dumps({"epoch": 1, "path": path}))
        assert checkpoint_note(client.get_run(victim.info.run_id)) is None, path
    client.set_tag(victim.info.run_id, schema.TAG_CHECKPOINT, json.dumps({"epoch": 1, "path": escape}))
    client.set_terminated(victim.info.run_id, "FAILED")  # a point to resume, steered at the other sweep
    shutil.rmtree(store["ray"])  # resumed from the MLflow record alone (its Ray trial ended well: Ray Tune skips it)

    resumed = launch([*RL, *common(store), "--resume"], store["dir"])
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    output = resumed.stdout + resumed.stderr
    assert f"its {schema.TAG_CHECKPOINT} tag names {escape!r}" in output and "starts over" in output, output[-3000:]
    finished = [r for r in runs(uri, "robust_loss") if r.info.status == "FINISHED"]
    assert len(finished) == 1 and finished[0].info.run_id != victim.info.run_id
    assert schema.TAG_RESUMED not in finished[0].data.tags, "the point trained from scratch"
    assert steps(client, finished[0].info.run_id)["test_acc"] == [0, 1]
    assert statuses(uri, "other") == ["FINISHED"] and checkpoint_note(runs(uri, "other")[0]) == donor_note


def test_a_point_resumed_from_its_final_checkpoint_logs_every_step_once(store):
    uri, client = store["uri"], MlflowClient(store["uri"])
    assert launch([*RL, "--keep-checkpoints", *common(store)], store["dir"]).returncode == 0
    (run,) = runs(uri, "robust_loss")
    assert checkpoint_note(run)["epoch"] == 1
    before = steps(client, run.info.run_id)
    client.set_terminated(run.info.run_id, "FAILED")  # it died after its last checkpoint, before its run ended
    shutil.rmtree(store["ray"])

    resumed = launch([*RL, "--keep-checkpoints", *common(store), "--resume"], store["dir"])
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    (run,) = runs(uri, "robust_loss")
    assert run.info.status == "FINISHED" and run.data.tags[schema.TAG_RESUMED] == "1"
    after = steps(client, run.info.run_id)
    assert after == before and after["test_acc"] == [0, 1]
    assert all(s == list(range(len(s))) for s in after.values()), after


def test_a_loss_file_that_exits_at_import_is_refused_naming_it(tmp_path):
    exits = tmp_path / "exits.py"
    exits.write_text("import sys\nsys.exit(0)\n")
    proc = launch(["robust_loss", "--grid", f"loss={exits}", "--grid", "seed=42",
                   "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"], tmp_path, timeout=120)
    assert proc.returncode == 2 and f"loss file {str(exits)!r}" in proc.stderr and "SystemExit" in proc.stderr, \
        proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_malformed_or_future_lease_never_blocks_a_resume(store):
    uri, client = store["uri"], MlflowClient(store["uri"])
    assert launch([*TINY, *common(store)], store["dir"]).returncode == 0
    (sweep,) = runs(uri, "poison_sensitivity", schema.KIND_SWEEP)
    future = json.dumps({"holder": "elsewhere:1:abcd1234", "since": time.time(), "renewed": time.time() + 3600})
    for value, force in (("not json", []), ('{"holder": 3}', ["--force"]), (future, [])):
        client.set_tag(sweep.info.run_id, schema.TAG_LEASE, value)
        resumed = launch([*TINY, *common(store), "--resume", *force], store["dir"], timeout=300)
        assert resumed.returncode == 0, (value, resumed.stdout[-2000:] + resumed.stderr[-2000:])
        assert "Traceback" not in resumed.stderr
        assert f"{schema.TAG_LEASE}" in resumed.stdout and "taken over" in resumed.stdout, resumed.stdout[-2000:]
    assert statuses(uri, "poison_sensitivity", schema.KIND_SWEEP) == ["FINISHED"]
    assert schema.TAG_LEASE not in client.get_run(sweep.info.run_id).data.tags


TELEMETRY_CHECK = """
import json, os, runpy, sys
which, uri, arg = sys.argv[1:4]
if which == "analysis":
    sys.argv = ["analysis.poison_sensitivity", "--tracking-uri", uri, "--experiment", "poison_sensitivity",
                "--out", arg]
    try:
        runpy.run_module("analysis.poison_sensitivity", run_name="__main__")
    except SystemExit:
        pass
elif which == "read_sweep":
    from record.read import read_sweep
    read_sweep("poison_sensitivity", uri)
elif which == "load_model":
    from analysis.models import load_model
    load_model(arg, uri)
import mlflow.telemetry
print(json.dumps({"client": mlflow.telemetry.get_telemetry_client() is not None,
                  "env": [os.environ.get("MLFLOW_DISABLE_TELEMETRY"), os.environ.get("DO_NOT_TRACK")]}))
"""

#: What MLflow takes for a CI or test run (telemetry off there anyway): a check under pytest must not inherit them.
CI_MARKERS = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "JENKINS_URL", "TRAVIS",
              "BUILDKITE", "TF_BUILD", "CODEBUILD_BUILD_ID", "BITBUCKET_BUILD_NUMBER", "DRONE", "TEAMCITY_VERSION")


def user_env(**extra):
    """A user's shell: no telemetry setting, no CI marker."""
    env = {k: v for k, v in python_env().items()
           if k not in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", *CI_MARKERS)}
    return {**env, **extra}


def test_telemetry_is_off_in_every_entry_point_unless_the_user_chose(store):
    uri = store["uri"]
    assert launch([*TINY, "--log-models", *common(store)], store["dir"]).returncode == 0
    (run,) = runs(uri, "poison_sensitivity")
    control = subprocess.run([PYTHON, "-c", "import mlflow.telemetry; print(mlflow.telemetry.get_telemetry_client())"],
                             env=user_env(), capture_output=True, text=True, cwd=store["dir"])
    assert control.stdout.strip() != "None", "the check can see telemetry on: " + control.stdout + control.stderr
    for which, arg in (("analysis", str(store["dir"] / "out")), ("read_sweep", ""), ("load_model", run.info.run_id)):
        proc = subprocess.run([PYTHON, "-c", TELEMETRY_CHECK, which, uri, arg], env=user_env(), capture_output=True,
                              text=True, cwd=store["dir"], timeout=300)
        seen = json.loads(proc.stdout.strip().splitlines()[-1])
        assert seen == {"client": False, "env": ["true", "true"]}, (which, seen, proc.stderr[-2000:])
    chosen = subprocess.run([PYTHON, "-c", TELEMETRY_CHECK, "read_sweep", uri, ""], capture_output=True, text=True,
                            env=user_env(MLFLOW_DISABLE_TELEMETRY="false"), cwd=store["dir"], timeout=300)
    assert json.loads(chosen.stdout.strip().splitlines()[-1])["env"] == ["false", None], "a user's choice is kept"


def time_wait_on(port: int) -> bool:
    lines = subprocess.run(["ss", "-tanH", "state", "time-wait"], capture_output=True, text=True).stdout.splitlines()
    return any(f"127.0.0.1:{port} " in line + " " for line in lines)


def test_the_team_server_restarts_at_once_on_its_port_private_and_without_telemetry(tmp_path):
    port = free_port()
    # A server that crashed leaves the connections it closed first in TIME_WAIT on its port for ~60 s: make one.
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        client = socket.create_connection(("127.0.0.1", port))
        served, _ = listener.accept()
        served.close()
        time.sleep(0.2)
        client.close()
    assert time_wait_on(port), "the port holds a TIME_WAIT connection, as after a crash"
    env = user_env(MLFLOW_AUTH_ADMIN_PASSWORD="a-long-admin-password-1")
    with open(tmp_path / "server.out", "w+") as log:
        server = subprocess.Popen([PYTHON, "-m", "tune_jobs.tracking_server", "--auth", "--port", str(port)],
                                  cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            try:
                wait_for(lambda: server.poll() is None and urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/health", timeout=2).status == 200, 120, "the restarted server")
            except AssertionError:
                log.seek(0)
                raise AssertionError(log.read()[-2000:]) from None
            folder = tmp_path / "mlruns" / "server"
            modes = {name: (folder / name).stat().st_mode & 0o777 for name in ("mlflow.db", "basic_auth.db")}
            assert modes == {"mlflow.db": 0o600, "basic_auth.db": 0o600}
            (child,) = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True).stdout.split()
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            assert b"mlflow" in Path(f"/proc/{child}/cmdline").read_bytes()
            assert {b"MLFLOW_DISABLE_TELEMETRY=true", b"DO_NOT_TRACK=true"} <= set(environ)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)


def test_a_server_beyond_loopback_needs_allowed_hosts_and_a_launcher_it_refuses_says_so(store, tmp_path):
    refused = subprocess.Popen([PYTHON, "-m", "tune_jobs.tracking_server", "--host", "0.0.0.0", "--insecure", "--port",
                                str(free_port())], cwd=tmp_path, env=python_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = refused.communicate(timeout=60)
    finally:
        if refused.poll() is None:  # it started a server after all: SIGTERM stops it with its mlflow server child
            os.killpg(refused.pid, signal.SIGTERM)
            refused.communicate(timeout=60)
    assert refused.returncode == 2 and "--host 0.0.0.0 needs --allowed-hosts" in err, err[-2000:]
    assert len(err.strip().splitlines()) == 1
    server = TrackingServer(f"sqlite:///{tmp_path / 'server.db'}", str(tmp_path / "artifacts"), port=free_port(),
                            allowed_hosts="mlflow.example:5000", log_file=tmp_path / "server.log")
    with server:
        proc = launch([*TINY, "--tracking-uri", server.uri, "--storage-path", store["ray"]], store["dir"], timeout=120)
    assert proc.returncode == 2 and "HTTP 403" in proc.stderr and "--allowed-hosts" in proc.stderr, \
        proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]


FOUR = ["poison_sensitivity", "--grid", "poison_fraction=0,0.1,0.2,0.3", "--grid", "hidden_width=8",
        "--grid", "seed=1", "--set", "epochs=15000", "--points-per-trial", "1"]  # 4 points of a few seconds each


def test_a_sqlite_store_deleted_mid_sweep_is_said_never_claimed_and_never_re_created(store, tmp_path):
    uri, db = store["uri"], store["dir"] / "mlflow.db"
    with open(tmp_path / "deleted.log", "w+") as log:
        driver = start([*FOUR, *common(store)], store["dir"], log)
        # read only once the launch made the store (a reader's MLflow client would create it)
        wait_for(lambda: db.exists() and n_finished(uri, "poison_sensitivity") >= 1, 300, "a finished point")
        for name in (db.name, db.name + "-wal", db.name + "-shm"):
            (store["dir"] / name).unlink(missing_ok=True)
        status = driver.wait(timeout=600)
        log.seek(0)
        output = log.read()
    assert status == 1, output[-3000:]
    assert f"the tracking store {db} was deleted while the launch ran" in output, output[-3000:]
    assert "grid points finished" not in output and "Traceback" not in output.split("error:")[-1], output[-3000:]
    assert not db.exists(), "a worker or the launcher created a new store in its place"


READER = """
import os, sys, time
import mlflow
uri, seconds = sys.argv[1], float(sys.argv[2])
mlflow.set_tracking_uri(uri)
print("ready", flush=True)
deadline, reads, errors = time.monotonic() + seconds, 0, set()
while not os.path.exists(uri[len("sqlite:///"):] + ".lock") and time.monotonic() < deadline:
    time.sleep(0.002)  # a dashboard polling the store's folder: it reads as soon as the launch opens the store
while time.monotonic() < deadline:
    try:
        mlflow.search_runs(experiment_ids=["0"])
        reads += 1
    except Exception as error:
        errors.add(type(error).__name__)
    time.sleep(0.02)
print("reads", reads, sorted(errors), flush=True)
"""


def test_a_launch_survives_another_process_creating_the_same_new_store(tmp_path):
    """Two readers' first ``search_runs`` create the new store's tables (MLflow's migrations, seconds) just as the
    launch opens the store it has just created: whoever comes second to a migration step fails in MLflow."""
    db = tmp_path / "new" / "mlflow.db"
    db.parent.mkdir()
    uri = f"sqlite:///{db}"
    readers = [subprocess.Popen([PYTHON, "-c", READER, uri, "40"], cwd=tmp_path, env=python_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    try:
        for reader in readers:  # MLflow imported: they poll from before the launch starts
            assert reader.stdout.readline().strip() == "ready"
        proc = launch([*TINY, "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray")], tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    finally:
        said = [reader.communicate(timeout=120)[0] for reader in readers]
    assert all("reads" in out and int(out.split()[1]) > 0 for out in said), said
    assert statuses(uri, "poison_sensitivity") == ["FINISHED"]


def _schema(db):
    """A SQLite store's tables and indexes, each a sorted list of its definition's lines (MLflow's own migrations
    write a table's constraints in varying order), and its schema version."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as connection:
        found = connection.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
        return (sorted((kind, name, sorted(line.strip(" ,") for line in sql.splitlines())) for kind, name, sql in found),
                connection.execute("SELECT version_num FROM alembic_version").fetchall())


def test_a_new_store_is_a_copy_of_mlflows_empty_tables_built_once_per_mlflow_version(tmp_path, monkeypatch):
    from importlib.metadata import version

    from record.store import prepare_store

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    template = tmp_path / "cache" / "robustlab" / f"mlflow-{version('mlflow')}-empty.db"
    migrated = tmp_path / "by-mlflow.db"
    (mlflows_default,) = MlflowClient(f"sqlite:///{migrated}").search_experiments()  # MLflow's own first open
    stores = [tmp_path / name / "mlflow.db" for name in ("a", "b")]
    prepare_store(f"sqlite:///{stores[0]}")
    built = template.stat()
    prepare_store(f"sqlite:///{stores[1]}")
    assert template.stat().st_mtime_ns == built.st_mtime_ns and built.st_mode & 0o777 == 0o600, "built once, private"
    assert list(template.parent.iterdir()) == [template], "no leftover of its building"
    for db in stores:
        assert _schema(db) == _schema(migrated), "the tables, indexes and schema version MLflow itself writes"
        client = MlflowClient(f"sqlite:///{db}")
        (default,) = client.search_experiments()  # MLflow's Default experiment, made on first open, not copied
        assert default.artifact_location == mlflows_default.artifact_location, default.artifact_location
        client.create_experiment("x")
    assert [e.name for e in MlflowClient(f"sqlite:///{stores[1]}").search_experiments()] == ["x", "Default"]

    monkeypatch.setenv("XDG_CACHE_HOME", str(stores[0]))  # a cache that cannot be a folder: built in place
    prepare_store(f"sqlite:///{tmp_path / 'c' / 'mlflow.db'}")
    assert _schema(tmp_path / "c" / "mlflow.db") == _schema(migrated)


def test_a_disk_that_fills_while_the_store_is_created_exits_2_naming_the_store(tmp_path):
    folder = tmp_path / "small"
    folder.mkdir()
    mount = f"mount -t tmpfs -o size=160k tmpfs {folder}"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", mount], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no tmpfs mount here: {probe.stderr.strip()}")
    db = folder / "mlflow.db"
    proc = subprocess.run(["unshare", "-m", "sh", "-c", f'{mount} && exec "$@"', "sh", PYTHON, "-m", "tune_jobs",
                           *TINY, "--tracking-uri", f"sqlite:///{db}", "--storage-path", str(tmp_path / "ray")],
                          cwd=tmp_path, env=python_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and f"the tracking store {db} cannot be created: the disk is full" in proc.stderr, \
        proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "the disk is full" in proc.stderr.strip().splitlines()[-1]


@pytest.fixture
def ray_temp(tmp_path):
    """A private Ray temp folder (RAY_TMPDIR): the address file a plain ``ray.init()`` or ``--address auto`` reads is
    this test's, so no other Ray on the machine is found, and no other launch finds this test's."""
    folder = Path(tempfile.mkdtemp(prefix="rl-", dir="/tmp"))  # AF_UNIX socket paths must stay short
    env = python_env()
    env.pop("RAY_ADDRESS", None)
    env.update(TMPDIR=str(folder), RAY_TMPDIR=str(folder))
    try:
        yield folder, env
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_local_launch_starts_its_own_ray_beside_a_running_cluster_and_ignores_ray_address(store, ray_temp):
    from test_cluster import RAY, _stop_session

    folder, env = ray_temp
    port = free_port()
    head = subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--num-cpus", "1",
                             "--include-dashboard=false", "--temp-dir", str(folder / "ray"), "--disable-usage-stats"],
                            env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        out = head.communicate(timeout=120)[0]
        assert head.returncode == 0, out[-3000:]
        assert (folder / "ray" / "ray_current_cluster").exists(), "a plain ray.init() here would join the head"
        # 2 CPUs per Ray trial fit this machine's own local Ray, not the 1-CPU head
        args = [*TINY, "--cpus-per-trial", str(os.cpu_count()), *common(store)]
        proc = launch(args, store["dir"], env=env, timeout=300)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "Connecting to" not in output, output[-3000:]
        proc = launch([*args, "--experiment", "with-ray-address"], store["dir"], timeout=300,
                      env=dict(env, RAY_ADDRESS=f"127.0.0.1:{port}"))
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        (said,) = [line for line in proc.stdout.splitlines() if "RAY_ADDRESS" in line]
        assert f"ignoring RAY_ADDRESS=127.0.0.1:{port}" in said and "--address" in said, said
    finally:
        _stop_session(head.pid)
    assert statuses(store["uri"], "poison_sensitivity") == statuses(store["uri"], "with-ray-address") == ["FINISHED"]


def test_address_auto_finding_a_ray_it_cannot_join_is_refused_within_30_s(tmp_path, ray_temp):
    _, env = ray_temp
    with socket.socket() as stuck:  # a Ray head that accepts connections and never answers (hung, or not Ray)
        stuck.bind(("127.0.0.9", 0))  # a loopback alias: Ray connects to it as given (127.0.0.1 it would rewrite)
        stuck.listen()
        found = f"127.0.0.9:{stuck.getsockname()[1]}"
        uri = f"sqlite:///{tmp_path / 'm.db'}"
        started = time.monotonic()
        proc = launch([*TINY, "--address", "auto", "--tracking-uri", uri], tmp_path, env=dict(env, RAY_ADDRESS=found),
                      timeout=90)
        took = time.monotonic() - started
    assert proc.returncode == 2 and "--address auto" in proc.stderr and found in proc.stderr, proc.stderr[-3000:]
    assert "cannot be joined" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert took < 30 + 10, f"took {took:.0f} s"  # the bound plus interpreter start-up
    assert "RUNNING" not in statuses(uri, "poison_sensitivity", schema.KIND_SWEEP)


def test_the_team_server_stopped_while_it_starts_leaves_no_mlflow_server(tmp_path):
    server = subprocess.Popen([PYTHON, "-m", "tune_jobs.tracking_server", "--port", str(free_port())], cwd=tmp_path,
                              env=python_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    child = []
    try:
        wait_for(lambda: child.extend(subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True,
                                                     text=True).stdout.split()) or child, 60, "its mlflow server")
        os.kill(server.pid, signal.SIGTERM)  # before it is ready (it answers /health seconds later)
        server.wait(timeout=60)
        wait_for(lambda: not os.path.exists(f"/proc/{child[0]}"), 30, "the mlflow server to stop")
    finally:
        for pid in child:  # whatever is left of what this test started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid), signal.SIGKILL)
        if server.poll() is None:
            server.kill()
