"""Input-pipeline throughput of the robust_loss harness vs a plain DataLoader, training the same model.

Harness: the data set is one uint8 tensor on the device; each batch is cropped
(reflect padding 4), flipped and normalized there, vectorized over the batch
(``core.augment``).  Baseline: ``torch.utils.data.DataLoader`` over a Dataset
whose per-image transform does what torchvision's ``ToTensor``,
``RandomCrop(32, padding=4, padding_mode="reflect")``,
``RandomHorizontalFlip`` and ``Normalize`` do, collated per batch.

Each variant feeds its own copy of the same model (same init) through SGD.
Over ``--rounds`` rounds (rotating order) every variant runs one block: a
fresh pipeline, ``--warmup`` untimed steps, ``--steps`` timed training steps
(then a second block without the model: pipeline only).  DataLoader workers
live only inside their block, so nothing runs behind another variant's back.
Reported: median images/s per variant, and the median over rounds of the
harness / DataLoader ratio within a round (load from other processes on a
shared machine hits both sides of a pair alike).  Data: random CIFAR-shaped
images, or CIFAR-10 from ``--data-dir``.

    python benchmarks/robust_loss.py                       # resnet20, 1 thread, workers 0 and 2
    python benchmarks/robust_loss.py --threads 2 --workers 0 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from core.augment import DeviceAugmenter
from core.models import build_model
from core.training import select_device
from core.vision_data import DATASETS, load_cifar

CIFAR10 = DATASETS["cifar10"]


class PerImageCifar(torch.utils.data.Dataset):
    """HWC uint8 images (torchvision's CIFAR layout) with a per-image train transform."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray) -> None:
        self.images = images_hwc
        self.labels = labels
        self.mean = torch.tensor(CIFAR10.mean).view(3, 1, 1)
        self.std = torch.tensor(CIFAR10.std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.images[index]).permute(2, 0, 1).float().div(255.0)  # ToTensor
        padded = F.pad(image, (4, 4, 4, 4), mode="reflect")  # RandomCrop(32, padding=4, reflect)
        top, left = torch.randint(0, 9, (2,)).tolist()
        image = padded[:, top : top + 32, left : left + 32]
        if torch.rand(1).item() < 0.5:  # RandomHorizontalFlip
            image = image.flip(-1)
        return (image - self.mean) / self.std, int(self.labels[index])  # Normalize


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _harness_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device):
    augmenter = DeviceAugmenter(CIFAR10.mean, CIFAR10.std, 4, True, device)
    generator = torch.Generator(device=device).manual_seed(0)
    while True:
        for indices in torch.randperm(len(labels), generator=generator, device=device).split(batch_size):
            if len(indices) == batch_size:
                yield augmenter.train_batch(images, indices, generator), labels[indices]


def _loader_batches(dataset: PerImageCifar, batch_size: int, workers: int, device: torch.device):
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    while True:
        for inputs, targets in loader:
            yield inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)


class Variant:
    """One input pipeline feeding its own copy of the model (same init) through SGD."""

    def __init__(self, name: str, make_batches, model: torch.nn.Module) -> None:
        self.name = name
        self.make_batches = make_batches
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        self.images_per_second: dict[str, list[float]] = {"train": [], "pipeline": []}

    def block(self, kind: str, warmup: int, steps: int, batch_size: int, device: torch.device) -> float:
        """A fresh pipeline (DataLoader workers start and stop inside the block): ``warmup`` untimed
        steps, then ``steps`` timed ones (with an SGD step when ``kind == "train"``); returns images/s."""
        batches = self.make_batches()
        for step in range(warmup + steps):
            if step == warmup:
                _sync(device)
                start = time.perf_counter()
            inputs, targets = next(batches)
            if kind == "train":
                loss = F.cross_entropy(self.model(inputs), targets)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        _sync(device)
        rate = steps * batch_size / (time.perf_counter() - start)
        batches.close()  # shuts DataLoader workers down: nothing runs in the background of the next block
        self.images_per_second[kind].append(rate)
        return rate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="resnet20", help="registered 3x32x32 model (default resnet20)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of one block per variant (default 6)")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per block (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps opening each block (default 2)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[0, 2], help="DataLoader num_workers values to compare (default 0 2)"
    )
    parser.add_argument("--num-images", type=int, default=10_000, help="random CIFAR-shaped images when no --data-dir")
    parser.add_argument("--data-dir", help="folder holding cifar-10-batches-py (real CIFAR-10 train set)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (default 1, the study's torch_threads default; steadier on a shared box)",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    if args.data_dir:
        data = load_cifar("cifar10", args.data_dir)
        images_chw, labels = data.train_images, data.train_labels
    else:
        rng = np.random.RandomState(0)
        images_chw = rng.randint(0, 256, size=(args.num_images, 3, 32, 32)).astype(np.uint8)
        labels = rng.randint(0, 10, size=args.num_images).astype(np.int64)
    torch.manual_seed(0)
    initial_model = build_model(args.model, num_classes=10).to(device).train()
    dataset = PerImageCifar(np.ascontiguousarray(images_chw.transpose(0, 2, 3, 1)), labels)
    device_images = torch.from_numpy(images_chw).to(device)
    device_labels = torch.from_numpy(labels).to(device)
    harness = Variant(
        "harness (device uint8 + batched augment)",
        lambda: _harness_batches(device_images, device_labels, args.batch_size, device),
        copy.deepcopy(initial_model),
    )
    loaders = [
        Variant(
            f"DataLoader + per-image transforms, workers={workers}",
            lambda workers=workers: _loader_batches(dataset, args.batch_size, workers, device),
            copy.deepcopy(initial_model),
        )
        for workers in args.workers
    ]
    variants = [harness, *loaders]
    print(
        f"model {args.model}, device {device}, batch {args.batch_size}, {len(labels)} images, "
        f"torch threads {torch.get_num_threads()}; {args.rounds} rounds x {args.steps} timed steps per variant"
    )
    # Rounds rotate the order; each loader block is paired with the harness block of the same round,
    # and the median of these paired ratios is the headline (other load on the machine hits both alike).
    paired: dict[str, dict[str, list[float]]] = {loader.name: {"train": [], "pipeline": []} for loader in loaders}
    for round_index in range(args.rounds):
        shift = round_index % len(variants)
        for kind in ("train", "pipeline"):
            order = variants[shift:] + variants[:shift]
            rates = {v.name: v.block(kind, args.warmup, args.steps, args.batch_size, device) for v in order}
            for loader in loaders:
                paired[loader.name][kind].append(rates[harness.name] / rates[loader.name])

    print(f"{'median images/s over rounds':52s} {'training':>10s} {'pipeline only':>14s}")
    for variant in variants:
        rates = variant.images_per_second
        train, pipeline = statistics.median(rates["train"]), statistics.median(rates["pipeline"])
        print(f"{variant.name:52s} {train:10.1f} {pipeline:14.1f}")
    for loader in loaders:
        train, pipeline = paired[loader.name]["train"], paired[loader.name]["pipeline"]
        print(
            f"ratio harness / {loader.name.split(', ')[-1]} (median of paired rounds; min-max): "
            f"training {statistics.median(train):.3f}x ({min(train):.2f}-{max(train):.2f}), "
            f"pipeline only {statistics.median(pipeline):.1f}x ({min(pipeline):.1f}-{max(pipeline):.1f})"
        )


if __name__ == "__main__":
    main()
