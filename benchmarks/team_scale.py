"""The poison sweep at scale on the team path, side by side in one run: through the team tracking server on a real
PostgreSQL (``python -m tune_jobs.tracking_server``'s server, ``mlflow server --serve-artifacts`` with that command's
default ``--workers``) against directly on SQLite (the launcher's default store).

For each store: ``python -m tune_jobs poison_sensitivity --seeds N --set epochs=20`` in a fresh process (local
Ray), timed, with the driver's peak RSS and, for the server, the peak RSS of the server's processes together;
then the analysis (``python -m analysis poison_sensitivity --no-log``) timed. PostgreSQL is started for the run
in a private folder on 127.0.0.1 and stopped after it (its binaries: Debian's ``postgresql`` package).

    python benchmarks/team_scale.py                   # 10,125 points (375 seeds x 27), as benchmarks/scale.py --big
    python benchmarks/team_scale.py --points 810      # a smaller run (30 seeds)
    python benchmarks/team_scale.py --workers 1       # the server with one worker process
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

POINTS_PER_SEED = 27  # poison_sensitivity's default grid: 9 poison fractions x 3 widths


def _group(pid: int) -> list:
    """``pid``'s process and its descendants (psutil), none if it is gone."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _group_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) that ``pid`` and its descendants have used so far."""
    total = 0.0
    for process in _group(pid) if pid is not None else []:
        try:
            times = process.cpu_times()
        except Exception:  # noqa: BLE001 - a process that just ended
            continue
        total += times.user + times.system
    return total


def _group_peak_mb(pid: int, stop: threading.Event, out: list[float]) -> None:
    """Poll the summed RSS of ``pid`` and its descendants until ``stop``; appends each reading."""
    while not stop.is_set():
        total = 0
        for process in _group(pid):
            try:
                total += process.memory_info().rss
            except Exception:  # noqa: BLE001 - a process that just ended
                continue
        out.append(total / 2 ** 20)
        stop.wait(0.5)


def run_store(name: str, uri: str, folder: Path, seeds: int, server_pid: int | None) -> dict:
    from scale import timed

    stop, server_peaks = threading.Event(), []
    watcher = None
    if server_pid is not None:
        watcher = threading.Thread(target=_group_peak_mb, args=(server_pid, stop, server_peaks), daemon=True)
        watcher.start()
    try:
        cpu_before = _group_cpu_s(server_pid)
        launch_s, driver_mb, output = timed([sys.executable, "-m", "tune_jobs", "poison_sensitivity", "--seeds",
                                             str(seeds), "--set", "epochs=20", "--tracking-uri", uri,
                                             "--storage-path", str(folder / f"ray-{name}"), "--experiment", name],
                                            folder)
        server_cpu_s = _group_cpu_s(server_pid) - cpu_before if server_pid is not None else float("nan")
        analysis_s, analysis_mb, _ = timed([sys.executable, "-m", "analysis", "poison_sensitivity", "--tracking-uri",
                                            uri, "--experiment", name, "--no-log", "--out",
                                            str(folder / f"out-{name}")], folder)
    finally:
        stop.set()
        if watcher is not None:
            watcher.join()
    finished = next((line for line in output.splitlines() if "grid points finished" in line), "?")
    return {"launch_s": launch_s, "driver_mb": driver_mb, "server_mb": max(server_peaks, default=float("nan")),
            "server_cpu_ms": 1000 * server_cpu_s / (seeds * POINTS_PER_SEED),
            "analysis_s": analysis_s, "analysis_mb": analysis_mb, "finished": finished.split(" in sweep")[0]}


def main(argv: list[str] | None = None) -> int:
    from tune_jobs.tracking_server import default_workers

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=10_125,
                        help=f"grid points, a multiple of {POINTS_PER_SEED} (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="the server's worker processes (default: the team server's, %(default)s)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the stores in this folder")
    args = parser.parse_args(argv)
    if args.points < POINTS_PER_SEED or args.points % POINTS_PER_SEED:
        print(f"error: --points must be a multiple of {POINTS_PER_SEED}, got {args.points}", file=sys.stderr)
        return 2
    from postgres_fixtures import Postgres, postgres_bin
    from test_tracking_server import free_port
    from tune_jobs.tracking_server import TrackingServer

    if postgres_bin() is None:
        print("error: PostgreSQL's server binaries (initdb, pg_ctl under /usr/lib/postgresql/*/bin) are not "
              "installed: apt-get install postgresql", file=sys.stderr)
        return 2
    seeds = args.points // POINTS_PER_SEED
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        print(f"team_scale: {args.points} points ({seeds} seeds x {POINTS_PER_SEED}, epochs=20)", flush=True)
        with Postgres(free_port()) as database:
            server = TrackingServer(database.uri, str(folder / "server-artifacts"), port=free_port(),
                                    log_file=folder / "server.log", workers=args.workers)
            with server:
                results["server + PostgreSQL"] = run_store("team-pg", server.uri, folder, seeds, server.process.pid)
        results["SQLite (direct)"] = run_store("direct-sqlite", f"sqlite:///{folder / 'mlflow.db'}", folder, seeds,
                                               None)
    print(f"\n{'store':22s} {'launch s':>9s} {'ms/point':>9s} {'driver MB':>10s} {'server MB':>10s} "
          f"{'server CPU ms/point':>19s} {'analysis s':>11s} {'analysis MB':>12s}  outcome")
    for name, r in results.items():
        print(f"{name:22s} {r['launch_s']:9.1f} {1000 * r['launch_s'] / args.points:9.1f} {r['driver_mb']:10.0f} "
              f"{r['server_mb']:10.0f} {r['server_cpu_ms']:19.1f} {r['analysis_s']:11.1f} {r['analysis_mb']:12.0f}  {r['finished']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
