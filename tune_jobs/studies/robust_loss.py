"""The poison-robust loss benchmark: ``python -m tune_jobs robust_loss --help``.

Grid: benchmark x loss x seed. A loss is a baseline name, a file
``path/to/my_loss.py`` or ``module:Class`` holding a ``RobustLoss`` class
(``compute_loss(logits, labels, epoch)`` -> scalar tensor). User loss files are
code and run as such: they are loaded only from the paths you give.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from analysis.robust_loss import ANALYSIS
from core.losses import BASELINE_LOSSES, check_loss
from core.studies.robust_loss import BENCHMARKS, DEFAULT_BENCHMARK, RobustLossConfig, run_point
from core.vision_data import (DATA_DIR_ENV, DATASETS, DOWNLOAD_HINT, DOWNLOADS, DatasetError, download_dataset,
                              load_dataset)
from tune_jobs.study import Option, Study


def prepare(points: list[RobustLossConfig], switches: dict[str, Any]) -> list[RobustLossConfig]:
    """Before Ray starts: fix the data folder, fetch data if asked, check it loads, probe every loss once.

    A loss file's text is put into the configs, so it travels with the trial
    to any node; a bad loss, a missing folder or a corrupt file is a
    ``ValueError`` (exit status 2) naming what is wrong.
    """
    data_dirs = {p.data_dir or os.environ.get(DATA_DIR_ENV) for p in points}
    resolved = {d: os.path.abspath(os.path.expanduser(d)) if d else None for d in data_dirs}
    prepared = []
    for point in points:
        data_dir = resolved[point.data_dir or os.environ.get(DATA_DIR_ENV)]
        prepared.append(dataclasses.replace(point, data_dir=data_dir))
    needed = {(BENCHMARKS[p.benchmark].dataset, p.data_dir) for p in prepared}
    for dataset, data_dir in sorted(needed, key=str):
        try:
            if switches.get("download") and dataset in DOWNLOADS:
                print(f"downloading {dataset} into {data_dir} (checksums verified) ...", flush=True)
                download_dataset(dataset, data_dir)
            load_dataset(dataset, data_dir)
        except DatasetError as error:
            flags = " (pass --data-dir DIR for another folder" + (
                f", and --download to fetch {dataset} into it, checksums verified)" if dataset in DOWNLOADS
                and not switches.get("download") else ")")
            raise ValueError(str(error).replace(DOWNLOAD_HINT, flags)) from None
    sources = {}
    for point in prepared:
        key = (point.loss, DATASETS[BENCHMARKS[point.benchmark].dataset].num_classes, point.loss_params)
        if key not in sources:
            sources[key] = check_loss(point.loss, num_classes=key[1], params=dict(point.loss_params))
    return [dataclasses.replace(p, loss_source=sources[(p.loss, DATASETS[BENCHMARKS[p.benchmark].dataset].num_classes,
                                                        p.loss_params)].source) for p in prepared]


STUDY = Study(
    name="robust_loss",
    description="Poison-robust loss benchmark (protocol: docs/robust_loss.md): benchmark x loss x seed; each child "
                "run logs test_acc, poison_fit, robust_score and their per-epoch histories and its trained model; "
                "checkpoints live in the run while it trains. Benchmarks: " + ", ".join(BENCHMARKS) + ".\n"
                "A loss is a baseline (" + ", ".join(BASELINE_LOSSES) + "), a file path/to/my_loss.py or "
                "module:Class holding a RobustLoss class; user loss files are code and run as such.",
    config_type=RobustLossConfig,
    grid={
        "benchmark": (DEFAULT_BENCHMARK,),
        "loss": tuple(BASELINE_LOSSES),
        "seed": (42, 123, 7),
    },
    run_point=run_point,
    short_names={"benchmark": "bench", "seed": "s"},
    analysis=ANALYSIS,
    metrics=("test_acc", "poison_fit", "robust_score", "final_train_loss"),
    checkpoints=True,
    log_models=True,
    system_metrics=10.0,
    unlogged_fields=("loss_source", "loss_params"),
    search_metrics=("val_acc",),
    search_defaults={"val_fraction": 0.1},
    # val_acc is measured on a validation split: only a point that holds one out reports it
    reported_metrics=lambda config: ("test_acc", "poison_fit", "robust_score", "final_train_loss",
                                     *(("val_acc",) if config.val_fraction > 0 else ())),
    open_params={"loss": "loss_params"},
    options=(
        Option("--data-dir", "folder holding the data sets (default: $" + DATA_DIR_ENV + "; digits need none)",
               field="data_dir"),
        Option("--scale", "full (the recipe) or smoke (1-2 epochs of a few batches, to check a setup)", field="scale"),
        Option("--download", "download missing CIFAR-10/100 / FashionMNIST files into the data folder first "
                             "(checksums verified)"),
    ),
    prepare=prepare,
    analyze_by_default=True,
)
