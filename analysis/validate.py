"""Validate a finished sweep: ``python -m analysis.validate STUDY [--experiment NAME] [--sweep-id ID]``.

Runs the study's analysis in memory and its checks (completeness plus the
study's sanity rules); prints each check and exits 1 if any failed, 2 if
there is nothing to validate.
"""

from __future__ import annotations

import argparse
import sys

from analysis.common import load_sweep, run_checks, study_analysis
from tune_jobs.cli import UsageError, exit_process
from tune_jobs.study import STUDY_MODULES, load_study


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.validate", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", choices=sorted(STUDY_MODULES))
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default: the study name)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")
    parser.add_argument("--sweep-id", default=None, help="the sweep's parent run id (default: the latest sweep)")
    args = parser.parse_args(argv)
    study = load_study(args.study)
    try:
        sweep = load_sweep(study, args.experiment or study.name, args.tracking_uri, args.sweep_id)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"validating {study.name} sweep {sweep.sweep_id}: {len(sweep.runs)} finished runs")
    module = study_analysis(study.name)
    if sweep.runs.empty:
        print("error: the sweep has no finished runs", file=sys.stderr)
        return 1
    return run_checks(module.checks(sweep, module.analyze(sweep)))


if __name__ == "__main__":
    exit_process(main())
