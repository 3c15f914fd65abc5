"""README's team setup, run as it stands: a PostgreSQL database, the tracking server on it with authentication, a
user and her permission, her launch (on loopback, free ports and temp folders in place of README's)."""

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from conftest import PYTHON, ROOT, python_env
from postgres_fixtures import as_database_user, skip_without_postgres
from record import schema
from record.runs import search_all_runs
from test_cluster import _session_pids, _stop_session
from test_tracking_server import free_port

MARKER = "<!-- team-setup: {} -->"


def readme_block(name: str) -> str:
    """The bash block README gives after ``<!-- team-setup: NAME -->``, verbatim."""
    match = re.search(re.escape(MARKER.format(name)) + r"\s*```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert match, f"README lost its team setup block {name!r}"
    return match.group(1)


def _children(pids: list[int]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) in pids:
                found.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return found


def test_readme_team_setup_runs_as_written(tmp_path):
    bin_dir = skip_without_postgres()
    pg_port, server_port = free_port(), free_port()
    srv = Path(tempfile.mkdtemp(prefix="rl-srv-", dir="/tmp"))  # the database's socket path must stay short
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(srv, user.pw_uid, user.pw_gid)

    def adapt(block: str) -> str:
        return (block.replace("/usr/lib/postgresql/15/bin", str(bin_dir)).replace("/srv/", f"{srv}/")
                .replace("5432", str(pg_port)).replace("5000", str(server_port)).replace(".venv/bin/python", PYTHON))

    log, session = tmp_path / "setup.log", None
    try:
        database = subprocess.run([*as_database_user(), "bash", "-euo", "pipefail", "-c",
                                   adapt(readme_block("database"))], cwd=srv, capture_output=True, text=True, timeout=120)
        assert database.returncode == 0, database.stdout[-2000:] + database.stderr[-2000:]
        script = adapt(readme_block("server")) + adapt(readme_block("launch"))
        with open(log, "w") as out:  # a file: the server started with & keeps the script's output open
            setup = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=python_env(),
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            session = setup.pid
            setup.wait(timeout=600)
        output = log.read_text()
        assert setup.returncode == 0, output[-4000:]
        assert "MLflow tracking server ready at" in output and "2/2 grid points finished" in output, output[-4000:]
        uri = f"http://127.0.0.1:{server_port}"
        os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD="an-admin-password")
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("team-poison")
        runs = search_all_runs(client, [experiment.experiment_id], schema.POINT_FILTER)
        assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
        assert {r.data.tags[schema.TAG_USER] for r in runs} == {"alice"}
    finally:
        os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
        os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)
        if session is not None:  # the tracking server stops its own process group on SIGTERM
            servers = _session_pids(session)
            groups = _children(servers)
            for pid in servers:
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _session_pids(session):
                time.sleep(0.2)
            _stop_session(session)
            for group in groups:
                try:
                    os.killpg(group, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        if (srv / "mlflow-pg" / "data" / "postmaster.pid").exists():
            subprocess.run([*as_database_user(), str(bin_dir / "pg_ctl"), "-D", str(srv / "mlflow-pg" / "data"),
                            "-w", "-m", "fast", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(srv, ignore_errors=True)
