"""A real PostgreSQL server for tests: a private data folder under a temp folder, listening on 127.0.0.1 only on a
free port, its unix socket inside that folder; started and stopped by the caller (``with Postgres() as db``)."""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


def postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` that has ``initdb`` and ``pg_ctl`` (Debian's layout), or None."""
    found = [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin")
             if os.access(Path(d) / "initdb", os.X_OK) and os.access(Path(d) / "pg_ctl", os.X_OK)]
    return max(found, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0) if found else None


def skip_without_postgres() -> Path:
    """The server binaries' folder; the test skips, saying why, where they are absent."""
    found = postgres_bin()
    if found is None:
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl under /usr/lib/postgresql/*/bin) are not "
                    "installed: apt-get install postgresql (.ci/run does)")
    return found


def as_database_user() -> list[str]:
    """The prefix that runs a command as a non-root user (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


class Postgres:
    """``initdb`` + ``pg_ctl start`` on 127.0.0.1:``port``; ``stop``: ``pg_ctl stop -m fast``, the folder removed."""

    def __init__(self, port: int) -> None:
        self.bin = skip_without_postgres()
        self.port = port
        self.password = secrets.token_hex(12)
        self.root: Path | None = None

    @property
    def uri(self) -> str:
        return f"postgresql://mlflow:{self.password}@127.0.0.1:{self.port}/mlflow"

    def _run(self, *command: str) -> None:
        proc = subprocess.run([*as_database_user(), *command], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PGPASSWORD=self.password))
        assert proc.returncode == 0, f"{command[0]}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"

    def start(self) -> "Postgres":
        self.root = Path(tempfile.mkdtemp(prefix="rl-pg-", dir="/tmp"))  # a socket path must stay short
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.root.chmod(0o700)
        (self.root / "pw").write_text(self.password)
        if os.geteuid() == 0:
            os.chown(self.root / "pw", user.pw_uid, user.pw_gid)
        data = self.root / "data"
        self._run(str(self.bin / "initdb"), "-D", str(data), "-U", "mlflow", "--auth=scram-sha-256",
                  f"--pwfile={self.root / 'pw'}", "-E", "UTF8", "--no-sync")
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.root / "postgres.log"), "-w",
                      "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off", "start")
            self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "mlflow", "mlflow")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.root is None:
            return
        if (self.root / "data" / "postmaster.pid").exists():
            subprocess.run([*as_database_user(), str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-w",
                            "-m", "fast", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> "Postgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
