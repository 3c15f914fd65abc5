"""What every study's analysis shares: read a sweep back from MLflow, write and log the outputs, run checks.

Analyses read MLflow only (never Ray's result folders), so any past sweep in
any tracking store can be analysed again.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient

from tune_jobs import tracking
from tune_jobs.cli import UsageError, parse_value
from tune_jobs.store import resolve_tracking_uri
from tune_jobs.study import Study, load_study


@dataclass
class Sweep:
    """One sweep's parent run and its finished child runs (one row per grid point)."""

    study: Study
    client: MlflowClient
    experiment_id: str
    sweep_id: str
    parent: Any
    runs: pd.DataFrame
    expected_points: int
    duplicate_points: list[str]
    unfinished_points: list[str]

    def history(self, run_id: str, key: str) -> list[float]:
        """A metric's values of one child run, ordered by step."""
        points = sorted(self.client.get_metric_history(run_id, key), key=lambda m: m.step)
        return [m.value for m in points]


@dataclass
class Check:
    """One validation check: a name, whether it passed, and what was seen."""

    name: str
    passed: bool
    detail: str = ""


@dataclass
class AnalysisOutput:
    """What a study's analysis produced, before it is written and logged."""

    summary: dict[str, Any]
    table: pd.DataFrame
    findings: list[str]
    figures: dict[str, Any] = field(default_factory=dict)  # file name -> matplotlib Figure
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # intermediate tables the checks reuse


def load_sweep(study: Study, experiment: str, tracking_uri: str | None = None, sweep_id: str | None = None) -> Sweep:
    """The sweep ``sweep_id`` (default: the experiment's latest) with its FINISHED child runs as a table.

    Params are converted back to the config's types; a point with several
    FINISHED runs keeps the newest and is reported in ``duplicate_points``.
    """
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise UsageError(f"no experiment {experiment!r} in {uri}")
    query = f"tags.`{tracking.TAG_KIND}` = 'sweep' and tags.`{tracking.TAG_STUDY}` = '{study.name}'"
    sweeps = tracking.search_all_runs(client, [found.experiment_id], query)
    if sweep_id is not None:
        sweeps = [s for s in sweeps if s.info.run_id == sweep_id]
    if not sweeps:
        raise UsageError(f"no {study.name} sweep{' ' + sweep_id if sweep_id else ''} in experiment {experiment!r} ({uri})")
    parent = sweeps[0]
    children = tracking.SweepTracker(uri, found.experiment_id, parent.info.run_id, study.name).point_runs()
    rows, seen, duplicates = [], set(), []
    for run in children:  # newest first
        if run.info.status != "FINISHED":
            continue
        point = run.data.tags.get(tracking.TAG_POINT)
        if point in seen:
            duplicates.append(point)
            continue
        seen.add(point)
        row = {"run_id": run.info.run_id, "point": point}
        for key, value in run.data.params.items():
            row[key] = parse_value(study, key, value) if key in study.field_types else _number(value)
        row.update(run.data.metrics)
        rows.append(row)
    unfinished = sorted({r.data.tags.get(tracking.TAG_POINT) for r in children} - seen)
    grid_sizes = [len(v.split(",")) for k, v in parent.data.params.items() if k.startswith("grid.")]
    expected = int(parent.data.tags.get("robustlab.n_points", math.prod(grid_sizes) if grid_sizes else len(rows)))
    return Sweep(study, client, found.experiment_id, parent.info.run_id, parent, pd.DataFrame(rows), expected,
                 sorted(set(duplicates)), unfinished)


def _number(text: str) -> Any:
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        return text


def completeness_checks(sweep: Sweep) -> list[Check]:
    """Checks every study shares: all grid points finished, once each."""
    n = len(sweep.runs)
    return [
        Check("all grid points finished", n == sweep.expected_points,
              f"{n}/{sweep.expected_points} finished" + (f"; not finished: {', '.join(sweep.unfinished_points[:10])}"
                                                          if sweep.unfinished_points else "")),
        Check("no duplicate grid points", not sweep.duplicate_points,
              ", ".join(sweep.duplicate_points[:10]) or "none"),
    ]


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table of ``frame`` (cells as already formatted strings or numbers)."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _clean_json(value: Any) -> Any:
    """NaN/inf -> None so summary.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_json(v) for v in value]
    return value


def write_outputs(output: AnalysisOutput, out_dir: Path, table_name: str) -> list[Path]:
    """summary.json, ``<table_name>.md`` / ``.csv`` and the figures as PNG files in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = dict(output.summary, findings=output.findings)
    paths = [out_dir / "summary.json", out_dir / f"{table_name}.md", out_dir / f"{table_name}.csv"]
    paths[0].write_text(json.dumps(_clean_json(json.loads(json.dumps(summary, default=_json_default))), indent=2) + "\n")
    paths[1].write_text(markdown_table(output.table) + "\n\n" + "\n".join(f"- {f}" for f in output.findings) + "\n")
    output.table.to_csv(paths[2], index=False)
    import matplotlib.pyplot as plt

    for name, figure in output.figures.items():
        paths.append(out_dir / name)
        figure.savefig(paths[-1], dpi=120, bbox_inches="tight")
        plt.close(figure)
    return paths


def log_analysis_run(sweep: Sweep, paths: Sequence[Path], summary: dict[str, Any]) -> str:
    """An analysis run nested under the sweep's parent, holding the output files as artifacts."""
    tags = {tracking.TAG_PARENT: sweep.sweep_id, tracking.TAG_SWEEP: sweep.sweep_id,
            tracking.TAG_STUDY: sweep.study.name, tracking.TAG_KIND: "analysis"}
    run = sweep.client.create_run(sweep.experiment_id, tags=tags, run_name=f"analysis-{sweep.study.name}")
    for path in paths:
        sweep.client.log_artifact(run.info.run_id, str(path))
    sweep.client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def analysis_parser(study: Study) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m analysis.{study.name}",
        description=f"Analyse a {study.name} sweep read back from MLflow: summary.json, markdown and CSV tables, "
                    "plots; the files are also logged as an analysis run nested under the sweep.",
    )
    parser.add_argument("--experiment", default=study.name, help="MLflow experiment name (default: %(default)s)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")
    parser.add_argument("--sweep-id", default=None, help="the sweep's parent run id (default: the latest sweep)")
    parser.add_argument("--out", type=Path, default=Path("results") / study.name,
                        help="output folder (default: %(default)s)")
    parser.add_argument("--no-log", action="store_true", help="do not log the outputs back to MLflow")
    parser.add_argument("--validate", action="store_true",
                        help="also run the study's validation checks; exit 1 if any fails")
    return parser


def study_analysis(study_name: str):
    """The analysis module of a study (defines ``analyze(sweep)`` and ``checks(sweep, output)``)."""
    return importlib.import_module(f"analysis.{study_name}")


def run_analysis_main(study_name: str, argv: list[str] | None = None) -> int:
    """Entry point of ``python -m analysis.<study>``."""
    study = load_study(study_name)
    args = analysis_parser(study).parse_args(argv)
    module = study_analysis(study_name)
    try:
        sweep = load_sweep(study, args.experiment, args.tracking_uri, args.sweep_id)
        if sweep.runs.empty:
            raise UsageError(f"sweep {sweep.sweep_id} in experiment {args.experiment!r} has no finished runs to analyse")
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    output = module.analyze(sweep)
    output.summary.update(study=study.name, experiment=args.experiment, sweep_id=sweep.sweep_id,
                          n_finished_runs=len(sweep.runs), n_expected_runs=sweep.expected_points,
                          missing_points=sweep.unfinished_points)
    paths = write_outputs(output, args.out, table_name=module.TABLE_NAME)
    print(markdown_table(output.table))
    print("\nFindings:\n" + "\n".join(f"- {f}" for f in output.findings))
    if sweep.runs.shape[0] < sweep.expected_points:
        print(f"\nwarning: only {len(sweep.runs)}/{sweep.expected_points} grid points finished; "
              f"missing: {', '.join(sweep.unfinished_points[:10]) or 'never started'}")
    if not args.no_log:
        run_id = log_analysis_run(sweep, paths, output.summary)
        print(f"\nlogged as analysis run {run_id} under sweep {sweep.sweep_id}")
    print(f"outputs in {args.out}/: " + ", ".join(p.name for p in paths))
    if args.validate:
        print(f"\nvalidation of sweep {sweep.sweep_id}:")
        return run_checks(module.checks(sweep, output))
    return 0


def run_checks(checks: list[Check]) -> int:
    """Print each check and return 0 if all passed, else 1."""
    for check in checks:
        print(f"[{'PASS' if check.passed else 'FAIL'}] {check.name}" + (f": {check.detail}" if check.detail else ""))
    failed = [c.name for c in checks if not c.passed]
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    if failed:
        print("failing checks: " + "; ".join(failed))
    return 1 if failed else 0


def group_stats(frame: pd.DataFrame, by: list[str], columns: list[str]) -> pd.DataFrame:
    """Mean, sample std (ddof=1; 0 for a single seed) and count of ``columns`` per group."""
    grouped = frame.groupby(by, sort=True)
    out = grouped[columns].mean().add_suffix("_mean")
    std = grouped[columns].std(ddof=1).fillna(0.0).add_suffix("_std")
    out = out.join(std)
    out["n_seeds"] = grouped.size()
    return out.reset_index()

