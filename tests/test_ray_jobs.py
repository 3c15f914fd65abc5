"""Sweeps submitted as Ray Jobs (`ray job submit ... -- python -m tune_jobs STUDY --address auto`) to a real local
Ray head with its dashboard and job server, tracked on a real tracking server: a built-in study and an own study
from its own package, the progress lines in `ray job logs`, and `ray job stop` ending the runs KILLED, then
`--resume` as another job."""

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import PYTHON, python_env
from record import schema
from test_cluster import HEAD, RAY, _stop_session
from test_hardening import runs, wait_for
from test_own_study import readme_example, write_package
from test_tracking_server import free_port
from tune_jobs.tracking_server import TrackingServer

pytestmark = pytest.mark.xdist_group(__name__)  # its module fixture: computed once, on one worker


class Head:
    def __init__(self, dashboard: str, env: dict, root: Path, uri: str) -> None:
        self.dashboard, self.env, self.root, self.uri = dashboard, env, root, uri

    def job(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        command, *rest = args
        return subprocess.run([RAY, "job", command, "--address", self.dashboard, *rest], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def submit(self, working_dir: Path, study: str, args: list[str], wait: bool = True):
        """``ray job submit``; the job's id, and its output when waited for."""
        proc = self.job("submit", "--working-dir", str(working_dir), *([] if wait else ["--no-wait"]), "--",
                        "python", "-m", "tune_jobs", study, "--address", "auto", "--tracking-uri", self.uri,
                        "--storage-path", str(self.root / "ray"), *args)
        found = re.search(r"Job '(raysubmit_\w+)' submitted", proc.stdout + proc.stderr)
        assert found, proc.stdout[-3000:] + proc.stderr[-3000:]
        return found.group(1), proc


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A Ray head with its dashboard and job server on loopback, and a tracking server; both stopped afterwards."""
    root = tmp_path_factory.mktemp("jobs")
    temp_dir = Path(tempfile.mkdtemp(prefix="rl-jobs-", dir="/tmp"))  # AF_UNIX socket paths must stay short
    dashboard = free_port()
    # the job's `python` is the environment's; `ray job stop` waits up to 60 s for the launcher to end its runs
    env = dict(python_env(), RAY_AUTH_MODE="token", RAY_JOB_STOP_WAIT_TIME_S="60",
               PATH=f"{Path(PYTHON).parent}{os.pathsep}{os.environ['PATH']}")
    start = subprocess.Popen(
        [RAY, "start", "--head", "--port", str(free_port()), "--node-ip-address", HEAD, "--num-cpus", "2",
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--include-dashboard=true",
         "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port()),
         "--temp-dir", str(temp_dir), "--disable-usage-stats"],
        env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = start.communicate(timeout=180)
        assert start.returncode == 0, out[-3000:]
        with TrackingServer(f"sqlite:///{root / 'server.db'}", str(root / "artifacts"), port=free_port(),
                            log_file=root / "server.log") as server:
            running = Head(f"http://127.0.0.1:{dashboard}", env, root, server.uri)
            wait_for(lambda: running.job("list", timeout=60).returncode == 0, 120, "the job server")
            yield running
    finally:
        _stop_session(start.pid)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_built_in_and_an_own_study_submitted_as_ray_jobs(head, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    job, proc = head.submit(empty, "poison_sensitivity", [
        "--grid", "poison_fraction=0,0.5", "--grid", "hidden_width=8", "--grid", "seed=1", "--set", "epochs=5",
        "--experiment", "job-poison"])
    assert proc.returncode == 0 and f"Job '{job}' succeeded" in proc.stdout + proc.stderr, proc.stdout[-3000:]
    logs = head.job("logs", job).stdout
    assert "] finished pf=" in logs and "2/2 grid points finished" in logs, logs[-3000:]  # the point by its run name
    assert sorted(r.info.status for r in runs(head.uri, "job-poison")) == ["FINISHED", "FINISHED"]

    research = tmp_path / "research"  # the user's own folder, shipped as the job's working dir
    write_package(research, "my_studies", {"layer_depth": readme_example()})
    job, proc = head.submit(research, "my_studies.layer_depth", [
        "--grid", "poison_fraction=0,0.3", "--grid", "n_hidden_layers=1", "--grid", "seed=1", "--set", "epochs=5",
        "--experiment", "job-own"])
    assert proc.returncode == 0 and f"Job '{job}' succeeded" in proc.stdout + proc.stderr, proc.stdout[-3000:]
    found = runs(head.uri, "job-own")
    assert len(found) == 2 and all(r.info.status == "FINISHED" for r in found)
    assert {r.data.tags[schema.TAG_STUDY] for r in found} == {"layer_depth"}


def test_ray_job_stop_ends_the_runs_killed_and_resume_continues(head, tmp_path):
    args = ["--grid", "poison_fraction=0,0.1,0.2,0.3", "--grid", "hidden_width=8", "--grid", "seed=1",
            "--set", "epochs=8000", "--points-per-trial", "1", "--experiment", "job-stop"]
    job, _ = head.submit(tmp_path, "poison_sensitivity", args, wait=False)
    # a point longer than 2 s has its run created RUNNING when it starts
    wait_for(lambda: any(r.info.status == "RUNNING" for r in runs(head.uri, "job-stop")), 300, "a running point")
    stopped = head.job("stop", job)
    assert stopped.returncode == 0, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    points = runs(head.uri, "job-stop")
    assert "RUNNING" not in {r.info.status for r in points}, sorted(r.info.status for r in points)
    assert [r.info.status for r in runs(head.uri, "job-stop", schema.KIND_SWEEP)] == ["KILLED"]
    assert "KILLED" in {r.info.status for r in points}, "stopped mid-sweep: its in-flight runs KILLED"

    job, proc = head.submit(tmp_path, "poison_sensitivity", [*args, "--resume"])
    assert f"Job '{job}' succeeded" in proc.stdout + proc.stderr, proc.stdout[-3000:]
    assert "4/4 grid points finished" in head.job("logs", job).stdout
    finished = [r for r in runs(head.uri, "job-stop") if r.info.status == "FINISHED"]
    assert len(finished) == len({r.data.tags[schema.TAG_POINT] for r in finished}) == 4
