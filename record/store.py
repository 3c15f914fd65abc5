"""Which MLflow store a command talks to: its tracking URI, resolved and checked before anything starts.

No MLflow import here: a launch validates its flags and starts Ray before it
pays for MLflow's (~2 s), so the two overlap.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_STORE_DIR = "mlruns"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The URI to use, absolute so Ray workers (other cwd, other hosts) reach the same store.

    Order: ``uri``, ``$MLFLOW_TRACKING_URI``, then the embedded default
    ``sqlite:///<cwd>/mlruns/mlflow.db``.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri:
        store = Path.cwd() / DEFAULT_STORE_DIR
        store.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{store / 'mlflow.db'}"
    if uri.startswith("file:") or urlparse(uri).scheme == "":
        raise ValueError(
            f"tracking URI {uri!r}: MLflow 3 no longer supports the file store; use sqlite:///path/mlflow.db "
            "or an http(s):// tracking server"
        )
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_absolute():
            path = Path.cwd() / path
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path.resolve()}"
    return uri


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
