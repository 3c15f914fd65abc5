"""Two commits side by side in one run: the same launches end to end, alternating, on this machine.

For a change that should not cost anything (a refactor), this prints each commit's wall times and the ratio of
their medians: ``python benchmarks/commits.py BASE [--rounds 3]`` compares BASE with the working tree.

Each launch runs in a fresh process from its commit's tree (a ``git worktree`` of BASE, made and removed here),
into a fresh SQLite store: the default 81-point poison_sensitivity sweep and the 36-point adversarial_scaling
sweep (``--seeds 3``), each without ``--analyze`` (the launch alone).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAUNCHES = {"poison_sensitivity (81 points)": ["poison_sensitivity"],
            "adversarial_scaling (36 points)": ["adversarial_scaling", "--seeds", "3"]}


def launch(tree: Path, argv: list[str], workdir: Path) -> float:
    """Seconds for ``python -m tune_jobs ARGV`` from ``tree`` into a fresh store under ``workdir``."""
    workdir.mkdir(parents=True)
    command = [sys.executable, "-m", "tune_jobs", *argv, "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}",
               "--storage-path", str(workdir / "ray")]
    env = dict(os.environ, PYTHONPATH=str(tree))
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: {' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="the commit to compare the working tree with (e.g. HEAD~3)")
    parser.add_argument("--rounds", type=int, default=3, help="launches of each kind per commit (default: 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        base_tree = Path(folder) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base_tree), args.base],
                       check=True)
        try:
            trees = {args.base: base_tree, "working tree": ROOT}
            times = {(name, label): [] for name in trees for label in LAUNCHES}
            for round_ in range(args.rounds):
                for label, argv in LAUNCHES.items():
                    for name, tree in (trees.items() if round_ % 2 == 0 else reversed(trees.items())):
                        workdir = Path(folder) / f"{round_}-{argv[0]}-{'base' if tree == base_tree else 'tree'}"
                        seconds = launch(tree, argv, workdir)
                        times[name, label].append(seconds)
                        print(f"round {round_ + 1}/{args.rounds}  {label:32s} {name:14s} {seconds:6.1f} s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], check=False)
    print(f"\n{'launch':32s} {args.base:>14s} {'working tree':>14s}  ratio (median, tree / base)")
    for label in LAUNCHES:
        base, now = statistics.median(times[args.base, label]), statistics.median(times["working tree", label])
        print(f"{label:32s} {base:12.1f} s {now:12.1f} s  {now / base:.3f}")


if __name__ == "__main__":
    main()
