"""A point's trained model as an MLflow logged model of its run: how it is written and where its files are read.

The logged model (MLflow 3's ``LoggedModel``: the Models tab, ``mlflow.search_logged_models``,
``mlflow.register_model``) is named :data:`record.schema.MODEL_NAME` with the point's run as its source run, so
``runs:/<run id>/model`` and ``models:/<model id>`` both name it. Its artifacts hold the project's two files,
``state_dict.pt`` (tensors only) and ``model.json`` (registry name and builder arguments), which the project's loader
reads (``analysis.models.load_model``: no pickle from the store is ever executed), and, where the study gave an
example input, MLflow's ``pytorch`` flavour (``MLmodel``, ``data/model.pt2``) for MLflow's own loaders.

Stores written before issue 26 hold the two files as the run's artifacts under ``model/``: :func:`download_model_files`
reads both layouts. No torch here: the caller writes the files (:func:`log_point_model`'s ``write``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
from mlflow.tracking import MlflowClient

from record import schema


def log_point_model(client: MlflowClient, run_id: str, spec: Mapping[str, Any],
                    write: Callable[[Path, Any], None]) -> str:
    """A READY logged model of the point run ``run_id``: its params (``spec``: ``registry_name``, ``kwargs``), the
    run's record tags, the run's output (step 0); ``write(folder, mlflow_model)`` puts the files in ``folder`` (the
    weights, and MLflow's flavour if it can, ``mlflow_model`` being the ``mlflow.models.Model`` that knows the model
    id); ``model.json`` is written here. Returns the model id (a model whose files failed is left FAILED)."""
    from mlflow.models import Model

    run = client.get_run(run_id)
    tags = {key: run.data.tags[key] for key in schema.MODEL_TAGS if key in run.data.tags}
    params = {schema.MODEL_PARAM_REGISTRY: str(spec["registry_name"]),
              schema.MODEL_PARAM_KWARGS: json.dumps(spec["kwargs"], sort_keys=True)}
    model = client.create_logged_model(run.info.experiment_id, name=schema.MODEL_NAME, source_run_id=run_id,
                                       tags=tags, params=params)
    try:
        client.log_outputs(run_id, models=[LoggedModelOutput(model.model_id, step=0)])
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / schema.MODEL_NAME
            mlflow_model = Model(artifact_path=model.artifact_location, model_uuid=model.model_id, run_id=run_id,
                                 model_id=model.model_id)
            write(folder, mlflow_model)
            folder.mkdir(exist_ok=True)
            (folder / schema.MODEL_SPEC).write_text(json.dumps(dict(spec), indent=1, sort_keys=True))
            client.log_model_artifacts(model.model_id, str(folder))
    except BaseException:
        client.finalize_logged_model(model.model_id, "FAILED")
        raise
    client.finalize_logged_model(model.model_id, "READY")
    return model.model_id


def model_metrics(metrics: list[Metric], model_id: str | None, finals: Mapping[str, float]) -> list[Metric]:
    """``metrics`` (what a point's run gets at its end) with its final values ``finals`` also linked to its logged
    model ``model_id`` (the model page's metrics): of each final, the point logged with the highest step (a final
    that is also a history is carried by the history's last point). The same values, logged once."""
    if model_id is None:
        return metrics
    last: dict[str, Metric] = {}
    for metric in metrics:
        if metric.key in finals and metric.value == finals[metric.key]:
            if metric.key not in last or metric.step > last[metric.key].step:
                last[metric.key] = metric
    linked = {id(m) for m in last.values()}
    return [Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id) if id(m) in linked else m
            for m in metrics]


def point_model(client: MlflowClient, run_id: str):
    """The newest READY logged model of the point run ``run_id`` (None: none, e.g. a run written before issue 26).

    The status is checked here, not in the filter: through a tracking server (MLflow 3.17) ``status = 'READY'``
    matches nothing."""
    experiment_id = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models(
        [experiment_id], filter_string=f"source_run_id = '{run_id}' and name = '{schema.MODEL_NAME}'",
        order_by=[{"field_name": "creation_time", "ascending": False}])
    return next((model for model in found if model.status == LoggedModelStatus.READY), None)


def model_id_of(client: MlflowClient, uri: str) -> str:
    """The logged model id a model URI names: ``models:/<model id>``, ``models:/<registered name>/<version>`` or
    ``models:/<registered name>@<alias>`` (a version registered from a logged model has ``models:/<model id>`` as its
    source)."""
    rest = uri[len("models:/"):].strip("/")
    if "@" not in rest and "/" not in rest:
        return rest
    if "@" in rest:
        version = client.get_model_version_by_alias(*rest.split("@", 1))
    else:
        version = client.get_model_version(*rest.split("/", 1))
    if version.model_id:
        return version.model_id
    if not version.source.startswith("models:/"):
        raise ValueError(f"{uri} was registered from {version.source}, not from a logged model")
    return version.source[len("models:/"):].strip("/")


def download_model_files(tracking_uri: str, source: str, folder: str) -> Path:
    """A local folder holding ``model.json`` and ``state_dict.pt`` of ``source`` (only those two files: never
    MLflow's flavour): a point run's id (its logged model, else the ``model/`` artifacts of a run written before
    issue 26), or a model URI (``models:/<model id>``, ``models:/<registered name>/<version>``)."""
    from mlflow.artifacts import download_artifacts

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    if source.startswith("models:/"):
        model = client.get_logged_model(model_id_of(client, source))
    else:
        model = point_model(client, source)
        if model is None:  # the old layout: plain run artifacts
            return Path(client.download_artifacts(source, schema.MODEL_DIR, folder))
    local = Path(folder) / schema.MODEL_NAME
    local.mkdir(parents=True, exist_ok=True)
    for name in (schema.MODEL_SPEC, schema.MODEL_WEIGHTS):
        download_artifacts(artifact_uri=f"{model.artifact_location.rstrip('/')}/{name}", dst_path=str(local),
                           tracking_uri=tracking_uri)
    return local
