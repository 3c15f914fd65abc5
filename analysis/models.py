"""A point's trained model, back from its MLflow run: ``load_model(run_id)`` -> ``torch.nn.Module``.

The run holds ``model/model.json`` (the :mod:`core.models` registry name and
the builder's arguments) and ``model/state_dict.pt`` (tensors only, read with
``torch.load(weights_only=True)``: nothing in the store is executed).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path


def load_model(run_id: str, tracking_uri: str | None = None, device: str = "cpu"):
    """The trained model of the point run ``run_id``, rebuilt from the registry, in eval mode on ``device``.

    ``tracking_uri``: default ``$MLFLOW_TRACKING_URI``, else the embedded store under ``mlruns/``.
    """
    import torch

    from record.schema import MODEL_DIR, MODEL_SPEC, MODEL_WEIGHTS  # record first: it keeps MLflow's telemetry off
    from record.store import resolve_tracking_uri
    from mlflow.tracking import MlflowClient

    from core.models import build_model

    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    with tempfile.TemporaryDirectory() as folder:
        local = Path(client.download_artifacts(run_id, MODEL_DIR, folder))
        spec = json.loads((local / MODEL_SPEC).read_text())
        weights = torch.load(local / MODEL_WEIGHTS, map_location=device, weights_only=True)
    model = build_model(spec["registry_name"], **spec["kwargs"])
    model.load_state_dict(weights)
    return model.to(device).eval()
