"""The MLflow record of robustlab sweeps: the one place that knows its names, encoding and queries.

* :mod:`record.schema`: tag and param names, how config values become params and back (no MLflow import);
* :mod:`record.store`: which tracking store a command talks to (no MLflow import);
* :mod:`record.runs`: experiments and run queries;
* :mod:`record.write`: the sweep's parent run and one run per grid point (what launching writes);
* :mod:`record.checkpoints`: a long point's checkpoints in its own run;
* :mod:`record.models`: a point's trained model as an MLflow logged model of its run (written, and found);
* :mod:`record.lease`: one writer per sweep (the lease tag on its parent run);
* :mod:`record.read`: a sweep as a typed read model (what analysis reads).

Imports MLflow, pandas and NumPy only: any past sweep can be re-read without torch, Ray or the study's code.
"""

import os as _os
import sys as _sys

#: MLflow's telemetry switches. Every entry point (a launch, its Ray workers, the team server and its ``mlflow
#: server`` child, ``python -m analysis.*``, ``record.read``, ``analysis.models.load_model``) imports this package
#: before MLflow, so telemetry is off in all of them unless the user set either switch (then both are left as set).
TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def telemetry_off() -> None:
    """MLflow's telemetry off in this process and its children, unless the user set ``MLFLOW_DISABLE_TELEMETRY`` or
    ``DO_NOT_TRACK``. MLflow decides at its import: if it was imported first, its telemetry client is re-made
    (MLflow's public ``set_telemetry_client``, which makes none when telemetry is off)."""
    if any(name in _os.environ for name in TELEMETRY_OFF):
        return
    _os.environ.update(TELEMETRY_OFF)
    if "mlflow.telemetry" in _sys.modules:
        _sys.modules["mlflow.telemetry"].set_telemetry_client()


telemetry_off()
