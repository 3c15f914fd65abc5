"""Which MLflow store a command talks to: its tracking URI, resolved and checked before anything starts.

No MLflow import here: a launch validates its flags and starts Ray before it
pays for MLflow's, so the two overlap.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_STORE_DIR = "mlruns"

#: URI schemes MLflow 3 can track to (a database through SQLAlchemy, or a tracking server).
SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")


class StoreError(ValueError):
    """A tracking URI or a folder that cannot be used; the message names it and says why."""


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The URI to use, absolute so Ray workers (other cwd, other hosts) reach the same store.

    Order: ``uri``, ``$MLFLOW_TRACKING_URI``, then the embedded default
    ``sqlite:///<cwd>/mlruns/mlflow.db``.  Nothing is created here.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri:
        return f"sqlite:///{Path.cwd() / DEFAULT_STORE_DIR / 'mlflow.db'}"
    scheme = urlparse(uri).scheme.partition("+")[0]
    if uri.startswith("file:") or scheme == "":
        raise StoreError(
            f"tracking URI {uri!r}: MLflow 3 no longer supports the file store; use sqlite:///path/mlflow.db "
            "or an http(s):// tracking server"
        )
    if scheme not in SCHEMES:
        raise StoreError(f"tracking URI {uri!r}: unknown scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_absolute():
            path = Path.cwd() / path
        return f"sqlite:///{path.resolve()}"
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def private_folder(path: Path, what: str) -> Path:
    """``path`` created if missing (readable by the user only) and checked writable by a real write."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise StoreError(f"{what} {path} cannot be written: {error.strerror or error}") from None
    return path


def prepare_store(uri: str) -> None:
    """Before a launch writes to a SQLite store: its folder and database exist, are private and writable.

    A new folder (and its ``artifacts/``) is created ``0700`` and a new
    database file ``0600`` (MLflow would leave them readable by everyone);
    other stores are left to their server.
    """
    db = sqlite_path(uri)
    if db is None:
        return
    private_folder(db.parent, "the tracking store's folder")
    private_folder(db.parent / "artifacts", "the tracking store's artifact folder")
    try:
        os.close(os.open(db, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        if not os.access(db, os.R_OK | os.W_OK):
            raise StoreError(f"the tracking store {db} is not readable and writable by this user") from None
    except OSError as error:
        raise StoreError(f"the tracking store {db} cannot be created: {error.strerror or error}") from None
    write_ahead_log(db)


def write_ahead_log(db: Path) -> None:
    """Put the SQLite database in write-ahead-log mode (a setting the file keeps).

    Ray trials write their points' runs at once; in SQLite's default mode a
    reader blocks a writer and every commit rewrites a journal file, so a
    writer that finds the file locked sleeps (1, 2, 5, 10 ... ms) while the
    cores idle. With the log, readers never block the writer and a commit
    is one append: 19 % more points per second at 2,000 short points here
    (``benchmarks/scale.py``). The database must be on a local disk (as
    SQLite's locking needs anyway); a file that refuses is left as it is.
    """
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(db, timeout=10)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error:
        pass


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """For a SQLite store, hold ``<db>.lock`` exclusively: two first launches do not race MLflow's schema creation."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class TrackingUnavailable(RuntimeError):
    """The tracking store does not answer; the message names the URI."""


def check_reachable(uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast, naming ``uri``, when a tracking server does not answer (MLflow's own client retries for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as response:
            if response.status != 200:
                raise TrackingUnavailable(f"tracking server {uri} answered /health with HTTP {response.status}")
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingUnavailable(f"tracking server {uri} does not answer: {reason}") from None


def check_permission(uri: str, experiment: str, timeout_s: float = 10.0) -> None:
    """On a tracking server with MLflow's basic authentication: the user (``$MLFLOW_TRACKING_USERNAME``) may create
    runs in ``experiment`` (EDIT or MANAGE), else a ``StoreError`` naming the experiment and the permission.
    A server without authentication, or an experiment not created yet (its creator gets MANAGE), passes."""
    if not uri.startswith(("http://", "https://")):
        return
    import base64
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    headers = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()} if user else {}

    def get(path: str, **query: str) -> dict | None:
        request = urllib.request.Request(f"{uri.rstrip('/')}/api/{path}?{urllib.parse.urlencode(query)}",
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            if error.code == 401:
                raise StoreError(f"tracking server {uri} refuses " + (
                    f"user {user!r}: wrong username or password" if user else
                    "anonymous access: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")) from None
            if error.code == 403:
                raise StoreError(f"user {user!r} has no READ permission on experiment {experiment!r} at {uri}; "
                                 "ask the server's admin for EDIT") from None
            if error.code == 404:
                return None
            raise StoreError(f"tracking server {uri} answered {path} with HTTP {error.code}") from None
        except (urllib.error.URLError, OSError) as error:
            raise TrackingUnavailable(f"tracking server {uri} does not answer: {getattr(error, 'reason', error)}") \
                from None

    found = get("2.0/mlflow/experiments/get-by-name", experiment_name=experiment)
    if found is None or not user or (get("2.0/mlflow/users/current") or {}).get("user", {}).get("is_admin"):
        return  # a new experiment is its creator's; an admin may write everywhere
    answer = get("3.0/mlflow/users/permissions/get", username=user, resource_type="experiment",
                 resource_id=found["experiment"]["experiment_id"])
    if answer is not None and answer.get("permission") not in ("EDIT", "MANAGE"):
        raise StoreError(f"user {user!r} has {answer.get('permission')} permission on experiment {experiment!r} at "
                         f"{uri}; a launch needs EDIT (ask the server's admin to grant it)")


def store_gone(uri: str) -> bool:
    """Whether the tracking store is gone: a server that does not answer, a SQLite file that is not there."""
    path = sqlite_path(uri)
    if path is not None:
        return not path.exists()
    try:
        check_reachable(uri, timeout_s=5.0)
    except TrackingUnavailable:
        return True
    return False
