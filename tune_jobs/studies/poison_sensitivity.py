"""The poison_sensitivity study: ``python -m tune_jobs poison_sensitivity --help``."""

from __future__ import annotations

from analysis.poison_sensitivity import ANALYSIS
from core.studies.poison_sensitivity import PoisonSensitivityConfig, run_point, run_points
from tune_jobs.study import Study

STUDY = Study(
    name="poison_sensitivity",
    description="Label-flip poison fraction x MLP width x seed on Gaussian clusters "
                "(protocol: docs/poison_sensitivity.md). One child run per grid point.",
    config_type=PoisonSensitivityConfig,
    grid={
        "poison_fraction": (0.0, 0.01, 0.05, 0.10, 0.15, 0.20, 0.30, 0.40, 0.50),
        "hidden_width": (32, 64, 128),
        "seed": (42, 123, 7),
    },
    run_point=run_point,
    run_points=run_points,
    short_names={"poison_fraction": "pf", "hidden_width": "w", "seed": "s"},
    analysis=ANALYSIS,
    metrics=("train_acc", "train_clean_acc", "test_acc", "gen_gap", "final_train_loss"),
    points_per_trial=21,
    cost=lambda config: config.epochs * (1.0 + config.hidden_width / 128),
    point_timeout=600,  # a point takes well under a minute; a hung one must not hold the sweep
)
