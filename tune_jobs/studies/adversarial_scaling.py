"""The adversarial_scaling study: ``python -m tune_jobs adversarial_scaling --help``."""

from __future__ import annotations

from analysis.adversarial_scaling import ANALYSIS
from core.studies.adversarial_scaling import AdversarialScalingConfig, run_point
from tune_jobs.study import Study

STUDY = Study(
    name="adversarial_scaling",
    description="MLP width x dataset x seed, each trained model attacked with FGSM and PGD at every epsilon "
                "(protocol: docs/adversarial_scaling.md). One child run per training; per-epsilon results are "
                "metrics fgsm_acc/eps_E, pgd_acc/eps_E, histories with step = epsilon index and with step = "
                "1000 x epsilon (*_by_eps_x1000), and robustness.csv.",
    config_type=AdversarialScalingConfig,
    grid={
        "dataset": ("circles", "moons"),
        "hidden_width": (16, 32, 64, 128, 256, 512),
        "seed": (42, 123, 7),
    },
    run_point=run_point,
    short_names={"dataset": "data", "hidden_width": "w", "seed": "s"},
    analysis=ANALYSIS,
    metrics=("clean_acc", "epochs_trained", "final_train_loss", "mean_fgsm_gap", "mean_pgd_gap"),
    points_per_trial=1,
    cost=lambda config: config.hidden_width * (config.hidden_width + 64),
    point_timeout=3600,  # a point takes well under a minute; a hung one must not hold the sweep
)
