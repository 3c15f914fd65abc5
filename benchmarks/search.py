"""ASHA against the plain grid on the same budget of digits points, in one run: time, epochs trained, best val_acc.

Both launches run the same points (4 losses x 3 seeds of the digits benchmark, ``--set epochs=E``) end to end
(local Ray, a fresh SQLite store each, analysis and validation included) and select on ``val_acc`` (validation split ``val_fraction``
0.1); the second adds ``--scheduler asha``. Reported: wall time, epochs trained (from the runs' histories), the best
point's val_acc and loss, and the ratios.

    python benchmarks/search.py                 # epochs 20, grace 2, reduction factor 2
    python benchmarks/search.py --epochs 30 --grace-period 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from study_timing import ROOT, end_to_end

sys.path.insert(0, str(ROOT))


def outcome(workdir: Path) -> tuple[int, float, str]:
    """Epochs trained over all points, the best point's val_acc and loss."""
    from mlflow.tracking import MlflowClient

    from record import schema
    from record.runs import point_runs, sweep_runs

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("robust_loss").experiment_id
    (parent,) = sweep_runs(client, experiment_id)
    runs = point_runs(client, experiment_id, parent.info.run_id)
    epochs = sum(len(client.get_metric_history(r.info.run_id, "val_acc")) for r in runs)
    best = client.get_run(parent.data.tags[schema.TAG_BEST_RUN])
    return epochs, parent.data.metrics["best_val_acc"], best.data.params["loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--grace-period", type=int, default=2)
    parser.add_argument("--reduction-factor", type=float, default=2.0)
    args = parser.parse_args()
    common = ["--grid", "loss=cross_entropy,generalized_ce,symmetric_ce,bootstrap", "--grid", "seed=1,2,3",
              "--set", f"epochs={args.epochs}", "--metric", "val_acc", "--mode", "max"]
    asha = ["--scheduler", "asha", "--grace-period", str(args.grace_period),
            "--reduction-factor", str(args.reduction_factor)]
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for name, extra in (("grid (fifo)", []), ("asha", asha)):
            workdir = Path(root) / name.split()[0]
            workdir.mkdir()
            seconds = end_to_end("robust_loss", workdir, common + extra)
            rows.append((name, seconds, *outcome(workdir)))
            print(f"{name}: done in {seconds:.1f} s", file=sys.stderr, flush=True)
    budget = 12 * args.epochs
    print(f"\n12 digits points (4 losses x 3 seeds), {args.epochs} epochs each ({budget} epochs), selection on val_acc; "
          f"ASHA grace {args.grace_period}, reduction factor {args.reduction_factor:g}\n")
    print("| launch | wall s | epochs trained | best val_acc | best loss |")
    print("|---|---|---|---|---|")
    for name, seconds, epochs, best, loss in rows:
        print(f"| {name} | {seconds:.1f} | {epochs} / {budget} | {best:.4f} | {loss} |")
    (_, grid_s, grid_e, grid_best, _), (_, asha_s, asha_e, asha_best, _) = rows
    print(f"\nASHA / grid: time {asha_s / grid_s:.2f}, epochs {asha_e / grid_e:.2f}, best val_acc "
          f"{asha_best - grid_best:+.4f}")


if __name__ == "__main__":
    main()
