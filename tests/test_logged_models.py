"""A point's trained model is an MLflow logged model of its run (issue 26, item 4): found by
``mlflow.search_logged_models``, registrable, loadable through MLflow's own API with the predictions of the project's
loader, which never unpickles anything from the store; runs written with the old ``model/`` artifacts still load;
README's logged-model example runs verbatim."""

import json
import re
import subprocess

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import PYTHON, ROOT, python_env
from record import schema
from record.runs import search_all_runs
from tune_jobs.runner import main

GRID = ["--grid", "poison_fraction=0.2", "--grid", "hidden_width=8,32", "--grid", "seed=1", "--set", "epochs=20"]


def _sweep_with_models(store):
    assert main("poison_sensitivity", [*GRID, "--log-models", "--tracking-uri", store["uri"],
                                       "--storage-path", store["ray"]]) == 0
    client = MlflowClient(store["uri"])
    experiment_id = client.get_experiment_by_name("poison_sensitivity").experiment_id
    runs = search_all_runs(client, [experiment_id], f"tags.`{schema.TAG_KIND}` = '{schema.KIND_POINT}'")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    return client, experiment_id, runs


def _inputs(n_features: int = 10) -> torch.Tensor:
    return torch.randn(7, n_features, generator=torch.Generator().manual_seed(0))


def test_every_logged_model_is_an_mlflow_logged_model_of_its_run_registrable_and_loadable(store, monkeypatch):
    from analysis.models import load_model

    client, experiment_id, runs = _sweep_with_models(store)
    mlflow.set_tracking_uri(store["uri"])
    models = mlflow.search_logged_models(experiment_ids=[experiment_id], output_format="list")
    assert sorted(m.source_run_id for m in models) == sorted(r.info.run_id for r in runs), "one model per point"
    for model in models:
        run = client.get_run(model.source_run_id)
        assert model.name == schema.MODEL_NAME and model.status == "READY"
        assert model.tags[schema.TAG_POINT] == run.data.tags[schema.TAG_POINT]
        assert model.tags[schema.TAG_SWEEP] == run.data.tags[schema.TAG_SWEEP]
        assert model.params["registry_name"] == "mlp"
        assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id], "the run lists its model"
        # the model carries the point's final metrics (not a history's first value)
        assert {m.key: m.value for m in model.metrics} == {k: run.data.metrics[k] for k in (
            "train_acc", "train_clean_acc", "test_acc", "gen_gap", "final_train_loss")}

    # MLflow's own loaders, with its check that the archive holds no pickle (README, "Loading a model safely")
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    inputs = _inputs()
    for model in models:
        ours = load_model(model.source_run_id, store["uri"])
        assert not ours.training
        with torch.no_grad():
            expected = ours(inputs)
            for uri in (f"models:/{model.model_id}", f"runs:/{model.source_run_id}/model"):
                theirs = mlflow.pytorch.load_model(uri)
                assert torch.allclose(theirs(inputs), expected, atol=1e-6), uri
            assert torch.allclose(load_model(f"models:/{model.model_id}", store["uri"])(inputs), expected)
        predicted = mlflow.pyfunc.load_model(f"models:/{model.model_id}").predict(inputs.numpy())
        assert torch.allclose(torch.as_tensor(predicted), expected, atol=1e-6)

    version = mlflow.register_model(f"models:/{models[0].model_id}", "robustlab-mlp")
    assert version.version == "1" or version.version == 1
    assert mlflow.MlflowClient().get_model_version("robustlab-mlp", "1").source == f"models:/{models[0].model_id}"
    registered = mlflow.pytorch.load_model("models:/robustlab-mlp/1")
    ours = load_model("models:/robustlab-mlp/1", store["uri"])
    with torch.no_grad():
        assert torch.allclose(registered(inputs), ours(inputs), atol=1e-6)
        assert torch.allclose(ours(inputs), load_model(models[0].source_run_id, store["uri"])(inputs))


def _old_layout_run(store, weights_obj) -> str:
    """A point run as stores written before issue 26 hold it: plain artifacts ``model/state_dict.pt`` +
    ``model/model.json``."""
    from record.runs import get_or_create_experiment

    client = MlflowClient(store["uri"])
    experiment = get_or_create_experiment(client, "poison_sensitivity", store["uri"])
    run = client.create_run(experiment, tags={schema.TAG_KIND: schema.KIND_POINT})
    folder = store["dir"] / "old" / "model"
    folder.mkdir(parents=True)
    torch.save(weights_obj, folder / "state_dict.pt")
    (folder / "model.json").write_text(json.dumps({"registry_name": "mlp", "kwargs": {
        "in_features": 10, "hidden_widths": [8], "num_classes": 3}}))
    client.log_artifacts(run.info.run_id, str(folder), "model")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def test_a_model_in_the_old_artifact_layout_still_loads(store):
    from analysis.models import load_model
    from core.models import build_model

    original = build_model("mlp", in_features=10, hidden_widths=[8], num_classes=3).eval()
    run_id = _old_layout_run(store, original.state_dict())
    loaded = load_model(run_id, store["uri"])
    with torch.no_grad():
        assert torch.equal(loaded(_inputs()), original(_inputs()))


class _Payload:
    def __reduce__(self):
        return (open, ("pickled-code-ran", "w"))


def test_the_project_loader_never_unpickles_code_from_the_store(store):
    from analysis.models import load_model

    run_id = _old_layout_run(store, {"weight": _Payload()})
    with pytest.raises(Exception, match="(?i)weights.only|unpickl"):
        load_model(run_id, store["uri"])
    assert not (store["dir"] / "pickled-code-ran").exists()


def test_readme_logged_model_example_runs_verbatim(store):
    _sweep_with_models(store)
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- example: a point's MLflow logged model -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README lost its logged-model example"
    proc = subprocess.run([PYTHON, "-c", match.group(1)], cwd=store["dir"],
                          env=dict(python_env(), MLFLOW_TRACKING_URI=store["uri"]),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "same predictions: True" in proc.stdout, proc.stdout[-2000:]


@pytest.fixture
def writer(store):
    from record.runs import get_or_create_experiment
    from record.store import prepare_store
    from record.write import SweepWriter, create_sweep

    prepare_store(store["uri"])
    client = MlflowClient(store["uri"])
    experiment = get_or_create_experiment(client, "models", store["uri"])
    sweep_id = create_sweep(client, experiment, study="poison_sensitivity", run_name="s", command="test", fixed={},
                            grid={}, n_points=1, param_types={})
    return SweepWriter(store["uri"], experiment, sweep_id, "poison_sensitivity")


@pytest.mark.parametrize("example", ["none", "not-traceable"])
def test_a_model_mlflow_cannot_export_is_still_a_logged_model_the_project_loads(writer, store, example, capsys):
    """No example input (an own study may give none), or one the module cannot run on: the logged model has the
    project's files only, no MLflow flavour; the console says why for the second."""
    from analysis.models import load_model
    from core.models import build_model
    from core.point import TrainedModel
    from tune_jobs.point_run import log_model

    module = build_model("mlp", in_features=10, hidden_widths=[8], num_classes=3).eval()
    bad_input = None if example == "none" else torch.zeros(2, 4)  # 4 features for a 10-feature network
    run_id = writer.create("p", "trial-1")
    model_id = log_model(writer, run_id, TrainedModel("mlp", {"in_features": 10, "hidden_widths": [8],
                                                              "num_classes": 3}, module, bad_input))
    writer.client.set_terminated(run_id, "FINISHED")
    model = writer.client.get_logged_model(model_id)
    assert model.status == "READY" and model.source_run_id == run_id
    files = {a.path for a in writer.client.list_logged_model_artifacts(model_id)}
    assert files == {schema.MODEL_SPEC, schema.MODEL_WEIGHTS}
    assert ("has no MLflow flavour" in capsys.readouterr().out) == (example == "not-traceable")
    with torch.no_grad():
        assert torch.equal(load_model(run_id, store["uri"])(_inputs()), module(_inputs()))
