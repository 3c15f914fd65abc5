"""A point's trained model, back from the store safely: ``load_model(run_id)`` -> ``torch.nn.Module``.

A point's model is an MLflow logged model of its run (:mod:`record.models`). This loader reads only two of its
files, ``model.json`` (the :mod:`core.models` registry name and the builder's arguments) and ``state_dict.pt``
(tensors only, read with ``torch.load(weights_only=True)``), and rebuilds the module from the project's registry:
nothing in the store is executed (README, "Loading a model safely"). Runs written before issue 26 hold the same two
files as the run's ``model/`` artifacts; they load the same way.
"""

from __future__ import annotations

import json
import tempfile


def load_model(source: str, tracking_uri: str | None = None, device: str = "cpu"):
    """The trained model ``source`` names, rebuilt from the registry, in eval mode on ``device``.

    ``source``: a point run's id, or a model URI: ``models:/<model id>`` (``mlflow.search_logged_models``),
    ``models:/<registered name>/<version>`` or ``models:/<registered name>@<alias>`` (after ``mlflow.register_model``).
    ``tracking_uri``: default ``$MLFLOW_TRACKING_URI``, else the embedded store under ``mlruns/``.
    """
    import torch

    from record.models import download_model_files  # record first: it keeps MLflow's telemetry off
    from record.schema import MODEL_SPEC, MODEL_WEIGHTS
    from record.store import resolve_tracking_uri

    from core.models import build_model

    with tempfile.TemporaryDirectory() as folder:
        local = download_model_files(resolve_tracking_uri(tracking_uri), source, folder)
        spec = json.loads((local / MODEL_SPEC).read_text())
        weights = torch.load(local / MODEL_WEIGHTS, map_location=device, weights_only=True)
    model = build_model(spec["registry_name"], **spec["kwargs"])
    model.load_state_dict(weights)
    return model.to(device).eval()
