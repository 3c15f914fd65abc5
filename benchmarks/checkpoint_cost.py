"""What a checkpoint costs against the training it protects, per research model of robust_loss, in one run.

For each model (ResNet-20/CIFAR-10, VGG-16-BN/CIFAR-100, MobileNetV2/FashionMNIST) with its recipe's batch
size and SGD with momentum (so the optimizer state is as large as in training):

* seconds per training batch (the harness's own augmentation, forward, backward, step; random images of the
  data set's shape), hence a smoke-scale epoch (``SMOKE_TRAIN_BATCHES`` batches of ``SMOKE_BATCH_SIZE``) and a
  full epoch (ceil(train size / batch size) batches at the recipe's batch size);
* seconds per checkpoint exactly as a launch takes one: the snapshot copied off the model, ``torch.save`` to a
  file, and the upload into the point's MLflow run on a local tracking server (HTTP, proxied artifacts);

then the checkpoint's share of an epoch and the ``--checkpoint-every`` that keeps it <= 5 % (what ``auto``
converges to on this machine).

    python benchmarks/checkpoint_cost.py                 # 3 timed batches per model, 1 torch thread
    python benchmarks/checkpoint_cost.py --batches 5 --threads 2
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from core.augment import DeviceAugmenter  # noqa: E402
from core.models import build_model, count_parameters  # noqa: E402
from core.studies.robust_loss import BENCHMARKS, SMOKE_BATCH_SIZE, SMOKE_TRAIN_BATCHES, _cpu_copy  # noqa: E402
from core.vision_data import DATASETS  # noqa: E402

MODELS = ("resnet20-cifar10-labelflip", "vgg16bn-cifar100-labelflip", "mobilenetv2-fmnist-labelflip")
TRAIN_SIZE = {"cifar10": 50_000, "cifar100": 50_000, "fashion_mnist": 60_000}
SHARE = 0.05


def batch_seconds(model, optimizer, augmenter, images, batch_size: int, batches: int) -> float:
    """Median seconds of one training step at ``batch_size`` (after one untimed step)."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, model_classes(model), (len(images),), generator=generator)
    times = []
    model.train()
    for step in range(batches + 1):
        started = time.perf_counter()
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        loss = F.cross_entropy(model(augmenter.train_batch(images, index, generator)), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def model_classes(model) -> int:
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].out_features


def checkpoint_seconds(writer, run_id: str, model, optimizer, repeats: int) -> tuple[float, float, int]:
    """Median seconds to snapshot + save, and to upload, one checkpoint; its size in bytes."""
    saves, uploads = [], []
    for repeat in range(repeats):
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "point_state.pt")
            started = time.perf_counter()
            state = _cpu_copy({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "torch_rng": torch.get_rng_state()})
            torch.save({"point": "benchmark", "run_id": run_id, "state": state}, path)
            saved = time.perf_counter()
            writer.save_checkpoint(run_id, path, "ab"[repeat % 2], repeat)
            saves.append(saved - started)
            uploads.append(time.perf_counter() - saved)
            size = os.path.getsize(path)
    return statistics.median(saves), statistics.median(uploads), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=3, help="timed training batches per size (default: 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed checkpoints per model (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, the study's default)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from mlflow.tracking import MlflowClient

    from record.write import SweepWriter
    from tune_jobs.tracking_server import TrackingServer, port_is_free

    port = next(p for p in range(5600, 5700) if port_is_free("127.0.0.1", p))
    with tempfile.TemporaryDirectory() as work, TrackingServer(
            f"sqlite:///{work}/server.db", f"{work}/artifacts", port=port, log_file=Path(work) / "server.log") as server:
        client = MlflowClient(server.uri)
        experiment_id = client.create_experiment("checkpoint-cost")
        rows = []
        for name in MODELS:
            benchmark = BENCHMARKS[name]
            info, recipe = DATASETS[benchmark.dataset], benchmark.recipe
            torch.manual_seed(0)
            model = build_model(benchmark.model, num_classes=info.num_classes)
            optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                        weight_decay=recipe.weight_decay)
            augmenter = DeviceAugmenter(info.mean, info.std, recipe.crop_padding, recipe.horizontal_flip,
                                        torch.device("cpu"))
            images = torch.randint(0, 256, (512, *info.image_shape), dtype=torch.uint8)
            smoke_batch = batch_seconds(model, optimizer, augmenter, images, SMOKE_BATCH_SIZE, args.batches)
            full_batch = batch_seconds(model, optimizer, augmenter, images, recipe.batch_size, args.batches)
            run_id = client.create_run(experiment_id, run_name=name).info.run_id
            save, upload, size = checkpoint_seconds(SweepWriter(server.uri, experiment_id, "", "robust_loss"), run_id,
                                                    model, optimizer, args.repeats)
            smoke_epoch = smoke_batch * SMOKE_TRAIN_BATCHES
            full_epoch = full_batch * math.ceil(TRAIN_SIZE[benchmark.dataset] / recipe.batch_size)
            cost = save + upload
            rows.append((benchmark.model, count_parameters(model), size / 2**20, save, upload, smoke_epoch,
                         full_epoch, cost / smoke_epoch, cost / full_epoch, math.ceil(cost / (SHARE * full_epoch))))
            print(f"{name}: done", file=sys.stderr, flush=True)

    print(f"\ncheckpoint cost vs epoch, torch threads {args.threads}, upload to a local tracking server "
          f"(HTTP, proxied artifacts); medians of {args.batches} batches and {args.repeats} checkpoints\n")
    print("| model | params | checkpoint MB | save s | upload s | smoke epoch s | full epoch s (est.) "
          "| ckpt / smoke epoch | ckpt / full epoch | epochs per ckpt for <= 5 % |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model, params, mb, save, upload, smoke, full, r_smoke, r_full, every in rows:
        print(f"| {model} | {params:,} | {mb:.1f} | {save:.2f} | {upload:.2f} | {smoke:.2f} | {full:.0f} "
              f"| {r_smoke:.2f} | {r_full:.4f} | {every} |")


if __name__ == "__main__":
    main()
