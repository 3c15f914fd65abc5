"""What per-epoch reporting costs packed cheap points: the default poison grid (81 points, 200 epochs, 21 points per
Ray trial) reporting every epoch against reporting final metrics only, end to end, side by side in one run; aim:
at most 10 % more.

Both launches compute the same points with the built-in study's batched ``run_points`` and differ only in what
they report:

* final only (``epoch_reporting:FINAL``): each point's final metrics, no history at all;
* every epoch (``epoch_reporting:EPOCHS``, ``reports_epochs=True``): each point also reports its 200 epochs through
  ``context.point_hooks[i].epoch_end`` (the batched trainer knows the epoch losses when the batch ends, so they are
  reported then), which the launcher keeps as the run's ``train_loss`` history and writes with the point's result.

Each launch runs in a fresh process (``python -m tune_jobs``, local Ray, a fresh SQLite store), in the order
final, epochs, epochs, final, ... (``--repeats`` pairs); the ratio is of the summed times.  On a loaded machine
launches of ~30 s vary by several seconds, more than the difference, so the benchmark also measures the difference
itself in this process, in CPU time (which other work on the machine hardly changes): the 81 points' results
recorded as a worker records them (``PointRun.finish`` on a fresh SQLite store), final metrics only against the
epochs reported through an ``EpochRecorder`` and written as histories.

    python benchmarks/epoch_reporting.py              # 4 pairs (about 2.5 minutes here)
    python benchmarks/epoch_reporting.py --repeats 1
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.point import PointContext  # noqa: E402
from core.studies.poison_sensitivity import run_point, run_points  # noqa: E402
from tune_jobs.studies.poison_sensitivity import STUDY as POISON  # noqa: E402


def _final_only(result):
    result.histories = {}
    return result


def _report_epochs(result, hooks):
    for epoch, loss in enumerate(result.histories.pop("train_loss")):
        hooks.epoch_end(epoch, {"train_loss": loss}, dict)
    return result


def final_point(config, context):
    return _final_only(run_point(config, context))


def final_points(configs, context):
    return [_final_only(result) for result in run_points(configs, context)]


def epoch_point(config, context):
    return _report_epochs(run_point(config, context), context.hooks)


def epoch_points(configs, context):
    return [_report_epochs(result, hooks) for result, hooks in zip(run_points(configs, context), context.point_hooks)]


FINAL = dataclasses.replace(POISON, name="poison_final_only", run_point=final_point, run_points=final_points,
                            analysis=None)
EPOCHS = dataclasses.replace(POISON, name="poison_epochs", run_point=epoch_point, run_points=epoch_points,
                             analysis=None, reports_epochs=True)


def launch(ref: str, workdir: Path) -> float:
    """Seconds for ``python -m tune_jobs REF`` over the default grid in a fresh process (raises if it fails)."""
    workdir.mkdir(parents=True)
    command = [sys.executable, "-m", "tune_jobs", ref, "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}",
               "--storage-path", str(workdir / "ray")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")]))
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    (workdir / "launcher.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or "81/81 grid points finished" not in proc.stdout:
        raise SystemExit(f"{ref} failed (status {proc.returncode}); log: {workdir / 'launcher.log'}\n"
                         + proc.stdout[-2000:] + proc.stderr[-2000:])
    return elapsed


def logged_steps(workdir: Path, experiment: str) -> tuple[int, int]:
    """Points recorded, and the metric values (all steps) one of them holds."""
    from mlflow.tracking import MlflowClient

    from record import schema
    from record.runs import search_all_runs

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = search_all_runs(client, [experiment_id], f"tags.`{schema.TAG_KIND}` = '{schema.KIND_POINT}'")
    run = runs[0]
    return len(runs), sum(len(client.get_metric_history(run.info.run_id, key)) for key in run.data.metrics)


def record_cost(folder: Path) -> dict[str, float]:
    """CPU seconds to record the default grid's 81 results as a Ray trial does, final only and with every epoch."""
    from mlflow.tracking import MlflowClient

    from record.write import SweepWriter, create_sweep
    from tune_jobs.point_run import EpochRecorder, PointRun

    configs = POISON.points(POISON.grid, POISON.defaults())
    results = [result for start in range(0, len(configs), 21) for result in run_points(configs[start:start + 21],
                                                                                        PointContext())]
    uri = f"sqlite:///{folder / 'cost.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("cost")
    costs = {}
    for name in ("FINAL", "EPOCHS", "FINAL", "EPOCHS"):
        sweep_id = create_sweep(client, experiment_id, study="cost", run_name=name, command="", fixed={}, grid={},
                                n_points=len(configs), param_types={})
        writer = SweepWriter(uri, experiment_id, sweep_id, "cost")
        started = time.process_time()
        for config, result in zip(configs, results):
            final = dataclasses.replace(result, histories={})
            if name == "EPOCHS":
                hooks = EpochRecorder()
                for epoch, loss in enumerate(result.histories["train_loss"]):
                    hooks.epoch_end(epoch, {"train_loss": loss}, dict)
                final = hooks.merged(final)
            PointRun(writer, POISON.point_key(config), POISON.params(config), "bench", None).finish(final)
        costs[name] = costs.get(name, 0.0) + (time.process_time() - started) / 2
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=4, help="pairs of launches (default: 4)")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"FINAL": [], "EPOCHS": []}
    with tempfile.TemporaryDirectory() as tmp:
        order = [name for i in range(args.repeats) for name in (("FINAL", "EPOCHS") if i % 2 == 0
                                                                 else ("EPOCHS", "FINAL"))]
        for index, name in enumerate(order):
            workdir = Path(tmp) / f"{index}-{name.lower()}"
            seconds = launch(f"epoch_reporting:{name}", workdir)
            times[name].append(seconds)
            points, values = logged_steps(workdir, (FINAL if name == "FINAL" else EPOCHS).name)
            print(f"{'final only' if name == 'FINAL' else 'every epoch':12s} {seconds:6.1f} s  ({points} point runs, "
                  f"{values} metric values in each)", flush=True)
        print("recording the 81 results in this process (CPU time, mean of 2 each) ...", flush=True)
        costs = record_cost(Path(tmp))
    added = costs["EPOCHS"] - costs["FINAL"]
    print(f"recording 81 results: final only {costs['FINAL']:.2f} s CPU, every epoch {costs['EPOCHS']:.2f} s CPU: "
          f"+{1000 * added / 81:.1f} ms per point, {added:.2f} s per launch (on 2 workers ~{added / 2:.2f} s of wall "
          f"time, {added / 2 / (sum(times['FINAL']) / len(times['FINAL'])):.1%} of a final-only launch here)")
    final, epochs = sum(times["FINAL"]), sum(times["EPOCHS"])
    overhead = epochs / final - 1
    print(f"\nper-epoch reporting of packed points at the default poison grid (81 points x 200 epochs): "
          f"{epochs / len(times['EPOCHS']):.1f} s against final-only {final / len(times['FINAL']):.1f} s per launch, "
          f"ratio {epochs / final:.3f} ({overhead:+.1%}); aim <= +10%: {'met' if overhead <= 0.10 else 'NOT met'}")


if __name__ == "__main__":
    main()
