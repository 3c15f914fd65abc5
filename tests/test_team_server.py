"""A team's setup with real parts: the tracking server on a real PostgreSQL (started for this module, stopped
after it) with MLflow's basic authentication, users launching into it at once, a Ctrl-C and ``--resume``, a
server restart mid-sweep, the analysis over HTTP, and a user refused an experiment before Ray starts."""

import os
import signal
import subprocess
import time
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import PYTHON, python_env
from postgres_fixtures import Postgres, skip_without_postgres
from record import schema
from record.runs import search_all_runs
from record.store import StoreError, check_permission
from test_tracking_server import free_port
from tune_jobs.tracking_server import TrackingServer, write_auth_config

pytestmark = pytest.mark.xdist_group(__name__)  # its module fixture: computed once, on one worker

ADMIN_PASSWORD = "admin-password-for-the-test"
USERS = {"alice": "alice-password-1", "bob": "bob-password-22", "carol": "carol-password-3"}
GRID = ["--grid", "hidden_width=8", "--grid", "seed=1"]


class Team:
    """The module's PostgreSQL and its authenticated tracking server (restartable on the same port)."""

    def __init__(self, root: Path, database: Postgres) -> None:
        self.root, self.database = root, database
        self.server = TrackingServer(database.uri, str(root / "artifacts"), port=free_port(),
                                     log_file=root / "server.log", auth_config=write_auth_config(root / "auth"))

    @property
    def uri(self) -> str:
        return self.server.uri

    def restart(self, down_s: float = 3.0) -> None:
        self.server.stop()
        time.sleep(down_s)
        self.server.start()

    def env(self, user: str) -> dict:
        return dict(python_env(), MLFLOW_TRACKING_USERNAME=user,
                    MLFLOW_TRACKING_PASSWORD=ADMIN_PASSWORD if user == "admin" else USERS[user])

    def launch(self, user: str, experiment: str, args: list[str], wait: bool = True):
        command = [PYTHON, "-m", "tune_jobs", "poison_sensitivity", "--tracking-uri", self.uri, "--experiment",
                   experiment, "--storage-path", str(self.root / f"ray-{user}-{experiment}"), *args]
        if not wait:
            return subprocess.Popen(command, cwd=self.root, env=self.env(user), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)
        return subprocess.run(command, cwd=self.root, env=self.env(user), capture_output=True, text=True, timeout=600)

    def runs(self, experiment: str, kind: str = schema.KIND_POINT) -> list:
        client = MlflowClient(self.uri)
        found = client.get_experiment_by_name(experiment)
        return [] if found is None else search_all_runs(client, [found.experiment_id],
                                                        f"tags.`{schema.TAG_KIND}` = '{kind}'")


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    skip_without_postgres()
    root = tmp_path_factory.mktemp("team")
    saved = {k: os.environ.get(k) for k in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_TRACKING_USERNAME",
                                            "MLFLOW_TRACKING_PASSWORD")}
    # the server creates its admin from this; this process reads the runs back as the admin
    os.environ.update(MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN_PASSWORD, MLFLOW_TRACKING_USERNAME="admin",
                      MLFLOW_TRACKING_PASSWORD=ADMIN_PASSWORD)
    try:
        with Postgres(free_port()) as database:
            team = Team(root, database)
            with team.server:
                from mlflow.server.auth.client import AuthServiceClient

                admin = AuthServiceClient(team.uri)
                for user, password in USERS.items():
                    admin.create_user(user, password)
                shared = MlflowClient(team.uri).create_experiment("shared")
                for user in ("alice", "bob"):
                    admin.grant_user_permission(user, "experiment", shared, "EDIT")
                yield team
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _one_finished_run_per_point(team: Team, experiment: str, n_points: int, user: str) -> None:
    runs = team.runs(experiment)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    points = {(r.data.tags[schema.TAG_SWEEP], r.data.tags[schema.TAG_POINT]) for r in finished}
    assert len(finished) == len(points) == n_points, (experiment, sorted(r.info.status for r in runs))
    assert {r.data.tags[schema.TAG_USER] for r in runs} == {user}, "each run records who launched it"
    assert {r.data.tags[schema.TAG_USER] for r in team.runs(experiment, schema.KIND_SWEEP)} == {user}


def _wait_for_finished(team: Team, experiment: str, n: int, launch: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and launch.poll() is None:
        try:
            if sum(r.info.status == "FINISHED" for r in team.runs(experiment)) >= n:
                return
        except Exception:  # noqa: BLE001 - the experiment is not there yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"{n} finished points in {experiment!r} not seen (launch exit {launch.poll()})")


def _answers(url: str, user: str, password: str) -> str:
    request = urllib.request.Request(url, headers={
        "Authorization": "Basic " + b64encode(f"{user}:{password}".encode()).decode()})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        return response.read().decode()


def test_sweep_analysis_and_ui_link_on_postgres(team, tmp_path):
    proc = team.launch("alice", "alice-small", [*GRID, "--grid", "poison_fraction=0,0.2,0.4", "--set", "epochs=5"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _one_finished_run_per_point(team, "alice-small", 3, "alice")
    link = next(line for line in proc.stdout.splitlines() if "MLflow UI: " in line).split("MLflow UI: ")[1]
    assert link.startswith(team.uri + "/#/experiments/")
    assert "<html" in _answers(link, "alice", USERS["alice"]).lower(), "the printed UI link answers"
    analysis = subprocess.run([PYTHON, "-m", "analysis", "poison_sensitivity", "--tracking-uri", team.uri,
                               "--experiment", "alice-small", "--out", str(tmp_path / "out")], cwd=tmp_path,
                              env=team.env("alice"), capture_output=True, text=True, timeout=300)
    assert analysis.returncode == 0, analysis.stdout[-3000:] + analysis.stderr[-3000:]
    assert (tmp_path / "out" / "summary.json").exists()
    assert team.runs("alice-small", "analysis"), "the analysis logged its run to the server"


def test_ctrl_c_then_resume_and_a_server_restart_mid_sweep(team):
    """Ctrl-C mid-sweep, then ``--resume`` during which the server restarts: the launcher's retries carry it over,
    and every point ends with exactly one FINISHED run."""
    args = [*GRID, "--grid", "poison_fraction=0,0.1,0.2,0.3,0.4,0.5", "--set", "epochs=1500",
            "--points-per-trial", "1", "--tracking-timeout", "300"]
    first = team.launch("bob", "bob-resume", args, wait=False)
    try:
        _wait_for_finished(team, "bob-resume", 1, first)
        os.killpg(first.pid, signal.SIGINT)
        out, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode != 0, out[-3000:]
    assert "RUNNING" not in {r.info.status for r in team.runs("bob-resume")}, "Ctrl-C leaves nothing RUNNING"
    done_before = sum(r.info.status == "FINISHED" for r in team.runs("bob-resume"))
    assert done_before < 6, "the sweep was stopped before its end"
    second = team.launch("bob", "bob-resume", [*args, "--resume"], wait=False)
    try:
        _wait_for_finished(team, "bob-resume", done_before + 1, second)
        team.restart()
        out, _ = second.communicate(timeout=600)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
    assert second.returncode == 0, out[-4000:]
    assert "6/6 grid points finished" in out
    _one_finished_run_per_point(team, "bob-resume", 6, "bob")


def test_two_users_at_once_into_their_own_and_a_shared_experiment(team):
    args = [*GRID, "--grid", "poison_fraction=0,0.1,0.2,0.3", "--set", "epochs=200"]
    for pairs in ((("alice", "alice-own"), ("bob", "bob-own")), (("alice", "shared"), ("bob", "shared"))):
        launches = [team.launch(user, experiment, args, wait=False) for user, experiment in pairs]
        for launch in launches:
            out, _ = launch.communicate(timeout=600)
            assert launch.returncode == 0, out[-3000:]
    _one_finished_run_per_point(team, "alice-own", 4, "alice")
    _one_finished_run_per_point(team, "bob-own", 4, "bob")
    shared = team.runs("shared")
    assert len(shared) == 8 and all(r.info.status == "FINISHED" for r in shared)
    for user in ("alice", "bob"):
        (sweep,) = [r for r in team.runs("shared", schema.KIND_SWEEP) if r.data.tags[schema.TAG_USER] == user]
        mine = [r for r in shared if r.data.tags[schema.TAG_SWEEP] == sweep.info.run_id]
        assert len({r.data.tags[schema.TAG_POINT] for r in mine}) == len(mine) == 4
        assert {r.data.tags[schema.TAG_USER] for r in mine} == {user}


@pytest.mark.parametrize("user, password, expected", [
    ("carol", USERS["carol"], "user 'carol' has READ permission on experiment 'shared'"),
    ("carol", "a-wrong-password", "refuses user 'carol': wrong username or password"),
])
def test_a_user_without_permission_is_refused_before_ray_starts(team, user, password, expected):
    env = dict(team.env(user), MLFLOW_TRACKING_PASSWORD=password)
    started = time.monotonic()
    proc = subprocess.run([PYTHON, "-m", "tune_jobs", "poison_sensitivity", "--tracking-uri", team.uri,
                           "--experiment", "shared", *GRID, "--storage-path", str(team.root / "ray-carol")],
                          cwd=team.root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Ray" not in proc.stdout + proc.stderr.replace("Ray trial", ""), "refused before Ray starts"
    assert time.monotonic() - started < 30
    assert not [r for r in team.runs("shared", schema.KIND_SWEEP) if r.data.tags[schema.TAG_USER] == "carol"]


def test_the_permission_check_reads_the_users_own_permission(team, monkeypatch):
    """In-process: the creator and an admin may write to an experiment, another user with READ may not."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", USERS["alice"])
    MlflowClient(team.uri).create_experiment("made-by-alice")
    check_permission(team.uri, "made-by-alice")
    check_permission(team.uri, "not-created-yet")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    check_permission(team.uri, "made-by-alice")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", USERS["bob"])
    with pytest.raises(StoreError, match="user 'bob' has READ permission on experiment 'made-by-alice'"):
        check_permission(team.uri, "made-by-alice")
