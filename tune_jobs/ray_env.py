"""Ray's side of a launch: the environment a local Ray starts with, starting or joining Ray, and the checks that a
cluster can hold the launch's Ray trials and reach its record."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from record import TELEMETRY_OFF
from tune_jobs.launch import Launch, UsageError

if TYPE_CHECKING:
    from record.write import SweepWriter

#: The packages a Ray worker on another node needs (shipped with ``runtime_env``).
PROJECT_PACKAGES = ("core", "record", "analysis", "tune_jobs")


def trial_slots(launch: Launch) -> int:
    """How many Ray trials the cluster runs at once with the launch's resources per trial."""
    import ray

    compute, total = launch.compute, ray.cluster_resources()
    fits = [total.get("CPU", 0.0) / compute.cpus_per_trial] if compute.cpus_per_trial > 0 else []
    if compute.gpus_per_trial > 0:
        fits.append(total.get("GPU", 0.0) / compute.gpus_per_trial)
    slots = int(min(fits)) if fits else 1
    if compute.max_concurrent:
        slots = min(slots, compute.max_concurrent)
    return max(slots, 1)


def local_ray_settings() -> None:
    """The environment a local Ray is started with (each setting only if the user set none)."""
    # Read by Ray at import: keep every local Ray port on 127.0.0.1 (Ray binds all interfaces otherwise).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # Ray pre-starts one idle task worker per CPU, which Tune's trial actors never use: CPU spent for nothing.
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    # Token authentication, as a local Ray has by default, said explicitly: Ray then skips its start-up warning.
    # Ray reads it at import: a process that imported Ray before (a notebook, a test) keeps its own setting,
    # which its local Ray's processes then inherit (a driver and a GCS that disagree cannot talk).
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        # Ray's v1 autoscaler monitor answers ray.shutdown's SIGTERM by writing to the GCS that Ray stopped
        # first, and is killed a second later: every launch waited 1 s for it. The v2 monitor stops at once.
        # Its events are noise on one machine (pending Ray trials read as "no node type fits them"); the
        # driver reads that switch at import, hence both only here.
        os.environ.setdefault("RAY_enable_autoscaler_v2", "1")
        os.environ.setdefault("RAY_SCHEDULER_EVENTS", "0")


#: ``ray.init``'s arguments for a local Ray.
LOCAL_RAY_INIT = {"include_dashboard": False, "configure_logging": True, "logging_level": "WARNING",
                  "log_to_driver": True}


def start_ray(launch: Launch) -> None:
    """Join ``--address`` or start a local Ray on loopback, sized to this machine.

    Without ``--address`` a new local Ray starts always: never a Ray already running here (``ray.init()`` joins the
    one ``ray start`` last started, or ``$RAY_ADDRESS``; that variable is set aside, saying so).
    """
    if launch.compute.address is None:
        local_ray_settings()
        ignored = os.environ.pop("RAY_ADDRESS", "")
        if ignored:
            print(f"robustlab: ignoring RAY_ADDRESS={ignored}: a launch without --address starts its own local Ray; "
                  f"pass --address {ignored} to run on that cluster", flush=True)
    _ray_settings()
    import ray

    # Ray Tune's end-of-run summary of its own result files adds nothing to the MLflow summary printed after it.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    stopping = signal.getsignal(signal.SIGTERM)  # ray.init replaces it with sys.exit; the launcher's is kept below
    if launch.compute.address is None:
        ray.init(address="local", **LOCAL_RAY_INIT)
    else:  # ship the code (and the launch's private defaults and credentials) to every node: no shared filesystem
        try:
            ray.init(address=launch.compute.address, logging_level="WARNING",
                     runtime_env={"py_modules": packages_to_ship(launch.study_ref),
                                  "env_vars": {k: os.environ[k] for k in (*PRIVATE_DEFAULTS, *CREDENTIALS)
                                               if k in os.environ}})
        except ConnectionError as error:
            raise UsageError(f"--address {launch.compute.address}: no Ray cluster answers ({error})") from None
    if callable(stopping):  # python -m tune_jobs: SIGTERM (`ray job stop`) ends the sweep as Ctrl-C does
        signal.signal(signal.SIGTERM, stopping)


def _ray_settings() -> None:
    """The environment of any launch's Ray (each setting only if the user set none); Ray reads some at import."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Ray Tune's console output (a configuration box, a pointer to its own result files) tells nothing MLflow and
    # the launcher's progress lines do not; trial errors are still logged.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # MLflow is the record: no per-result JSON/CSV/TensorBoard files from the driver (set it to 0 to get them back).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Ctrl-C is a KeyboardInterrupt here (Tune's own handler ends the run as if it had completed): the launch
    # stops at once and ends the parent and the in-flight runs KILLED.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    # A point's outcome without the --metric (failed, skipped, a batch of points) is not an error: the launcher
    # checks before Ray starts that every point reports it (tune_jobs.cli), and Ray Tune's strict check would end
    # the whole launch with a traceback when one point fails; its schedulers and searchers skip such results.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")


#: Off unless the user turns them on: Ray's usage statistics and MLflow's telemetry; and MLflow's "View run ... at"
#: line, which its client prints (after one more request to a tracking server: a whole run read) each time a run
#: ends, a line per point on the console: the launcher prints the sweep's link once.
PRIVATE_DEFAULTS = {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
                    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "",
                    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "", "MLFLOW_HTTP_REQUEST_TIMEOUT": ""}


#: The tracking server's credentials, shipped to every node so its trials log as the launching user.
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def set_private_defaults(tracking_timeout_s: float) -> None:
    """Telemetry and MLflow's per-run link line off, and MLflow's HTTP retries bounded by ``tracking_timeout_s`` (each
    only if the user set none).

    MLflow retries a request with exponential backoff (urllib3: no wait, then
    2, 4, 8, ... s). Up to 7 retries (MLflow's own default) take waits of at
    most a third of the bound (5 retries, 30 s of waits at the default 120 s:
    a server restarted within ~30 s loses nothing); the rest is shared by the
    attempts' own timeouts.
    """
    retries = max(r for r in range(8) if 2 ** r - 2 <= tracking_timeout_s / 3)
    per_request = max(1, int((tracking_timeout_s - (2 ** retries - 2)) / (retries + 1)))
    bound = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(per_request)}
    for key, value in (PRIVATE_DEFAULTS | bound).items():
        if key not in TELEMETRY_OFF:  # record's own rule (both off unless the user set either)
            os.environ.setdefault(key, value)


def packages_to_ship(ref: str) -> list[str]:
    """Folders of this project's packages, plus the study's own top-level package unless it is installed."""
    names = list(PROJECT_PACKAGES)
    top = ref.partition(":")[0].partition(".")[0]
    if top not in names:
        names.append(top)
    folders = []
    for name in names:
        path = Path(importlib.import_module(name).__file__)
        if name == top and "site-packages" in path.parts:
            continue  # installed on the nodes like any dependency
        folders.append(str(path.parent) if path.name == "__init__.py" else str(path))
    return folders


def check_ray_address(address: str | None, timeout_s: float = 10.0) -> None:
    """Fail fast (within ``2 * timeout_s``), naming what was found, when the Ray cluster ``address`` names cannot be
    joined: for ``auto`` the one ``$RAY_ADDRESS``, Ray's address file or a Ray running here names, at the address
    Ray would connect to (a cluster on loopback is reached at this machine's own address). Ray itself retries such
    a cluster for many minutes."""
    if address is None or "://" in address:
        return
    _ray_settings()
    from ray._common.utils import get_ray_address_file  # Ray's own lookup (the version is pinned)
    from ray._private.services import canonicalize_bootstrap_address

    if address == "auto":
        source = ("$RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else get_ray_address_file(None)
                  if os.path.exists(get_ray_address_file(None)) else "a Ray process running on this machine")
    else:
        source = "--address"
    try:
        target = canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError) as error:
        raise UsageError(f"--address {address}: no Ray cluster answers ({error})") from None
    if target is None:
        raise UsageError(f"--address {address}: no Ray cluster answers (none found)")
    found = f"found {target} ({source})" if address == "auto" else f"Ray connects to {target}"
    host, _, port = target.rpartition(":")
    try:
        connection = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s)
    except (OSError, ValueError) as error:
        raise UsageError(f"--address {address}: no Ray cluster answers there ({found}: {error}); it cannot be "
                         "joined from here") from None
    with connection:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("0", "false", ""):
            if not _answers_grpc(connection, timeout_s):
                raise UsageError(f"--address {address}: {found} accepts connections but does not answer as a Ray "
                                 f"cluster within {timeout_s:g} s; it cannot be joined from here")


def _answers_grpc(connection: socket.socket, timeout_s: float) -> bool:
    """Whether the peer speaks HTTP/2, as a Ray head's GCS (a gRPC server) does: it answers a client's connection
    preface with a SETTINGS frame at once."""
    try:
        connection.settimeout(timeout_s)
        connection.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
        header = b""
        while len(header) < 9:
            chunk = connection.recv(9 - len(header))
            if not chunk:
                return False
            header += chunk
    except OSError:
        return False
    return header[3] == 4  # frame type SETTINGS


def check_resources(launch: Launch) -> None:
    """A Ray trial's CPUs and GPUs must fit on one alive node (else Ray waits forever); ``--wait-for-resources``
    skips this for a cluster whose autoscaler adds nodes."""
    import ray

    compute = launch.compute
    if compute.wait_for_resources:
        return
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= compute.cpus_per_trial and n.get("GPU", 0) >= compute.gpus_per_trial for n in nodes):
        return
    largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
    raise UsageError(f"no node of the Ray cluster can hold a Ray trial of {compute.cpus_per_trial:g} CPU(s) and "
                     f"{compute.gpus_per_trial:g} GPU(s) (the largest node has {largest.get('CPU', 0):g} CPU(s), "
                     f"{largest.get('GPU', 0):g} GPU(s)); lower --cpus-per-trial / --gpus-per-trial, or pass "
                     "--wait-for-resources for a cluster that adds nodes")


def check_cluster_storage(launch: Launch, sweep: SweepWriter) -> None:
    """On a cluster, every node must reach the record: runs, metrics and checkpoints (artifacts) go through the
    tracking URI, so a SQLite file or a local artifact folder on this machine cannot work; exit 2 saying what to pass.
    """
    import ray

    here = ray.util.get_node_ip_address()
    others = sorted({n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")} - {here})
    if not others:
        return
    server = ("start a tracking server every node reaches (python -m tune_jobs.tracking_server --host HOST serves "
              "artifacts through itself) and pass --tracking-uri http://HOST:5000")
    if not launch.tracking.uri.startswith(("http://", "https://")):
        raise UsageError(f"the Ray cluster has nodes other than this one ({', '.join(others)}), which cannot reach "
                         f"the tracking store {launch.tracking.uri}: {server}")
    location = sweep.client.get_run(sweep.sweep_id).info.artifact_uri
    if location.startswith(("file:", "/")):
        raise UsageError(f"the tracking server keeps artifacts (checkpoints, models) at {location}, a folder "
                         f"other nodes ({', '.join(others)}) cannot write: {server}, or give it an object store "
                         "(--artifacts-destination s3://...)")

