"""robust_loss study: train under next-class label-flip poisoning with a given loss, measure memorization.

A point = (benchmark, loss, seed).  The benchmark fixes model, data set,
poison rate and the training recipe (``specs/robust_loss.md``); the loss is a
baseline, a user file or ``module:Class`` (see :mod:`core.losses`).

Metrics (model in eval mode, test transforms, after the last epoch):
``test_acc`` on the clean test set, ``poison_fit`` = fraction of poisoned
training samples predicted as their poisoned label, ``robust_score =
(test_acc + 1 - poison_fit) / 2``, ``final_train_loss``.  Histories (step =
0-indexed epoch): ``train_loss``, ``test_acc``, ``poison_fit``.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core.augment import DeviceAugmenter
from core.losses import (LossContractError, LossSource, instantiate_loss, load_loss_source, loss_kind, sha256_text,
                         tunable_params)
from core.models import build_model, count_parameters
from core.poisoning import next_class_flip
from core.point import EpochHooks, PointContext, PointResult, TrainedModel, from_files
from core.training import accuracy, select_device, torch_threads, validation_split
from core.validation import Bool, Int, OneOf, Real, check_fields, check_int
from core.vision_data import DATASETS, load_dataset


@dataclass(frozen=True)
class Recipe:
    """Training recipe of a benchmark; every value can be overridden per trial."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    poison_rate: float
    poison_seed: int
    crop_padding: int
    horizontal_flip: bool


@dataclass(frozen=True)
class Benchmark:
    """A fixed harness: model, data set and default recipe."""

    name: str
    model: str
    dataset: str
    recipe: Recipe


_SPEC_RECIPE = dict(
    epochs=100, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4, poison_seed=42,
    crop_padding=4, horizontal_flip=True,
)

BENCHMARKS: dict[str, Benchmark] = {
    benchmark.name: benchmark
    for benchmark in (
        Benchmark("resnet20-cifar10-labelflip", "resnet20", "cifar10", Recipe(poison_rate=0.10, **_SPEC_RECIPE)),
        Benchmark("vgg16bn-cifar100-labelflip", "vgg16_bn", "cifar100", Recipe(poison_rate=0.10, **_SPEC_RECIPE)),
        Benchmark(
            "mobilenetv2-fmnist-labelflip", "mobilenet_v2", "fashion_mnist", Recipe(poison_rate=0.15, **_SPEC_RECIPE)
        ),
        # CPU-sized: 8x8 digits get a 1-pixel reflect-padded shift and no flip (digits are not mirror-symmetric).
        Benchmark(
            "cnn-digits-labelflip",
            "digits_cnn",
            "digits",
            Recipe(
                epochs=30, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4, poison_rate=0.15, poison_seed=42,
                crop_padding=1, horizontal_flip=False,
            ),
        ),
    )
}
DEFAULT_BENCHMARK = "cnn-digits-labelflip"

# scale="smoke": few short epochs on a few small batches, small evaluation subsets.
SMOKE_EPOCHS = 2
SMOKE_BATCH_SIZE = 16
SMOKE_TRAIN_BATCHES = 2
SMOKE_EVAL_SAMPLES = 64
EVAL_BATCH_SIZE = 512


@dataclass(frozen=True)
class RobustLossConfig:
    """One grid point.  Recipe fields left as None take the benchmark's default.

    loss:        baseline name, ``path/to/loss.py`` or ``module:Class``.
    loss_source: the loss file's text when ``loss`` is a file (carried to
                 remote nodes); None reads the file at run time.
    scale:       ``"full"`` (the recipe) or ``"smoke"`` (<= 2 epochs of <= 2
                 batches of <= 16, evaluation on <= 64 test / poisoned samples).
    data_dir:    folder of the data sets (None: ``$ROBUSTLAB_DATA``; digits need none).
    seed:        model init, shuffling and augmentation.  The poisoned set is
                 fixed by ``poison_seed`` (the spec's 42) unless overridden.
    torch_threads: intra-op threads on CPU; float reductions depend on it, so
                 it is part of the protocol (same config, same numbers).
    loss_params: the loss's hyperparameters to override, sorted ``(name, value)``
                 pairs (``--set loss.q=0.5``); the loss checks names and types.
    val_fraction: share of the (poisoned) training set held out as a
                 validation split (:func:`core.training.validation_split`,
                 drawn from ``poison_seed``: the same samples for every point
                 of a benchmark); its labels are poisoned like the rest, as a
                 user's would be. 0 (the published protocol): none.
    """

    benchmark: str = DEFAULT_BENCHMARK
    loss: str = "cross_entropy"
    seed: int = 42
    scale: str = "full"
    data_dir: str | None = None
    loss_source: str | None = None
    torch_threads: int = 1
    val_fraction: float = 0.0
    loss_params: tuple[tuple[str, bool | int | float], ...] = ()
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    poison_rate: float | None = None
    poison_seed: int | None = None
    crop_padding: int | None = None
    horizontal_flip: bool | None = None

    RULES = {"benchmark": OneOf(*BENCHMARKS), "seed": Int(0), "scale": OneOf("full", "smoke"),
             "torch_threads": Int(1), "val_fraction": Real(0, 0.5, high_open=True),
             # recipe overrides; None means the benchmark's default
             "epochs": Int(1, optional=True), "batch_size": Int(1, optional=True),
             "lr": Real(0, low_open=True, optional=True), "momentum": Real(0, 1, high_open=True, optional=True),
             "weight_decay": Real(0, optional=True), "poison_rate": Real(0, 1, high_open=True, optional=True),
             "poison_seed": Int(0, optional=True), "crop_padding": Int(0, optional=True),
             "horizontal_flip": Bool(optional=True)}

    def __post_init__(self) -> None:
        check_fields(self)
        if not isinstance(self.loss, str) or not self.loss:
            raise ValueError(f"loss must be a non-empty string, got {self.loss!r}")
        try:
            kind = loss_kind(self.loss)
        except LossContractError as error:
            raise ValueError(f"loss must be a baseline, a file or module:Class ({error}), got {self.loss!r}") from None
        if self.loss_source is not None and (kind != "file" or not isinstance(self.loss_source, str)):
            shown = f"<{len(self.loss_source)} characters>" if isinstance(self.loss_source, str) else self.loss_source
            raise ValueError(f"loss_source must be None or a loss file's text (with loss = its path), got {shown}")
        pairs = self.loss_params
        if not isinstance(pairs, tuple) or any(not (isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
                                                    and isinstance(p[1], (bool, int, float))) for p in pairs):
            raise ValueError(f"loss_params must be a tuple of (name, number) pairs, got {pairs!r}")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise ValueError(f"data_dir must be None or a path, got {self.data_dir!r}")
        if self.crop_padding is not None:  # below the image's side, which depends on the benchmark
            check_int("crop_padding", self.crop_padding, 0, min(self.image_shape()[1:]), high_open=True)

    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the benchmark's images."""
        return DATASETS[BENCHMARKS[self.benchmark].dataset].image_shape

    def recipe(self) -> Recipe:
        """The fully resolved recipe: overrides, else benchmark defaults, then the smoke caps."""
        default = BENCHMARKS[self.benchmark].recipe
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(Recipe)}
        resolved = dataclasses.replace(default, **{k: v for k, v in values.items() if v is not None})
        if self.scale == "smoke":
            resolved = dataclasses.replace(
                resolved,
                epochs=min(resolved.epochs, SMOKE_EPOCHS),
                batch_size=min(resolved.batch_size, SMOKE_BATCH_SIZE),
            )
        return resolved

    def loss_spec(self) -> LossSource:
        """The loss to build: from ``loss_source`` when carried, else resolved from ``loss`` here."""
        if self.loss_source is not None:
            source = self.loss_source
            return LossSource(kind="file", spec=self.loss, source=source, sha256=sha256_text(source))
        return load_loss_source(self.loss)

    def params(self) -> dict[str, Any]:
        """Flat, fully resolved values to log as params (the loss file's SHA-256, not its text)."""
        benchmark = BENCHMARKS[self.benchmark]
        params: dict[str, Any] = {
            "benchmark": self.benchmark,
            "model": benchmark.model,
            "dataset": benchmark.dataset,
            "loss": self.loss,
            "loss_kind": loss_kind(self.loss),
            "seed": self.seed,
            "scale": self.scale,
            "torch_threads": self.torch_threads,
            "val_fraction": self.val_fraction,
            **dataclasses.asdict(self.recipe()),
        }
        if self.loss_source is not None:
            params["loss_sha256"] = sha256_text(self.loss_source)
        params.update({f"loss.{name}": value for name, value in self.loss_params})
        if self.scale == "smoke":
            params.update(smoke_train_batches=SMOKE_TRAIN_BATCHES, smoke_eval_samples=SMOKE_EVAL_SAMPLES)
        return params


def _cpu_copy(value: Any) -> Any:
    """Deep copy with every tensor detached and cloned to CPU (a snapshot independent of training)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _cpu_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_copy(item) for item in value)
    return copy.deepcopy(value)


@torch.no_grad()
def _predict(
    model: torch.nn.Module, augmenter: DeviceAugmenter, images: torch.Tensor, indices: torch.Tensor
) -> torch.Tensor:
    """Arg-max predictions for ``images[indices]`` under the test transform (call with the model in eval mode)."""
    if len(indices) == 0:
        return indices.new_empty(0)
    chunks = indices.split(EVAL_BATCH_SIZE)
    return torch.cat([model(augmenter.test_batch(images, chunk)).argmax(dim=1) for chunk in chunks])


def poison_fit(predictions: torch.Tensor, poisoned_labels: torch.Tensor) -> float:
    """Fraction of poisoned samples predicted as their poisoned label (0.0 when there are none)."""
    return accuracy(predictions, poisoned_labels)


def robust_score(test_acc: float, poison_fit_value: float) -> float:
    """``(test_acc + 1 - poison_fit) / 2``."""
    return (test_acc + 1.0 - poison_fit_value) / 2.0


def run_point(config: RobustLossConfig, context: PointContext) -> PointResult:
    """Poison, train with the configured loss, evaluate after every epoch; see the module docstring.

    A state returned by ``context.hooks.restore()`` resumes after its epoch
    and gives exactly the numbers of an uninterrupted run (on the CPU);
    ``context.hooks.epoch_end`` receives each epoch's metrics and a snapshot
    builder.  Runs on ``context.device`` with ``config.torch_threads``
    threads; the caller's global torch RNG and thread count are left untouched.
    """
    device = select_device(context.device)
    cuda_devices = [device.index] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices), torch_threads(config.torch_threads):
        return _run(config, context.hooks, device)


def _run(config: RobustLossConfig, hooks: EpochHooks, device: torch.device) -> PointResult:
    benchmark = BENCHMARKS[config.benchmark]
    recipe = config.recipe()
    info = DATASETS[benchmark.dataset]
    smoke = config.scale == "smoke"
    loss_source = config.loss_spec()
    loss = instantiate_loss(loss_source, dict(config.loss_params))
    hyperparameters = {f"loss.{k}": getattr(loss, k) for k in tunable_params(type(loss))}

    data = load_dataset(benchmark.dataset, config.data_dir)
    poisoned_labels, poisoned_indices = next_class_flip(
        data.train_labels, recipe.poison_rate, data.num_classes, recipe.poison_seed
    )

    torch.manual_seed(config.seed)
    model = build_model(benchmark.model, num_classes=data.num_classes).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs, eta_min=0.0)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)
    augmenter = DeviceAugmenter(info.mean, info.std, recipe.crop_padding, recipe.horizontal_flip, device)

    images, labels, poisoned_positions = data.train_images, poisoned_labels, poisoned_indices
    val = None
    if config.val_fraction > 0:  # held out from training, poisoned labels and all
        kept, held_out = validation_split(len(labels), config.val_fraction, recipe.poison_seed)
        val = (torch.from_numpy(images[held_out]).to(device), torch.from_numpy(labels[held_out]).to(device))
        poisoned_positions = np.searchsorted(kept, poisoned_indices[np.isin(poisoned_indices, kept)])
        images, labels = images[kept], labels[kept]
    train_images = torch.from_numpy(images).to(device)
    train_labels = torch.from_numpy(labels).to(device)
    test_images = torch.from_numpy(data.test_images).to(device)
    test_labels = torch.from_numpy(data.test_labels).to(device)
    test_eval = torch.arange(len(test_labels), device=device)
    poison_eval = torch.from_numpy(poisoned_positions).to(device)
    val_eval = torch.arange(len(val[1]), device=device) if val is not None else None
    if smoke:
        test_eval, poison_eval = test_eval[:SMOKE_EVAL_SAMPLES], poison_eval[:SMOKE_EVAL_SAMPLES]
        val_eval = val_eval[:SMOKE_EVAL_SAMPLES] if val is not None else None
    max_batches = SMOKE_TRAIN_BATCHES if smoke else None

    params = config.params()
    histories: dict[str, list[float]] = {"train_loss": [], "test_acc": [], "poison_fit": []}
    if val is not None:
        histories["val_acc"] = []
    start_epoch = 0
    state = hooks.restore()
    if state is not None:
        if state["params"] != params:
            raise ValueError(f"checkpoint belongs to another configuration: {state['params']} != {params}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state["cuda_rng"] is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        histories = copy.deepcopy(state["histories"])
        start_epoch = state["epoch"] + 1

    for epoch in range(start_epoch, recipe.epochs):
        train_loss = _train_epoch(
            model, optimizer, loss, loss_source.spec, augmenter, generator, train_images, train_labels,
            recipe.batch_size, epoch, max_batches,
        )
        scheduler.step()
        model.eval()
        test_acc = accuracy(_predict(model, augmenter, test_images, test_eval), test_labels[test_eval])
        fit = poison_fit(_predict(model, augmenter, train_images, poison_eval), train_labels[poison_eval])
        measured = {"train_loss": train_loss, "test_acc": test_acc, "poison_fit": fit}
        if val is not None:
            measured["val_acc"] = accuracy(_predict(model, augmenter, val[0], val_eval), val[1][val_eval])
        for name, value in measured.items():
            histories[name].append(value)

        def snapshot(epoch: int = epoch) -> dict[str, Any]:
            return _cpu_copy(
                {
                    "epoch": epoch,
                    "params": params,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "histories": histories,
                }
            )

        hooks.epoch_end(epoch, {**measured, "robust_score": robust_score(test_acc, fit)}, snapshot)

    test_acc, fit = histories["test_acc"][-1], histories["poison_fit"][-1]
    result = PointResult(
        metrics={
            "test_acc": test_acc,
            "poison_fit": fit,
            "robust_score": robust_score(test_acc, fit),
            "final_train_loss": histories["train_loss"][-1],
            **({"val_acc": histories["val_acc"][-1]} if val is not None else {}),
        },
        histories=histories,
        params={
            "param_count": count_parameters(model),
            "train_size": len(train_labels),
            "test_size": len(test_labels),
            "num_poisoned": len(poisoned_indices),
            "eval_test_samples": len(test_eval),
            "eval_poisoned_samples": len(poison_eval),
            "val_size": 0 if val is None else len(val[1]),
            **hyperparameters,
            "device": str(device),
        },
        artifacts={
            "poisoned_indices.json": {
                "benchmark": config.benchmark,
                "dataset": benchmark.dataset,
                "poison_rate": recipe.poison_rate,
                "poison_seed": recipe.poison_seed,
                "rule": "label -> (label + 1) % num_classes",
                "num_classes": data.num_classes,
                "indices": poisoned_indices.tolist(),
            }
        },
        model=TrainedModel(benchmark.model, {"num_classes": data.num_classes}, model,
                           augmenter.test_batch(test_images, test_eval[:2])),  # what the model takes: normalised
        datasets=(from_files(data.name, data.source, data.files,
                             "local" if benchmark.dataset != "digits" else "code"),),
    )
    result.check_finite()
    return result


def _train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: Any,
    loss_name: str,
    augmenter: DeviceAugmenter,
    generator: torch.Generator,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    epoch: int,
    max_batches: int | None,
) -> float:
    """One pass over a seeded permutation; returns the sample-weighted mean loss.

    Losses stay on the device during the epoch (no per-batch host sync); a
    non-finite one raises ``FloatingPointError`` naming its epoch and batch.
    """
    model.train()
    batches = torch.randperm(len(labels), generator=generator, device=images.device).split(batch_size)[:max_batches]
    batch_losses, batch_sizes = [], []
    for indices in batches:
        logits = model(augmenter.train_batch(images, indices, generator))
        value = loss.compute_loss(logits, labels[indices], epoch)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        batch_losses.append(value.detach().float().reshape(()))
        batch_sizes.append(len(indices))
    losses = torch.stack(batch_losses)
    finite = torch.isfinite(losses)
    if not bool(finite.all()):
        batch = int((~finite).nonzero()[0, 0])
        raise FloatingPointError(f"loss {loss_name!r} is {losses[batch].item()} at epoch {epoch}, batch {batch}")
    sizes = torch.tensor(batch_sizes, dtype=losses.dtype, device=losses.device)
    return ((losses * sizes).sum() / sizes.sum()).item()
