"""robust_loss study core: poisoning, metrics, config, smoke runs, digits, checkpoint/resume."""

import dataclasses
import io
import textwrap

import numpy as np
import pytest
import torch

from core.point import PLAIN, PointContext
from core.training import validation_split
from core.poisoning import next_class_flip
from core.studies.robust_loss import (
    BENCHMARKS,
    SMOKE_EVAL_SAMPLES,
    RobustLossConfig,
    poison_fit,
    robust_score,
    run_point,
)
from core.vision_data import load_digits_data
from vision_fixtures import write_cifar10, write_cifar100, write_fashion_mnist


def test_next_class_flip_count_and_rule():
    labels = np.random.RandomState(0).randint(0, 10, size=1000)
    poisoned, indices = next_class_flip(labels, 0.15, 10, seed=42)
    assert len(indices) == 150 and len(np.unique(indices)) == 150 and np.all(np.diff(indices) > 0)
    assert np.array_equal(poisoned[indices], (labels[indices] + 1) % 10)
    clean = np.setdiff1d(np.arange(1000), indices)
    assert np.array_equal(poisoned[clean], labels[clean])
    again, same_indices = next_class_flip(labels, 0.15, 10, seed=42)
    assert np.array_equal(same_indices, indices) and np.array_equal(again, poisoned)


def test_poison_fit_and_robust_score_by_hand():
    predictions = torch.tensor([3, 1, 4, 1, 5])
    poisoned_labels = torch.tensor([3, 2, 4, 0, 5])  # 3 of 5 predicted as the poisoned label
    assert poison_fit(predictions, poisoned_labels) == 0.6
    assert poison_fit(predictions[:0], poisoned_labels[:0]) == 0.0
    assert robust_score(0.9, 0.6) == pytest.approx(0.65)


# ---------------------------------------------------------------- config


def test_spec_recipes():
    for name, model, rate in (
        ("resnet20-cifar10-labelflip", "resnet20", 0.10),
        ("vgg16bn-cifar100-labelflip", "vgg16_bn", 0.10),
        ("mobilenetv2-fmnist-labelflip", "mobilenet_v2", 0.15),
    ):
        benchmark = BENCHMARKS[name]
        assert benchmark.model == model
        assert dataclasses.asdict(benchmark.recipe) == dict(
            epochs=100, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4, poison_rate=rate, poison_seed=42,
            crop_padding=4, horizontal_flip=True,
        )
    assert BENCHMARKS["cnn-digits-labelflip"].recipe.poison_rate == 0.15


def test_recipe_overrides_smoke_caps_and_params():
    config = RobustLossConfig(benchmark="resnet20-cifar10-labelflip", lr=0.05, epochs=7)
    assert config.recipe().lr == 0.05 and config.recipe().epochs == 7 and config.recipe().batch_size == 128
    smoke = dataclasses.replace(config, scale="smoke")
    assert smoke.recipe().epochs == 2 and smoke.recipe().batch_size == 16
    params = config.params()
    assert params["model"] == "resnet20" and params["dataset"] == "cifar10" and params["loss_kind"] == "baseline"
    assert {"epochs", "batch_size", "lr", "momentum", "weight_decay", "poison_rate", "poison_seed", "crop_padding", "horizontal_flip"} <= set(params)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(benchmark="resnet50-imagenet"), r"benchmark must be one of 'resnet20-cifar10-labelflip'.*'cnn-digits-labelflip', got 'resnet50-imagenet'"),
        (dict(loss="nope"), r"loss must be .*unknown loss.*got 'nope'"),
        (dict(loss_source="print(1)"), r"loss_source must be None or a loss file's text"),
        (dict(seed=True), r"seed must be an integer, got True"),
        (dict(seed=-1), r"seed must be >= 0, got -1"),
        (dict(torch_threads=0), r"torch_threads must be >= 1, got 0"),
        (dict(scale="tiny"), r"scale must be one of 'full', 'smoke', got 'tiny'"),
        (dict(epochs=0), r"epochs must be >= 1, got 0"),
        (dict(batch_size=2.0), r"batch_size must be an integer, got 2.0"),
        (dict(lr=-0.1), r"lr must be > 0, got -0.1"),
        (dict(momentum=1.0), r"momentum must be in \[0, 1\), got 1.0"),
        (dict(weight_decay=-1), r"weight_decay must be >= 0, got -1"),
        (dict(poison_rate=1.5), r"poison_rate must be in \[0, 1\), got 1.5"),
        (dict(crop_padding=8), r"crop_padding must be in \[0, 8\), got 8"),
        (dict(horizontal_flip=1), r"horizontal_flip must be True or False, got 1"),
    ],
)
def test_config_validation_names_field_and_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RobustLossConfig(**kwargs)


# ---------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar10(root / "cifar-10-batches-py", per_batch=16, n_test=24)  # 80 train
    write_cifar100(root / "cifar-100-python", n_train=70, n_test=16)
    write_fashion_mnist(root / "FashionMNIST" / "raw", n_train=60, n_test=16)
    return str(root)


@pytest.mark.parametrize(
    "benchmark, param_count, train_size, num_poisoned",
    [
        ("resnet20-cifar10-labelflip", 272_474, 80, 8),
        ("vgg16bn-cifar100-labelflip", 15_037_092, 70, 7),
        ("mobilenetv2-fmnist-labelflip", 2_236_682, 60, 9),
    ],
)
def test_smoke_runs_of_the_research_benchmarks(data_dir, benchmark, param_count, train_size, num_poisoned):
    result = run_point(RobustLossConfig(benchmark=benchmark, loss="generalized_ce", scale="smoke", data_dir=data_dir), PointContext(device="cpu"))
    assert result.params["param_count"] == param_count
    assert result.params["train_size"] == train_size and result.params["num_poisoned"] == num_poisoned
    assert len(result.artifacts["poisoned_indices.json"]["indices"]) == num_poisoned
    assert {name: len(values) for name, values in result.histories.items()} == {"train_loss": 2, "test_acc": 2, "poison_fit": 2}
    metrics = result.metrics
    assert 0 <= metrics["test_acc"] <= 1 and 0 <= metrics["poison_fit"] <= 1
    assert metrics["robust_score"] == pytest.approx((metrics["test_acc"] + 1 - metrics["poison_fit"]) / 2)
    assert metrics["final_train_loss"] == result.histories["train_loss"][-1]


def test_digits_short_run_learns_and_records_the_poisoned_set():
    result = run_point(RobustLossConfig(epochs=6), PointContext(device="cpu"))
    assert result.metrics["test_acc"] > 0.85
    train_labels = load_digits_data().train_labels
    _, indices = next_class_flip(train_labels, 0.15, 10, seed=42)
    assert result.artifacts["poisoned_indices.json"]["indices"] == indices.tolist()
    assert result.params["eval_test_samples"] == 360 and result.params["eval_poisoned_samples"] == len(indices)


def test_smoke_digits_uses_eval_subsets_and_leaves_global_rng_and_threads_alone():
    before, threads = torch.get_rng_state(), torch.get_num_threads()
    result = run_point(RobustLossConfig(scale="smoke", torch_threads=threads + 1), PLAIN)
    assert torch.equal(torch.get_rng_state(), before) and torch.get_num_threads() == threads
    assert result.params["eval_test_samples"] == SMOKE_EVAL_SAMPLES == result.params["eval_poisoned_samples"]


class Preempted(Exception):
    pass


class MemoryHooks:
    """EpochHooks keeping the last snapshot as torch.save bytes, optionally 'preempted' after an epoch."""

    def __init__(self, saved=None, stop_after=None):
        self.saved, self.stop_after, self.epochs_seen = saved, stop_after, []

    def restore(self):
        return None if self.saved is None else torch.load(io.BytesIO(self.saved))  # weights_only: plain data

    def epoch_end(self, epoch, metrics, state):
        self.epochs_seen.append(epoch)
        buffer = io.BytesIO()
        torch.save(state(), buffer)
        self.saved = buffer.getvalue()
        if epoch == self.stop_after:
            raise Preempted


@pytest.mark.parametrize(
    "config, stop_after",
    [
        (RobustLossConfig(loss="bootstrap", epochs=3), 0),
        (RobustLossConfig(benchmark="mobilenetv2-fmnist-labelflip", scale="smoke"), 0),  # dropout: global RNG restored
        (RobustLossConfig(loss="generalized_ce", epochs=3, val_fraction=0.2), 1),
    ],
    ids=["digits", "mobilenetv2-smoke", "digits-validation-split"],
)
def test_resume_after_preemption_gives_the_uninterrupted_numbers(data_dir, config, stop_after):
    config = dataclasses.replace(config, data_dir=data_dir)
    uninterrupted = run_point(config, PLAIN)
    first = MemoryHooks(stop_after=stop_after)
    with pytest.raises(Preempted):
        run_point(config, PointContext(hooks=first))
    second = MemoryHooks(saved=first.saved)
    resumed = run_point(config, PointContext(hooks=second))
    assert second.epochs_seen == list(range(stop_after + 1, config.recipe().epochs))
    assert resumed.metrics == uninterrupted.metrics
    assert resumed.histories == uninterrupted.histories
    done = MemoryHooks(saved=second.saved)  # restored after the last epoch: nothing left to train
    assert run_point(config, PointContext(hooks=done)).metrics == uninterrupted.metrics and done.epochs_seen == []


def test_resume_refuses_a_checkpoint_of_another_config():
    hooks = MemoryHooks(stop_after=0)
    with pytest.raises(Preempted):
        run_point(RobustLossConfig(scale="smoke"), PointContext(hooks=hooks))
    with pytest.raises(ValueError, match="another configuration"):
        run_point(RobustLossConfig(scale="smoke", seed=1), PointContext(hooks=MemoryHooks(saved=hooks.saved)))


NAN_AT_EPOCH_1_BATCH_1 = """
import torch.nn.functional as F

class RobustLoss:
    def __init__(self):
        self.calls = 0

    def compute_loss(self, logits, labels, epoch):
        self.calls += 1
        loss = F.cross_entropy(logits, labels)
        return loss * float("nan") if self.calls == 4 else loss
"""


def test_non_finite_loss_names_epoch_and_batch(tmp_path):
    path = tmp_path / "nan_loss.py"
    path.write_text(NAN_AT_EPOCH_1_BATCH_1)
    with pytest.raises(FloatingPointError, match=r"nan_loss.py' is nan at epoch 1, batch 1"):
        run_point(RobustLossConfig(loss=str(path), scale="smoke"), PLAIN)


def test_user_loss_source_runs_without_the_file(tmp_path):
    path = tmp_path / "my_loss.py"
    source = textwrap.dedent(
        """
        import torch.nn.functional as F

        class RobustLoss:
            def compute_loss(self, logits, labels, epoch):
                return F.cross_entropy(logits, labels, label_smoothing=0.1)
        """
    )
    path.write_text(source)
    config = RobustLossConfig(loss=str(path), loss_source=source, scale="smoke")
    path.unlink()
    result = run_point(config, PLAIN)
    assert config.params()["loss_kind"] == "file" and len(config.params()["loss_sha256"]) == 64
    assert 0 <= result.metrics["robust_score"] <= 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_cuda_request_without_gpu_falls_back_to_cpu():
    with pytest.warns(RuntimeWarning, match="CUDA requested"):
        result = run_point(RobustLossConfig(scale="smoke"), PointContext(device="cuda"))
    assert result.params["device"] == "cpu"


def test_the_validation_split_is_seeded_disjoint_and_unlike_the_poisoned_set():
    kept, held_out = validation_split(1000, 0.2, 42)
    assert len(held_out) == 200 and len(kept) == 800 and not set(kept) & set(held_out)
    assert list(kept) == sorted(kept) and list(held_out) == sorted(held_out)
    again, _ = validation_split(1000, 0.2, 42)
    assert (again == kept).all() and not (validation_split(1000, 0.2, 43)[1] == held_out).all()
    _, poisoned = next_class_flip(np.zeros(1000, dtype=np.int64), 0.2, 10, 42)
    assert len(set(poisoned) & set(held_out)) < 100, "a stream of its own, not the poisoning's"
    assert len(validation_split(10, 0.0, 1)[1]) == 0


def test_a_validation_split_is_held_out_of_training_and_reported():
    plain = run_point(RobustLossConfig(epochs=2), PLAIN)
    assert "val_acc" not in plain.metrics and plain.params["val_size"] == 0
    held = run_point(RobustLossConfig(epochs=2, val_fraction=0.25), PLAIN)
    assert held.params["val_size"] == round(plain.params["train_size"] * 0.25)
    assert held.params["train_size"] == plain.params["train_size"] - held.params["val_size"]
    assert len(held.histories["val_acc"]) == 2 and held.metrics["val_acc"] == held.histories["val_acc"][-1]
    assert 0 < held.params["eval_poisoned_samples"] < plain.params["eval_poisoned_samples"]
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 0.5\), got 0.5"):
        RobustLossConfig(val_fraction=0.5)
