"""Checkpoints live in the point's MLflow run while it trains and go when it finishes; trained models stay, and
README's "load a trained model" example loads one (run verbatim)."""

import re
import subprocess

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import PYTHON, ROOT, python_env
from core.augment import DeviceAugmenter
from core.studies.robust_loss import BENCHMARKS, RobustLossConfig
from core.training import accuracy
from core.vision_data import DATASETS, load_dataset
from record import schema
from record.runs import get_or_create_experiment, search_all_runs
from record.checkpoints import checkpoint_note, drop_checkpoints, save_checkpoint
from record.store import artifact_root
from tune_jobs.runner import main

COMMON = ["--grid", "loss=cross_entropy,symmetric_ce", "--grid", "seed=42", "--set", "epochs=4", "--checkpoint-every", "1"]


def _point_runs(uri):
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("robust_loss").experiment_id
    return client, search_all_runs(client, [experiment_id], f"tags.`{schema.TAG_KIND}` = '{schema.KIND_POINT}'")


def _checkpoint_files(root):
    return [p for p in root.rglob("*") if p.is_file() and schema.CHECKPOINT_DIR in p.relative_to(root).parts]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- example: load a trained model -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README lost its 'load a trained model' example"
    return match.group(1)


def test_finished_points_leave_no_checkpoint_and_keep_a_model_readme_loads(store):
    assert main("robust_loss", [*COMMON, "--set", "val_fraction=0.1", "--tracking-uri", store["uri"],
                                "--storage-path", store["ray"]]) == 0
    client, runs = _point_runs(store["uri"])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert all(schema.TAG_CHECKPOINT not in r.data.tags for r in runs)
    assert not _checkpoint_files(store["dir"]), "a checkpoint left behind"
    artifacts = artifact_root(store["dir"] / "mlflow.db")
    assert not [p for p in artifacts.rglob("*") if p.is_dir() and not any(p.iterdir())], "empty folders left behind"
    for run in runs:
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "test_acc")) == [0, 1, 2, 3]
    models = client.search_logged_models([runs[0].info.experiment_id])
    assert sorted(m.source_run_id for m in models) == sorted(r.info.run_id for r in runs)  # MLflow logged models
    for model in models:  # with MLflow's pytorch flavour beside the project's files
        files = {a.path for a in client.list_logged_model_artifacts(model.model_id)}
        assert {"MLmodel", "data", "state_dict.pt", "model.json"} <= files, files

    example = readme_example()
    proc = subprocess.run([PYTHON, "-c", example + "\nimport torch\ntorch.save(model, 'loaded.pt')\n"
                                                   "print(best.run_id)"],
                          cwd=store["dir"], env=dict(python_env(), MLFLOW_TRACKING_URI=store["uri"]),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = proc.stdout.split()[-1]
    best = client.get_run(run_id)
    assert best.data.metrics["val_acc"] == max(r.data.metrics["val_acc"] for r in runs), "by validation, not test"
    model = torch.load(store["dir"] / "loaded.pt", weights_only=False)  # written by the example just above
    assert not model.training
    dataset = BENCHMARKS[RobustLossConfig().benchmark].dataset
    info, recipe, data = DATASETS[dataset], RobustLossConfig().recipe(), load_dataset(dataset, None)
    images, labels = torch.from_numpy(data.test_images), torch.from_numpy(data.test_labels)
    augmenter = DeviceAugmenter(info.mean, info.std, recipe.crop_padding, recipe.horizontal_flip, torch.device("cpu"))
    with torch.no_grad():
        predictions = model(augmenter.test_batch(images, torch.arange(len(labels)))).argmax(1)
    assert accuracy(predictions, labels) == best.data.metrics["test_acc"], "the logged model is the one measured"


def test_a_run_whose_only_artifacts_were_checkpoints_leaves_no_empty_folder(store, tmp_path):
    client = MlflowClient(store["uri"])
    run_id = client.create_run(get_or_create_experiment(client, "own", store["uri"])).info.run_id
    state = tmp_path / "point_state.pt"
    state.write_bytes(b"state")
    for epoch, slot in enumerate("ab"):
        save_checkpoint(client, run_id, str(state), slot, epoch, "node")
    drop_checkpoints(client, run_id)
    experiment_folder = artifact_root(store["dir"] / "mlflow.db") / "own"  # the experiment's: it stays
    assert not [p for p in experiment_folder.rglob("*") if p.is_dir() and not any(p.iterdir())], "empty run folders"
    assert client.list_artifacts(run_id) == [] and schema.TAG_CHECKPOINT not in client.get_run(run_id).data.tags


def test_keep_checkpoints_keeps_only_the_latest(store):
    args = [*COMMON, "--keep-checkpoints", "--tracking-uri", store["uri"], "--storage-path", store["ray"]]
    assert main("robust_loss", args) == 0
    client, runs = _point_runs(store["uri"])
    for run in runs:
        note = checkpoint_note(run)
        assert note is not None and note["epoch"] == 3 and note["bytes"] > 0
        (slot,) = client.list_artifacts(run.info.run_id, schema.CHECKPOINT_DIR)
        assert [a.path for a in client.list_artifacts(run.info.run_id, slot.path)] == [note["path"]]
    assert len(_checkpoint_files(store["dir"])) == len(runs) == 2


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_checkpoint_interval_exits_2_naming_it(store, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        main("robust_loss", ["--checkpoint-every", value, "--tracking-uri", store["uri"]])
    assert exit_.value.code == 2 and f"--checkpoint-every must be" in capsys.readouterr().err
    assert not (store["dir"] / "mlflow.db").exists(), "refused before anything was created"


def test_a_cheap_study_logs_its_mlp_models_when_asked(store):
    from analysis.models import load_model
    from core.studies.poison_sensitivity import PoisonSensitivityConfig, make_split

    grid = ["--grid", "poison_fraction=0.2", "--grid", "hidden_width=8,32", "--grid", "seed=1", "--set", "epochs=20"]
    assert main("poison_sensitivity", [*grid, "--log-models", "--tracking-uri", store["uri"],
                                       "--storage-path", store["ray"]]) == 0
    client = MlflowClient(store["uri"])
    experiment_id = client.get_experiment_by_name("poison_sensitivity").experiment_id
    runs = search_all_runs(client, [experiment_id], f"tags.`{schema.TAG_KIND}` = '{schema.KIND_POINT}'")
    assert len(runs) == 2
    for run in runs:
        config = PoisonSensitivityConfig(poison_fraction=0.2, hidden_width=int(run.data.params["hidden_width"]),
                                         seed=1, epochs=20)
        split = make_split(config)
        model = load_model(run.info.run_id, store["uri"])
        with torch.no_grad():
            predictions = model(split.test_inputs).argmax(1)
        assert accuracy(predictions, split.test_labels) == run.data.metrics["test_acc"]
