"""A GPU check, ready to run on one GPU in under 8 minutes: the launcher against plain PyTorch, and packing.

Data: CIFAR-10 in its real on-disk format (the python pickles), written on the fly by the test suite's writer
(``tests/vision_fixtures.py``; random images, 10 classes). Then, side by side:

1. a ResNet-20 robust_loss point (cross-entropy, the recipe's batch size, 128) through the launcher
   (``python -m tune_jobs robust_loss``: local Ray, MLflow on SQLite, ``--system-metrics 1``) against the same
   epochs in a plain PyTorch loop in this process (same model, optimizer, augmentation and batch size):
   images/s of each and the ratio. The launcher's figure is the point's own MLflow run (its start to its end,
   so Ray's start-up is not counted; its evaluations each epoch are);
2. 4 points packed on one GPU (``--gpus-per-trial 0.25``) against the same 4 one at a time
   (``--gpus-per-trial 1``; the first figure's launcher runs are these): wall seconds of the points (first
   start to last end) and images/s in all;
3. GPU utilization and memory from MLflow's system metrics (``system/gpu_*``) of those runs: mean and peak.

It picks CUDA when present. ``--tiny`` runs the same steps on the CPU at toy size in well under a minute
(the test suite runs it: ``tests/test_gpu_check.py``) with 2 points instead of 4; on the CPU, packing means
the trials sharing the cores (``--cpus-per-trial`` a share of them) against one trial with every core.

    python benchmarks/gpu_check.py                  # GPU: 10,000 training images, 5 epochs per point
    python benchmarks/gpu_check.py --tiny           # CPU: 40 images, 1 epoch, batch 8, 2 points
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

BENCHMARK = "resnet20-cifar10-labelflip"


def write_data(folder: Path, per_batch: int, n_test: int) -> int:
    """CIFAR-10's files under ``folder/cifar-10-batches-py``; the number of training images."""
    from vision_fixtures import write_cifar10

    write_cifar10(folder / "cifar-10-batches-py", per_batch=per_batch, n_test=n_test)
    return 5 * per_batch


def launch(folder: Path, name: str, seeds: list[int], flags: list[str]) -> tuple[float, str]:
    """Run the launcher in a fresh process; its wall seconds and the experiment it wrote."""
    command = [sys.executable, "-m", "tune_jobs", "robust_loss", "--grid", f"benchmark={BENCHMARK}",
               "--grid", "loss=cross_entropy", "--grid", "seed=" + ",".join(map(str, seeds)),
               "--data-dir", str(folder), "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}",
               "--storage-path", str(folder / "ray"), "--experiment", name, "--system-metrics", "1",
               "--points-per-trial", "1", "--no-log-models", *flags]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return time.perf_counter() - started, name


def point_runs(folder: Path, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    from record import schema
    from record.runs import search_all_runs

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    runs = search_all_runs(client, [found.experiment_id], schema.POINT_FILTER)
    assert runs and all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    return runs


def system_metrics(folder: Path, runs: list, prefix: str) -> dict[str, tuple[float, float]]:
    """Mean and peak of each ``system/`` metric starting with ``prefix`` over the runs' samples."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    samples: dict[str, list[float]] = {}
    for run in runs:
        for key in run.data.metrics:
            if key.startswith(prefix):
                samples.setdefault(key, []).extend(m.value for m in client.get_metric_history(run.info.run_id, key))
    return {key: (statistics.fmean(values), max(values)) for key, values in sorted(samples.items()) if values}


def seconds_of(runs: list) -> tuple[float, float]:
    """Mean seconds of a run (start to end), and the span from the first start to the last end."""
    mean = statistics.fmean((r.info.end_time - r.info.start_time) / 1000 for r in runs)
    span = (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000
    return mean, span


def plain_loop(folder: Path, epochs: int, batch_size: int, device) -> float:
    """Seconds of ``epochs`` epochs of ResNet-20 in a plain PyTorch loop (the recipe's SGD and augmentation), with a
    test-set evaluation after each epoch as the point does."""
    import torch
    import torch.nn.functional as F

    from core.augment import DeviceAugmenter
    from core.models import build_model
    from core.studies.robust_loss import BENCHMARKS
    from core.vision_data import DATASETS, load_dataset

    recipe, info = BENCHMARKS[BENCHMARK].recipe, DATASETS["cifar10"]
    data = load_dataset("cifar10", str(folder))
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    augmenter = DeviceAugmenter(info.mean, info.std, recipe.crop_padding, recipe.horizontal_flip, device)
    images, labels = torch.from_numpy(data.train_images).to(device), torch.from_numpy(data.train_labels).to(device)
    test_images = torch.from_numpy(data.test_images).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for index in torch.randperm(len(labels), generator=generator, device=device).split(batch_size):
            loss = F.cross_entropy(model(augmenter.train_batch(images, index, generator)), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for index in torch.arange(len(test_images), device=device).split(1000):
                model(augmenter.test_batch(test_images, index)).argmax(1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the CPU setting at toy size (seconds)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per point (default: 5; --tiny 1)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the data and the store in this folder")
    args = parser.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    from core.studies.robust_loss import BENCHMARKS

    recipe_batch = BENCHMARKS[BENCHMARK].recipe.batch_size
    per_batch, n_test, batch_size = (8, 16, 8) if args.tiny else (2000, 1000, recipe_batch)
    epochs = args.epochs or (1 if args.tiny else 5)
    n_points = 2 if args.tiny else 4
    seeds = list(range(1, n_points + 1))
    cores = os.cpu_count() or 1
    if cuda:
        alone, packed = ["--gpus-per-trial", "1"], ["--gpus-per-trial", "0.25"]
        where = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    else:
        alone, packed = ["--cpus-per-trial", str(cores)], ["--cpus-per-trial", f"{cores / n_points:g}"]
        where = f"CPU ({cores} cores), torch {torch.__version__}"
    common = ["--set", f"epochs={epochs}", "--set", f"batch_size={batch_size}"]
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        n_train = write_data(folder, per_batch, n_test)
        print(f"gpu_check on {where}: ResNet-20, CIFAR-10 format, {n_train} training / {n_test} test images, "
              f"{epochs} epoch(s) per point, batch {batch_size}", flush=True)
        started = time.perf_counter()
        plain_s = plain_loop(folder, epochs, batch_size, device)
        wall_alone, _ = launch(folder, "one-at-a-time", seeds, [*common, *alone])
        wall_packed, _ = launch(folder, "packed", seeds, [*common, *packed])
        alone_runs, packed_runs = point_runs(folder, "one-at-a-time"), point_runs(folder, "packed")
        point_s, alone_span = seconds_of(alone_runs)
        _, packed_span = seconds_of(packed_runs)
        images = epochs * n_train
        print(f"\n1. one point         images/s   seconds")
        print(f"   plain PyTorch     {images / plain_s:9.0f}   {plain_s:7.2f}")
        print(f"   launcher (run)    {images / point_s:9.0f}   {point_s:7.2f}   "
              f"(mean of {n_points} points' MLflow runs)")
        print(f"   ratio launcher/plain: {plain_s / point_s:.2f} of plain's images/s")
        print(f"\n2. {n_points} points          images/s   seconds (first start to last end; launch wall)")
        print(f"   one at a time     {n_points * images / alone_span:9.0f}   {alone_span:7.2f}; {wall_alone:6.1f}   "
              f"({' '.join(alone)})")
        print(f"   packed            {n_points * images / packed_span:9.0f}   {packed_span:7.2f}; {wall_packed:6.1f}   "
              f"({' '.join(packed)})")
        print(f"   packing speed-up: {alone_span / packed_span:.2f}x")
        prefix = "system/gpu" if cuda else "system/cpu_utilization"
        print(f"\n3. system metrics ({prefix}*)      one at a time: mean / peak      packed: mean / peak")
        one, four = system_metrics(folder, alone_runs, prefix), system_metrics(folder, packed_runs, prefix)
        if not one and not four:
            print("   (none recorded: no samples within these points' runs)")
        for key in sorted(set(one) | set(four)):
            a, b = one.get(key, (float("nan"),) * 2), four.get(key, (float("nan"),) * 2)
            print(f"   {key:44s} {a[0]:8.1f} / {a[1]:8.1f}      {b[0]:8.1f} / {b[1]:8.1f}")
        print(f"\ngpu_check done in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
