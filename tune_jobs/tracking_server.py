"""Run an MLflow tracking server for a team: ``python -m tune_jobs.tracking_server --help``.

The server proxies artifacts (``--serve-artifacts``), so Ray workers on other
machines upload through HTTP and need no shared filesystem. It listens on
127.0.0.1 unless ``--host`` says otherwise; beyond loopback it requires
MLflow's basic authentication (the admin password from
``$MLFLOW_AUTH_ADMIN_PASSWORD``) unless ``--insecure`` is given. A port that is
taken is refused. It runs in its own process group and is stopped as a group
(``mlflow server`` spawns workers that outlive a killed parent).
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from record.store import DEFAULT_STORE_DIR, sqlite_path, write_ahead_log


class TrackingServer:
    """An ``mlflow server`` child process; a context manager that stops exactly what it started."""

    def __init__(self, backend_store_uri: str, artifacts_destination: str, host: str = "127.0.0.1",
                 port: int = 5000, allowed_hosts: str | None = None, log_file: Path | None = None,
                 auth_config: Path | None = None, workers: int = 1) -> None:
        self.auth_config = auth_config
        self.workers = workers
        self.backend_store_uri = backend_store_uri
        self.artifacts_destination = artifacts_destination
        self.host = host
        self.port = port
        self.allowed_hosts = allowed_hosts
        self.log_file = log_file
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 90.0) -> "TrackingServer":
        """Start the server and wait until ``/health`` answers."""
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend_store_uri,
                   "--serve-artifacts", "--artifacts-destination", self.artifacts_destination,
                   "--host", self.host, "--port", str(self.port), "--workers", str(self.workers)]
        if self.allowed_hosts:
            command += ["--allowed-hosts", self.allowed_hosts]
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        if self.auth_config is not None:
            command += ["--app-name", "basic-auth"]
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(self.auth_config)
            env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_urlsafe(32))  # CSRF, for this server
        output = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        # umask 077: the databases the server creates (mlflow.db, basic_auth.db) and its artifacts are its owner's only
        self.process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT,
                                        start_new_session=True, umask=0o077)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with status {self.process.returncode}"
                                   + (f"; see {self.log_file}" if self.log_file else ""))
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server at {self.uri} did not answer /health within {timeout_s:.0f} s")

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the server's process group, then SIGKILL whatever is left of it."""
        if self.process is None:
            return
        group = self.process.pid
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(group):
                time.sleep(0.2)
            if not _group_alive(group):
                break
        self.process.wait(timeout=5)
        self.process = None

    def __enter__(self) -> "TrackingServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (another server there answers /health as if it were ours).

    With ``SO_REUSEADDR``, as the server itself binds: a port that holds only TIME_WAIT connections of a server that
    just stopped is free (for ~60 s after a crash a plain bind says it is taken); one a process listens on is not.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def write_auth_config(folder: Path) -> Path:
    """MLflow's basic-auth settings for this server: users in ``basic_auth.db`` beside it, readable by its owner only.

    The admin user is created at the first start from ``$MLFLOW_AUTH_ADMIN_PASSWORD``;
    others get READ on what they did not create.
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / "basic_auth.ini"
    path.write_text("[mlflow]\ndefault_permission = READ\n"
                    f"database_uri = sqlite:///{(folder / 'basic_auth.db').resolve()}\nadmin_username = admin\n"
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    path.chmod(0o600)
    return path


def default_workers() -> int:
    """MLflow's own default (4 worker processes), at most one per CPU of this machine."""
    return min(4, os.cpu_count() or 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tune_jobs.tracking_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    store = Path(DEFAULT_STORE_DIR) / "server"
    parser.add_argument("--backend-store-uri", default=f"sqlite:///{(store / 'mlflow.db').resolve()}",
                        help="run metadata: sqlite:///path.db or postgresql://user:pass@host/db (default: %(default)s)")
    parser.add_argument("--artifacts-destination", default=str((store / "artifacts").resolve()),
                        help="where the server stores artifacts it receives (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default: %(default)s; use the machine's address or 0.0.0.0 "
                             "for a team, with --allowed-hosts)")
    parser.add_argument("--port", type=int, default=5000, help="port (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="server processes answering requests at once; each point's run is a few requests, so "
                             "a sweep's Ray trials wait on one process alone (default: %(default)s, MLflow's 4 or one "
                             "per CPU if fewer)")
    parser.add_argument("--allowed-hosts", default=None,
                        help="Host headers the server accepts when it listens beyond loopback, e.g. 'mlflow.lab:5000'")
    parser.add_argument("--auth", action="store_true",
                        help="require MLflow's basic authentication also on loopback (always beyond it, unless "
                             "--insecure); the admin password comes from $MLFLOW_AUTH_ADMIN_PASSWORD")
    parser.add_argument("--insecure", action="store_true",
                        help="listen beyond loopback without authentication: anyone who reaches the port can read "
                             "and change every run")
    args = parser.parse_args(argv)
    if args.workers < 1:
        print(f"error: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    os.umask(0o077)  # what the server creates (its databases, log, artifacts) is readable by its owner only
    auth = args.auth or (not is_loopback(args.host) and not args.insecure)
    if auth and not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
        print(f"error: --host {args.host} needs authentication: set MLFLOW_AUTH_ADMIN_PASSWORD to the admin's "
              "password (then create users, see README 'Security'), or pass --insecure", file=sys.stderr)
        return 2
    if not is_loopback(args.host) and not args.allowed_hosts:
        print(f"error: --host {args.host} needs --allowed-hosts: MLflow answers 403 to every request whose Host header "
              "it does not allow (beyond loopback it allows none by default); pass the host:port names clients use, "
              f"e.g. --allowed-hosts 'mlflow.lab:{args.port},10.0.0.5:{args.port}'", file=sys.stderr)
        return 2
    if not port_is_free(args.host, args.port):
        print(f"error: --port {args.port} on {args.host} is taken (another server?); pick another port",
              file=sys.stderr)
        return 2
    store.mkdir(mode=0o700, parents=True, exist_ok=True)
    database = sqlite_path(args.backend_store_uri)
    if database is not None and database.parent.is_dir():  # the server's workers write at once, like Ray trials
        write_ahead_log(database)
    server = TrackingServer(args.backend_store_uri, args.artifacts_destination, args.host, args.port,
                            args.allowed_hosts, log_file=store / "server.log",
                            auth_config=write_auth_config(store) if auth else None, workers=args.workers)
    # SIGTERM (or Ctrl-C) while the server starts stops it too: its process group would outlive this process
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.start()
        print(f"MLflow tracking server ready at {server.uri} (backend {args.backend_store_uri}"
              + (", basic authentication: clients set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
                 if auth else "")
              + f"); launch sweeps with --tracking-uri {server.uri}. Ctrl-C stops it.", flush=True)
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
