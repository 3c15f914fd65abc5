"""The full default adversarial_scaling sweep (36 trainings, 180 evaluations) against the paper's figures."""

import json

from tune_jobs.runner import main

CIRCLES = {  # width: clean acc, mean FGSM gap, mean PGD gap (shared/specs/adversarial_scaling.md)
    16: (0.943, 0.302, 0.313),
    32: (0.941, 0.325, 0.333),
    64: (0.943, 0.328, 0.335),
    128: (0.942, 0.329, 0.334),
    256: (0.942, 0.328, 0.334),
    512: (0.942, 0.325, 0.333),
}
SIGN_OF_R = {"circles": {"fgsm": 1, "pgd": 1}, "moons": {"fgsm": -1, "pgd": -1}}


def test_default_sweep_lands_within_the_published_tolerances(store):
    out = store["dir"] / "analysis"
    status = main("adversarial_scaling", ["--tracking-uri", store["uri"], "--storage-path", store["ray"],
                                          "--analyze", str(out)])
    assert status == 0  # includes the validation checks (PGD >= FGSM, monotone in epsilon, clean acc >= 0.8)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_finished_runs"] == 36 and summary["n_evaluations"] == 180
    for row in summary["datasets"]["circles"]["widths"]:
        clean, fgsm_gap, pgd_gap = CIRCLES[row["hidden_width"]]
        assert abs(row["clean_acc_mean"] - clean) <= 0.02, row
        assert abs(row["mean_fgsm_gap_mean"] - fgsm_gap) <= 0.02, row
        assert abs(row["mean_pgd_gap_mean"] - pgd_gap) <= 0.02, row
    for row in summary["datasets"]["moons"]["widths"]:
        assert abs(row["clean_acc_mean"] - 0.99) <= 0.02, row
    for dataset, attacks in SIGN_OF_R.items():
        for attack, sign in attacks.items():
            assert summary["datasets"][dataset]["correlations"][attack]["r"] * sign > 0, (dataset, attack)
