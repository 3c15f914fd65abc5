"""robust_loss through real Ray and SQLite MLflow: smoke runs of every benchmark, user losses, retries from checkpoints."""

import hashlib
import json
import subprocess
import textwrap

import pytest
from mlflow.tracking import MlflowClient

from conftest import PYTHON, python_env
from record import schema
from record.runs import search_all_runs
from tune_jobs.cli import parse_launch
from tune_jobs.studies.robust_loss import STUDY
from tune_jobs.runner import main
from vision_fixtures import write_cifar10, write_cifar100, write_fashion_mnist

BENCHMARKS = "resnet20-cifar10-labelflip,vgg16bn-cifar100-labelflip,mobilenetv2-fmnist-labelflip,cnn-digits-labelflip"

CE_BODY = """
import torch.nn.functional as F

class RobustLoss:
    def compute_loss(self, logits, labels, epoch):
        {extra}
        return F.cross_entropy(logits, labels)
"""


def loss_file(folder, name, extra="pass"):
    path = folder / name
    path.write_text(textwrap.dedent(CE_BODY.format(extra=extra)))
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar10(root / "cifar-10-batches-py", per_batch=16, n_test=24)
    write_cifar100(root / "cifar-100-python", n_train=70, n_test=16)
    write_fashion_mnist(root / "FashionMNIST" / "raw", n_train=60, n_test=16)
    return root


def _children(uri, experiment="robust_loss"):
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client, search_all_runs(client, [experiment_id], schema.POINT_FILTER)


def test_smoke_sweep_of_every_benchmark_with_a_user_loss(store, data_dir):
    my_loss = loss_file(store["dir"], "my_loss.py")
    out = store["dir"] / "leaderboard"
    status = main("robust_loss", ["--grid", f"benchmark={BENCHMARKS}", "--grid", "seed=42", "--grid", f"loss=cross_entropy,{my_loss}",
                                  "--scale", "smoke", "--data-dir", str(data_dir), "--tracking-uri", store["uri"],
                                  "--storage-path", store["ray"], "--analyze", str(out)])
    assert status == 0
    client, children = _children(store["uri"])
    assert len(children) == 8 and all(c.info.status == "FINISHED" for c in children)
    user = [c for c in children if c.data.params["loss"] == str(my_loss)]
    assert len(user) == 4 and all(len(c.data.params["loss_sha256"]) == 64 for c in user)
    run = children[0]
    for name in ("benchmark", "loss", "seed", "poison_rate", "epochs", "lr", "momentum", "weight_decay", "batch_size"):
        assert name in run.data.params
    for key in ("train_loss", "test_acc", "poison_fit"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [0, 1]
    assert len(client.get_metric_history(run.info.run_id, "robust_score")) == 2, "no duplicate final point"
    indices = json.load(open(client.download_artifacts(run.info.run_id, "poisoned_indices.json", str(store["dir"]))))
    assert indices["indices"]
    for child in children:  # the data as a dataset input: the files' checksums, the same digest for the same files
        [data] = child.inputs.dataset_inputs
        files = json.loads(data.dataset.profile)["files"]
        if child.data.params["benchmark"] == "resnet20-cifar10-labelflip":
            assert data.dataset.name == "cifar10" and data.dataset.source_type == "local"
            folder = data_dir / "cifar-10-batches-py"
            assert files == {p.name: "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
        elif child.data.params["benchmark"] == "cnn-digits-labelflip":
            assert data.dataset.name == "digits" and data.dataset.source_type == "code"
    digests = {(c.data.params["benchmark"], c.inputs.dataset_inputs[0].dataset.digest) for c in children}
    assert len(digests) == 4, "one digest per benchmark's data, the same for both losses"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["benchmarks"]) == set(BENCHMARKS.split(","))
    assert (out / "leaderboard.md").read_text().startswith("| loss |")
    assert (out / "curves.png").stat().st_size > 0


def test_a_trial_retried_from_its_checkpoint_continues_its_run_with_the_same_numbers(store, tmp_path):
    marker = tmp_path / "failed-once"
    flaky = loss_file(tmp_path, "flaky.py", extra=textwrap.dedent(f"""
        import pathlib
        marker = pathlib.Path({str(marker)!r})
        if epoch == 2 and not marker.exists():
            marker.write_text("preempted")
            raise RuntimeError("simulated preemption in epoch 2")""").replace("\n", "\n        "))
    steady = loss_file(tmp_path, "steady.py")
    common = ["--grid", "seed=42", "--set", "epochs=4", "--tracking-uri", store["uri"], "--storage-path", store["ray"]]
    assert main("robust_loss", ["--grid", f"loss={flaky}", "--max-failures", "1", "--experiment", "retry", *common]) == 0
    assert marker.exists(), "the first attempt really failed"
    assert main("robust_loss", ["--grid", f"loss={steady}", "--experiment", "steady", "--system-metrics", "1",
                                *common]) == 0
    client, retried = _children(store["uri"], "retry")
    _, plain = _children(store["uri"], "steady")
    assert len(retried) == 1 and retried[0].info.status == "FINISHED", "one run, continued after the retry"
    assert schema.TAG_ERROR not in retried[0].data.tags
    for key in ("train_loss", "test_acc", "poison_fit"):
        steps = [m.step for m in client.get_metric_history(retried[0].info.run_id, key)]
        assert sorted(steps) == [0, 1, 2, 3], (key, steps)
    for key in ("test_acc", "poison_fit", "robust_score", "final_train_loss"):
        assert retried[0].data.metrics[key] == plain[0].data.metrics[key], key
    # MLflow's system metrics, sampled every second of the steady point's run (none unless asked, as for retry)
    cpu = client.get_metric_history(plain[0].info.run_id, "system/cpu_utilization_percentage")
    assert cpu and all(0 <= m.value <= 100 for m in cpu)
    assert "system/system_memory_usage_megabytes" in plain[0].data.metrics and plain[0].info.status == "FINISHED"


def test_a_loss_that_turns_nan_fails_its_trial_and_the_others_go_on(store, tmp_path):
    nan_loss = loss_file(tmp_path, "nan_later.py", extra='if epoch >= 2:\n            return logits.sum() * float("nan")')
    status = main("robust_loss", ["--grid", f"loss=cross_entropy,{nan_loss}", "--grid", "seed=42", "--set", "epochs=3",
                                  "--tracking-uri", store["uri"], "--storage-path", store["ray"]])
    assert status == 1
    _, children = _children(store["uri"])
    by_loss = {c.data.params["loss"]: c for c in children}
    assert by_loss["cross_entropy"].info.status == "FINISHED"
    failed = by_loss[str(nan_loss)]
    assert failed.info.status == "FAILED" and "is nan at epoch 2" in failed.data.tags[schema.TAG_ERROR]


@pytest.mark.parametrize("body, message", [
    (None, "loss file missing"),
    ("def broken(:\n", "syntax"),
    ("class Other:\n    pass\n", "RobustLoss"),
    ("import torch\nclass RobustLoss:\n    def compute_loss(self, logits, labels, epoch):\n        return logits.sum(1)\n",
     "scalar"),
    ("import torch\nclass RobustLoss:\n    def compute_loss(self, logits, labels, epoch):\n        return logits.sum() * float('nan')\n",
     "finite"),
])
def test_bad_loss_files_are_refused_before_ray_starts(tmp_path, body, message):
    path = tmp_path / "user_loss.py"
    if body is not None:
        path.write_text(body)
    launch = parse_launch(STUDY, ["--grid", f"loss={path}"])
    with pytest.raises(ValueError) as error:
        STUDY.prepare(launch.points, launch.switches)
    assert message in str(error.value).lower() or message in str(error.value)


def test_launcher_exit_status_2_for_bad_benchmark_loss_and_data(tmp_path):
    cases = [
        (["--grid", "benchmark=resnet99-cifar10"], "benchmark must be one of"),
        (["--grid", "loss=no_such_loss"], "unknown loss 'no_such_loss'"),
        (["--grid", "benchmark=resnet20-cifar10-labelflip", "--data-dir", str(tmp_path / "nowhere")], "data_batch_1"),
    ]
    for argv, message in cases:
        proc = subprocess.run([PYTHON, "-m", "tune_jobs.robust_loss", *argv, "--tracking-uri",
                               f"sqlite:///{tmp_path}/m.db"], capture_output=True, text=True, env=python_env(),
                              cwd=tmp_path, timeout=120)
        assert proc.returncode == 2, (argv, proc.stderr[-2000:])
        assert message in proc.stderr, (message, proc.stderr[-2000:])
