"""Time the poison_sensitivity study end to end against the same trials in a plain loop.

(a) end to end: ``python -m tune_jobs.poison_sensitivity --analyze`` in a fresh
    process (local Ray start, 81 trials, MLflow logging to a fresh SQLite
    store, analysis and validation);
(b) the same 81 trials called one after another in this process, no Ray, no
    MLflow, one torch thread (the protocol default).

Prints both and (a)/(b). Bar of the issue: (a) <= 45 s on the 2-core machine.
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


def end_to_end(workdir: Path, extra: list[str]) -> float:
    command = [sys.executable, "-m", "tune_jobs.poison_sensitivity", "--tracking-uri",
               f"sqlite:///{workdir / 'mlflow.db'}", "--storage-path", str(workdir / "ray"),
               "--analyze", str(workdir / "analysis"), *extra]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    (workdir / "launcher.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"end-to-end run failed (status {proc.returncode}); log: {workdir / 'launcher.log'}")
    return elapsed


def plain_loop() -> float:
    from core.studies.poison_sensitivity import PoisonSensitivityConfig, run_trial
    from core.training import torch_threads
    from tune_jobs.poison_sensitivity import STUDY

    points = STUDY.points(STUDY.grid, STUDY.defaults())
    started = time.perf_counter()
    for config in points:
        with torch_threads(config.torch_threads):
            run_trial(config)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, default=None, help="keep the end-to-end run's store in this folder")
    parser.add_argument("launcher_args", nargs="*", help="extra launcher flags after --, e.g. -- --address auto")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        print("(a) end to end through Ray Tune + MLflow + analysis ...", flush=True)
        e2e = end_to_end(workdir, args.launcher_args)
        print(f"    {e2e:.1f} s", flush=True)
        print("(b) the same 81 trials in a plain in-process loop ...", flush=True)
        loop = plain_loop()
        print(f"    {loop:.1f} s", flush=True)
    print(f"\npoison_sensitivity: end to end {e2e:.1f} s, plain loop {loop:.1f} s, "
          f"ratio end-to-end/plain = {e2e / loop:.2f} (bar: end to end <= 45 s: {'met' if e2e <= 45 else 'NOT met'})")


if __name__ == "__main__":
    main()
