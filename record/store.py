"""Which MLflow store a command talks to: its tracking URI, resolved and checked before anything starts.

No MLflow import here (but where a new SQLite store is created): a launch
validates its flags and starts Ray before it pays for MLflow's, so the two
overlap.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
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


def artifact_root(db: Path) -> Path:
    """Where a SQLite store's artifacts live, beside its database: ``artifacts/`` for ``mlflow.db`` (the default
    store), ``<name>-artifacts/`` for any other ``<name>.db``, so that two stores in one folder share no files."""
    return db.parent / ("artifacts" if db.name == "mlflow.db" else f"{db.stem}-artifacts")


def private_folder(path: Path, what: str) -> Path:
    """``path`` created if missing (readable by the user only) and checked writable by a real write."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise StoreError(f"{what} {path} cannot be written: {error.strerror or error}") from None
    return path


def prepare_store(uri: str) -> tuple[int, int] | None:
    """Before a launch writes to a SQLite store: its folder and database exist, are private and writable; returns
    the database file's identity (:func:`store_identity`), which the launch's workers check before writing.

    A new folder (and its artifact folder, :func:`artifact_root`) is created ``0700`` and a new
    database file ``0600`` (MLflow would leave them readable by everyone),
    whole (:func:`create_store`); other stores are left to their server. Only
    the launching process creates a store: its workers open the file this
    returns, never a new one.
    """
    db = sqlite_path(uri)
    if db is None:
        return None
    private_folder(db.parent, "the tracking store's folder")
    private_folder(artifact_root(db), "the tracking store's artifact folder")
    if not db.exists():
        create_store(db)
    if not os.access(db, os.R_OK | os.W_OK):
        raise StoreError(f"the tracking store {db} is not readable and writable by this user")
    write_ahead_log(db)
    return store_identity(uri)


def create_store(db: Path) -> None:
    """A new SQLite store at ``db``, whole or not at all.

    MLflow creates a store's tables on first open, in dozens of migrations over
    seconds; another process opening the same new file meanwhile (a plain
    ``mlflow.search_runs``) runs them too, and whoever comes second to a step
    fails (or leaves the file half-migrated). So the tables are written to a
    private file beside it (a copy of :func:`empty_store`), which then takes the
    store's name only if nothing is there yet (a hard link: atomic, never
    overwriting). Whoever opens the path finds nothing or a complete store; a
    disk that fills leaves nothing. If another process created the store first,
    its file is kept (opening it waits for its tables:
    :func:`record.runs.open_client`).
    """
    try:
        _link_whole(db, _copy_of_empty_store)
    except FileExistsError:
        pass  # another process created the store meanwhile
    except Exception as error:  # noqa: BLE001 - SQLAlchemy's, Alembic's and the system's errors alike
        if "database or disk is full" in str(error) or getattr(error, "errno", None) == errno.ENOSPC:
            raise StoreError(f"the tracking store {db} cannot be created: the disk is full (database or disk is "
                             "full); free space, or pass another --tracking-uri") from None
        raise StoreError(f"the tracking store {db} cannot be created: "
                         f"{getattr(error, 'strerror', None) or str(error).splitlines()[0]}") from None


def _link_whole(target: Path, write) -> None:
    """``write(path)`` into a new private file beside ``target``, which then takes ``target``'s name only if nothing
    is there yet (a hard link: atomic, never overwriting; ``FileExistsError`` if something is). Nothing of the
    attempt is left behind, whatever fails."""
    building = target.with_name(f"{target.name}.new-{os.getpid()}")
    try:
        building.unlink(missing_ok=True)  # a killed process's leftover with this pid
        os.close(os.open(building, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        write(building)
        os.link(building, target)
    finally:
        for leftover in (building, building.with_name(building.name + "-journal")):
            with contextlib.suppress(OSError):
                leftover.unlink(missing_ok=True)


def _copy_of_empty_store(path: Path) -> None:
    template = empty_store()
    if template is None:
        _write_tables(path)
    else:
        shutil.copyfile(template, path)


def empty_store() -> Path | None:
    """An empty SQLite store with MLflow's tables (no experiment yet: MLflow adds its "Default" experiment, with
    the store's own artifact location, when a client first opens a store), built once per MLflow version in the
    user's cache (``$XDG_CACHE_HOME/robustlab``, else ``~/.cache/robustlab``): a new store is a copy of it (a few
    milliseconds), not the dozens of migrations that write those tables (seconds). None where the cache cannot be
    written; the template is linked into place whole, as a store is (:func:`_link_whole`)."""
    from importlib.metadata import version

    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "robustlab"
    template = folder / f"mlflow-{version('mlflow')}-empty.db"
    if template.is_file():
        return template
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        _link_whole(template, _write_tables)
    except FileExistsError:
        pass  # another process built it meanwhile
    except Exception:  # noqa: BLE001 - an unwritable cache or a full disk there: the store is built in place
        return None
    return template


def _write_tables(path: Path) -> None:
    """MLflow's tables written into the empty database file ``path``: what its first client runs on a new store."""
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    try:
        _initialize_tables(engine)  # in SQLite's default journal mode: every commit is in the file itself
    finally:
        engine.dispose()


def store_identity(uri: str) -> tuple[int, int] | None:
    """A SQLite store's database file as the system knows it, (device, inode): a file deleted and re-created at the
    same path (by anyone: an SQLite connection creates a missing file) is another store. None for other stores or
    a missing file."""
    db = sqlite_path(uri)
    try:
        info = os.stat(db) if db is not None else None
    except OSError:
        return None
    return None if info is None else (info.st_dev, info.st_ino)


class StoreReplaced(RuntimeError):
    """A SQLite store was deleted or replaced while a launch used it; the message names the file."""


def check_store(uri: str, identity: tuple[int, int] | None) -> None:
    """Raise :class:`StoreReplaced` when the SQLite store the launch opened (``identity``) is gone or replaced, before
    anything opens it: MLflow would create an empty store there, and the launch's runs would go into it."""
    db = sqlite_path(uri)
    if db is None or identity is None:
        return
    now = store_identity(uri)
    if now != tuple(identity):
        raise StoreReplaced(f"the tracking store {db} was " + ("deleted" if now is None else "replaced by another file")
                            + " while the launch ran")


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
    except urllib.error.HTTPError as error:
        _refused(uri, error.code)
        raise TrackingUnavailable(f"tracking server {uri} answered /health with HTTP {error.code}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingUnavailable(f"tracking server {uri} does not answer: {reason}") from None
    # /health answers anyone; MLflow's API checks the Host header (and credentials) first: ask it once as MLflow will
    request = urllib.request.Request(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        import base64

        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        urllib.request.urlopen(request, timeout=timeout_s).close()
    except urllib.error.HTTPError as error:
        _refused(uri, error.code, user if user and password else None)
    except (urllib.error.URLError, OSError):
        pass  # not the question here: MLflow's own client retries and reports


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


def _refused(uri: str, code: int, user: str | None = None) -> None:
    """A tracking server that answers but refuses this client (as ``user``, if credentials were sent): say why in
    one line."""
    if code == 403:
        host = urlparse(uri).netloc
        raise TrackingUnavailable(f"tracking server {uri} refuses this client (HTTP 403 Forbidden): it does not "
                                  f"allow the Host {host!r}; restart it with --allowed-hosts including {host!r}")
    if code == 401 and user:
        raise TrackingUnavailable(f"tracking server {uri} refuses user {user!r}: wrong username or password")
    if code == 401:
        raise TrackingUnavailable(f"tracking server {uri} requires authentication (HTTP 401): set "
                                  "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")


class TrackingLost(RuntimeError):
    """The tracking store was lost during a launch (stopped answering, or a SQLite file deleted or replaced):
    raised to end the launch; the message says what to do."""


def tracking_lost(uri: str, identity: tuple[int, int] | None = None) -> bool:
    """Whether the tracking store is lost: a server that does not answer, a SQLite file that is not there (or, given
    the ``identity`` the launch opened, is another file now)."""
    path = sqlite_path(uri)
    if path is not None:
        now = store_identity(uri)
        return now is None or (identity is not None and now != tuple(identity))
    try:
        check_reachable(uri, timeout_s=5.0)
    except TrackingUnavailable:
        return True
    return False
