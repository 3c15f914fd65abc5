"""How cost grows with the number of points: end to end vs a plain loop, per point, side by side in one run.

For each size (a number of seeds of the study's default grid; poison_sensitivity: 27 points per seed):

(a) end to end: ``python -m tune_jobs STUDY --seeds N`` in a fresh process (local Ray, a fresh SQLite store),
    with the launcher's peak RSS (its VmHWM, polled) and the store's size; then the analysis
    (``python -m analysis.STUDY --no-log``) timed with its peak RSS;
(b) the same points in a plain in-process loop on one core (no Ray, no MLflow): each point's ``run_point``, and
    for a study that computes a trial's points together (``run_points``) that too, trial by trial.

Then the marginal end-to-end wall time per point between the first two sizes against each plain loop's time per
point divided by the cores the launch used (issue 15's goal: <= 1.3x), MLflow's own floor: CPU per run of
create_run + one log_batch (15 params, 25 metric values) + set_terminated through the public client on SQLite,
and the start-up: the driver's and a Ray worker's imports and a local Ray's start, one task and stop (with Ray's own
settings and with the launcher's), each in a fresh process.

    python benchmarks/scale.py                                    # poison_sensitivity: 81 and 810 points
    python benchmarks/scale.py --big                              # ... and 10,125 points (--set epochs=20)
    python benchmarks/scale.py --big --keep /tmp/scale            # the same, keeping each size's store
    python benchmarks/scale.py --study adversarial_scaling --seeds 3,6
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIG_SEEDS, BIG_SET = 375, ["--set", "epochs=20"]


def _peak_rss_mb(pid: int, stop: threading.Event, out: list[float]) -> None:
    """Poll the process's high-water RSS (VmHWM) until it ends; the last reading is its peak."""
    while not stop.is_set():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out.append(int(line.split()[1]) / 1024)
        except OSError:
            return
        stop.wait(0.2)


def timed(command: list[str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and output of a subprocess (raises if it fails)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop, peaks = threading.Event(), []
    watcher = threading.Thread(target=_peak_rss_mb, args=(proc.pid, stop, peaks), daemon=True)
    watcher.start()
    output = proc.communicate()[0]
    elapsed = time.perf_counter() - started
    stop.set()
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{output[-3000:]}")
    return elapsed, max(peaks, default=float("nan")), output


def plain_loop(study_name: str, seeds: int, extra_set: list[str]) -> tuple[float, float | None, int]:
    """Seconds to compute every point of ``--seeds seeds`` in sequence in this process (``run_point`` each), the
    seconds to compute them in trials' chunks with the study's ``run_points`` (None if it has none: the points
    in the runner's order, ``points_per_trial`` at a time), and how many points there were."""
    from core.point import PLAIN
    from tune_jobs.cli import parse_launch
    from tune_jobs.study import load_study

    study = load_study(study_name)
    with tempfile.TemporaryDirectory() as folder:  # parse_launch checks a tracking URI; none is written
        points = parse_launch(study, ["--seeds", str(seeds), *extra_set, "--tracking-uri",
                                      f"sqlite:///{folder}/unused.db"]).points
    started = time.perf_counter()
    for config in points:
        study.run_point(config, PLAIN)
    alone = time.perf_counter() - started
    if study.run_points is None:
        return alone, None, len(points)
    ordered = sorted(points, key=study.cost, reverse=True) if study.cost else points
    started = time.perf_counter()
    for first in range(0, len(ordered), study.points_per_trial):
        study.run_points(ordered[first:first + study.points_per_trial], PLAIN)
    return alone, time.perf_counter() - started, len(points)


def mlflow_floor(folder: Path, runs: int = 200) -> float:
    """CPU milliseconds per run of create_run + one log_batch (15 params, 25 metrics) + set_terminated."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'floor.db'}")
    experiment = client.create_experiment("floor")
    now = int(time.time() * 1000)
    started = time.process_time()
    for i in range(runs):
        run = client.create_run(experiment).info.run_id
        client.log_batch(run, params=[Param(f"p{k}", str(k)) for k in range(15)],
                         metrics=[Metric("train_loss", 1.0 / (s + 1), now, s) for s in range(20)]
                         + [Metric(f"m{k}", float(k), now, 0) for k in range(5)])
        client.set_terminated(run)
    return (time.process_time() - started) / runs * 1000


STARTUP = {  # what each process imports before its first point, run in a fresh interpreter
    "driver imports (launcher, study, Ray Tune, MLflow)":
        "import tune_jobs.runner, tune_jobs.progress, record.write; "
        "from tune_jobs.study import load_study; load_study({study!r})",
    "Ray worker imports (Ray Tune, torch, MLflow, the study)":
        "import ray.tune, tune_jobs.worker, core.training; from tune_jobs.study import load_study; "
        "load_study({study!r})",
    "a local Ray's start, one task and stop, Ray's own settings":
        "import os; os.environ['RAY_AUTH_MODE'] = 'token'; os.environ['RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'] = '0'; "
        "from tune_jobs.ray_env import LOCAL_RAY_INIT; import ray; ray.init(**LOCAL_RAY_INIT); "
        "ray.get(ray.remote(lambda: 0).remote()); ray.shutdown()",
    "a local Ray's start, one task and stop, the launcher's settings":
        "from tune_jobs.ray_env import LOCAL_RAY_INIT, local_ray_settings; local_ray_settings(); "
        "import ray; ray.init(**LOCAL_RAY_INIT); ray.get(ray.remote(lambda: 0).remote()); ray.shutdown()",
}


def startup(study: str, folder: Path) -> list[tuple[str, float, float]]:
    """Wall seconds and peak RSS (MB) of each :data:`STARTUP` step in a fresh process."""
    rows = []
    for what, code in STARTUP.items():
        seconds, rss, _ = timed([sys.executable, "-c", code.format(study=study)], folder)
        rows.append((what, seconds, rss))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="poison_sensitivity")
    parser.add_argument("--seeds", default="3,30", help="seed counts to run, the first two give the marginal cost")
    parser.add_argument("--big", action="store_true", help=f"also {BIG_SEEDS} seeds with {' '.join(BIG_SET)}")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep each size's store here (DIR/seedsN/mlflow.db: open it with mlflow ui)")
    args = parser.parse_args()
    sizes = [(int(n), []) for n in args.seeds.split(",")] + ([(BIG_SEEDS, BIG_SET)] if args.big else [])
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seeds, extra in sizes:
            folder = (args.keep or Path(tmp)) / f"seeds{seeds}"
            folder.mkdir(parents=True)
            uri = f"sqlite:///{folder / 'mlflow.db'}"
            print(f"{args.study} --seeds {seeds} {' '.join(extra)}: end to end ...", flush=True)
            e2e, rss, _ = timed([sys.executable, "-m", "tune_jobs", args.study, "--seeds", str(seeds), *extra,
                                 "--tracking-uri", uri, "--storage-path", str(folder / "ray")], folder)
            store_mb = (folder / "mlflow.db").stat().st_size / 1e6
            print(f"    {e2e:.1f} s, driver peak RSS {rss:.0f} MB, store {store_mb:.0f} MB; analysis ...", flush=True)
            analysis, analysis_rss, _ = timed([sys.executable, "-m", f"analysis.{args.study}", "--tracking-uri", uri,
                                               "--out", str(folder / "out"), "--no-log"], folder)
            print(f"    analysis {analysis:.1f} s, peak RSS {analysis_rss:.0f} MB; plain loop ...", flush=True)
            loop, together, n = plain_loop(args.study, seeds, extra)
            print(f"    plain loop {loop:.1f} s for {n} points"
                  + ("" if together is None else f"; computed together (run_points) {together:.1f} s"), flush=True)
            rows.append((n, " ".join(extra), e2e, loop, together, rss, store_mb, analysis, analysis_rss))
        floor = mlflow_floor(Path(tmp))
        starts = startup(args.study, Path(tmp))
    print(f"\n{args.study} on {cores} cores (a Ray trial per core; plain loop on one core):\n")
    print("| points | settings | end to end | plain loop (1 core) | computed together (1 core) | "
          "end to end per point | driver peak RSS | store | analysis | analysis peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, extra, e2e, loop, together, rss, store_mb, analysis, analysis_rss in rows:
        print(f"| {n:,} | {extra or 'default'} | {e2e:.1f} s | {loop:.1f} s | "
              f"{'-' if together is None else f'{together:.1f} s'} | {e2e / n * 1000:.0f} ms | {rss:.0f} MB | "
              f"{store_mb:.0f} MB | {analysis:.1f} s | {analysis_rss:.0f} MB |")
    if len(rows) >= 2 and rows[1][0] > rows[0][0]:
        (n1, _, e1, l1, t1, *_), (n2, _, e2, l2, t2, *_) = rows[0], rows[1]
        marginal = (e2 - e1) / (n2 - n1)
        for what, first, second in (("plain loop", l1, l2), ("computed together", t1, t2)):
            if second is None:
                continue
            per_point = second / n2 / cores
            print(f"\nmarginal end to end per point ({n1} -> {n2}): {marginal * 1000:.1f} ms of wall time; {what} per "
                  f"point / {cores} cores: {per_point * 1000:.1f} ms; ratio {marginal / per_point:.2f} (goal <= 1.3)")
            print(f"{n1} points end to end / {what}: {e1 / first:.2f}")
    print(f"MLflow's floor on SQLite: {floor:.1f} ms of CPU per run (create_run + log_batch + set_terminated)")
    print("\nstart-up, each in a fresh process (the driver's and a worker's imports run side by side in a launch):")
    for what, seconds, rss in starts:
        print(f"    {what}: {seconds:.1f} s, peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
