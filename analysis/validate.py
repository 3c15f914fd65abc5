"""Validate a finished sweep: ``python -m analysis.validate STUDY [--experiment NAME] [--sweep-id ID]``.

STUDY is a built-in study name or ``module[:ATTR]`` naming an ``Analysis`` (or
a study declaration carrying one).  Runs the analysis in memory and its checks
(completeness plus the study's sanity rules); prints each check and exits 1 if
any failed, 2 if there is nothing to validate.
"""

from __future__ import annotations

import argparse
import sys

from analysis.common import SweepNotFound, exit_process, load_analysis, read_finished_sweep, run_checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.validate", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="a built-in study name, or module[:ATTR]")
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default: the study name)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")
    parser.add_argument("--sweep-id", default=None, help="the sweep's parent run id (default: the latest sweep)")
    args = parser.parse_args(argv)
    try:
        study, analysis = load_analysis(args.study)
        sweep = read_finished_sweep(study, args.experiment or study, args.tracking_uri, args.sweep_id)
    except SweepNotFound as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"validating {study} sweep {sweep.sweep_id}: {len(sweep.runs)} finished runs")
    return run_checks(analysis.checks(sweep, analysis.analyze(sweep)))


if __name__ == "__main__":
    exit_process(main())
