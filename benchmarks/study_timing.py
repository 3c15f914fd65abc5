"""Shared by the study benchmarks: one study end to end vs the same trials in a plain loop, in one run.

(a) end to end: ``python -m tune_jobs.<study> --analyze`` in a fresh process
    (local Ray start, every grid point, MLflow logging to a fresh SQLite
    store, analysis and validation);
(b) the same grid points called one after another in this process, no Ray,
    no MLflow (each point runs with its config's ``torch_threads``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def end_to_end(study: str, workdir: Path, extra: list[str]) -> float:
    """Seconds for the launcher to run, analyse and validate the default grid (raises if it fails)."""
    command = [sys.executable, "-m", f"tune_jobs.{study}", "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}",
               "--storage-path", str(workdir / "ray"), "--analyze", str(workdir / "analysis"), *extra]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    (workdir / "launcher.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"end-to-end run failed (status {proc.returncode}); log: {workdir / 'launcher.log'}")
    return elapsed


def plain_loop(study_name: str) -> tuple[float, int]:
    """Seconds to compute every default grid point in sequence in this process, and how many there were."""
    from core.point import PLAIN
    from tune_jobs.study import load_study

    study = load_study(study_name)
    points = study.points(study.grid, study.defaults())
    started = time.perf_counter()
    for config in points:
        study.run_point(config, PLAIN)
    return time.perf_counter() - started, len(points)


def main(study: str, bar_s: float, description: str) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--keep", type=Path, default=None, help="keep the end-to-end run's store in this folder")
    parser.add_argument("launcher_args", nargs="*", help="extra launcher flags after --, e.g. -- --max-concurrent 1")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        print(f"(a) {study} end to end through Ray Tune + MLflow + analysis ...", flush=True)
        e2e = end_to_end(study, workdir, args.launcher_args)
        print(f"    {e2e:.1f} s  (log: launcher.log in the store folder)", flush=True)
        print("(b) the same grid points in a plain in-process loop (no Ray, no MLflow) ...", flush=True)
        loop, n_points = plain_loop(study)
        print(f"    {loop:.1f} s for {n_points} points", flush=True)
    print(f"\n{study}: end to end {e2e:.1f} s, plain loop {loop:.1f} s, ratio end-to-end/plain = {e2e / loop:.2f}; "
          f"bar end to end <= {bar_s:g} s: {'met' if e2e <= bar_s else 'NOT met'}")
