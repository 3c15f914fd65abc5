"""``python -m tune_jobs sweeps``: the sweeps of a tracking store, as a table or as JSON (newest first).

The listing is :func:`record.read.list_sweeps`; this module only parses the flags and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import NoReturn

STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
#: Findings shown per sweep in the table (all of them in --json).
SHOWN_FINDINGS = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints the usage too)
        print(f"error: {message} (see python -m tune_jobs sweeps --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m tune_jobs sweeps",
        description="List the sweeps of a tracking store, newest first: study, status, points finished/total, "
                    "start (UTC), duration, the launch command and the headline findings (the metrics on the "
                    "sweep's parent run). A sweep that failed before any point finished shows 0/N: analyses and "
                    "record.read.read_sweep skip it when they pick the latest sweep.",
    )
    parser.add_argument("--experiment", default=None, help="only this MLflow experiment (default: every one)")
    parser.add_argument("--study", default=None, help="only this study's sweeps (the robustlab.study tag)")
    parser.add_argument("--status", default=None, type=str.upper, choices=STATUSES, metavar="S",
                        help="only sweeps whose parent run has this status: " + ", ".join(STATUSES))
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list (every finding; times in ms since the epoch, duration_s in seconds)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db "
                             "under the current folder)")
    return parser


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) if ms else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _findings(findings: dict[str, float]) -> str:
    shown = [f"{k}={v:.4g}" for k, v in list(findings.items())[:SHOWN_FINDINGS]]
    more = len(findings) - SHOWN_FINDINGS
    return ", ".join(shown) + (f" (+{more} more)" if more > 0 else "") if shown else "-"


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from record.read import SweepNotFound, list_sweeps

    try:
        sweeps = list_sweeps(args.tracking_uri, args.experiment, args.study, args.status)
    except SweepNotFound as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([s.as_dict() for s in sweeps], indent=1))
        return 0
    if not sweeps:
        print("no sweeps match")
        return 0
    header = ("experiment", "sweep", "id", "study", "status", "points", "started (UTC)", "duration", "command",
              "findings")
    rows = [(s.experiment, s.name, s.sweep_id[:8], s.study, s.status,
             f"{s.n_finished}/{s.n_points if s.n_points is not None else '?'}", _when(s.start_time),
             _duration(s.duration_s), s.command or "-", _findings(s.findings)) for s in sweeps]
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header) - 2)]
    for row in (header, *rows):
        fixed = "  ".join(str(v).ljust(w) for v, w in zip(row, widths))
        print(f"{fixed}  {row[-2]}  [{row[-1]}]")
    return 0
