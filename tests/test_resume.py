"""Whatever stopped a launch, ``--resume`` with the same ``--storage-path`` continues it exactly once: one FINISHED
run per point, with the numbers the point gives uninterrupted (its own ``run_point``, computed here).

Each fault is real (a SIGKILLed Ray worker, Ctrl-C, SIGKILL of the launcher's process group, an artifact store
that cannot be written); each study is launched as a user would, in a fresh process. The own study's config holds
tuple, nested tuple, list, bool and None fields: Ray Tune restores its saved trials from JSON, where a tuple would
come back a list (robust_loss's Ctrl-C case is in test_failures_and_resume.py).
"""

import os
import signal
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from conftest import PYTHON, python_env
from core.point import PLAIN
from record import schema
from test_hardening import launch, read_only_mount_prefix, runs, statuses, wait_for
from test_own_study import write_package
from tune_jobs.cli import parse_launch
from tune_jobs.study import load_study

SHAPES = '''
"""A study whose config holds every field type a study may declare; a point sleeps, then sums its fields."""

import time
from dataclasses import dataclass, field

from core.point import PointResult
from tune_jobs.study import Study


@dataclass(frozen=True)
class ShapesConfig:
    seed: int = 0
    widths: tuple[int, ...] = (4, 8)
    pairs: tuple[tuple[str, float], ...] = (("a", 0.5), ("b", 2.0))
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    flag: bool = True
    note: str | None = None
    seconds: float = 0.5

    def __post_init__(self):
        for name, kind in (("widths", tuple), ("pairs", tuple), ("sizes", list), ("flag", bool)):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"{name} must be a {kind.__name__}, got {getattr(self, name)!r}")
        if not all(isinstance(pair, tuple) for pair in self.pairs):
            raise ValueError(f"pairs must hold tuples, got {self.pairs!r}")

    def params(self):
        return {"seed": self.seed, "widths": self.widths, "pair_names": tuple(n for n, _ in self.pairs),
                "sizes": tuple(self.sizes), "flag": self.flag, "seconds": self.seconds}


def run_point(config, context):
    time.sleep(config.seconds)
    value = (config.seed + sum(config.widths) + sum(v for _, v in config.pairs) + sum(config.sizes)
             + config.flag + (config.note is None))
    return PointResult(metrics={"value": float(value)}, histories={"value_so_far": [0.0, float(value)]})


STUDY = Study(name="shapes", description="Every field type.", config_type=ShapesConfig,
              grid={"seed": tuple(range(10))}, run_point=run_point, metrics=("value",))
'''


def _own_study(tmp_path, monkeypatch):
    """The study's package outside the repository, importable here and in the launches (the env to give them)."""
    write_package(tmp_path / "pkgs", "shapes_study", {"shapes": SHAPES})
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    env = dict(python_env())
    env["PYTHONPATH"] = f"{tmp_path / 'pkgs'}{os.pathsep}{env['PYTHONPATH']}"
    return env


def _check_exactly_once(uri, experiment, ref, argv):
    """One FINISHED run per point of the launch ``argv``, with the metrics its own ``run_point`` gives, and every
    history's steps exactly once."""
    study = load_study(ref)
    launch_ = parse_launch(study, [*argv, "--tracking-uri", uri])
    finished = [r for r in runs(uri, experiment) if r.info.status == "FINISHED"]
    by_point = {r.data.tags[schema.TAG_POINT]: r for r in finished}
    assert len(finished) == len(by_point) == len(launch_.points), sorted(by_point)

    client = MlflowClient(uri)
    for config in launch_.points:
        run, expected = by_point[launch_.point_key(config)], study.run_point(config, PLAIN)
        for key, value in expected.metrics.items():
            assert run.data.metrics[key] == value, (launch_.point_key(config), key)
        for key, history in expected.histories.items():
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == (sorted(history) if isinstance(history, dict) else list(range(len(history)))), (
                key, steps)
    assert statuses(uri, experiment, schema.KIND_SWEEP) == ["FINISHED"]


def _interrupt(command_args, store, log, experiment, how, after_finished, env=None):
    """Launch, wait until ``after_finished`` points finished, then stop the launch ``how``; its exit status."""
    driver = subprocess.Popen([PYTHON, "-m", "tune_jobs", *command_args], cwd=store["dir"], env=env or python_env(),
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: sum(s == "FINISHED" for s in statuses(store["uri"], experiment)) >= after_finished, 300,
                 f"{after_finished} finished points")
        assert driver.poll() is None, "the launch must still be running when it is stopped"
        if how == "ctrl-c":
            os.killpg(driver.pid, signal.SIGINT)
        elif how == "sigkill-group":
            os.killpg(driver.pid, signal.SIGKILL)
        elif how == "worker-sigkill":
            workers = subprocess.run(["pgrep", "-s", str(driver.pid), "-f", "ray::ImplicitFunc"],
                                     capture_output=True, text=True).stdout.split()
            assert workers, "the Ray trials' worker processes"
            for worker in workers:
                os.kill(int(worker), signal.SIGKILL)
        return driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()


@pytest.mark.parametrize("how", ["ctrl-c", "sigkill-group"])
def test_an_own_study_with_every_field_type_resumes_exactly_once(store, tmp_path, monkeypatch, how):
    env = _own_study(tmp_path, monkeypatch)
    argv = ["--points-per-trial", "1", "--experiment", how]
    common = ["--tracking-uri", store["uri"], "--storage-path", store["ray"]]
    with open(tmp_path / "launch.log", "w+") as log:
        status = _interrupt(["shapes_study.shapes", *argv, *common], store, log, how, how, after_finished=3, env=env)
    assert status != 0
    resumed = launch(["shapes_study.shapes", *argv, *common, "--resume", *(["--force"] if "kill" in how else [])],
                     store["dir"], env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "restoring the Ray Tune experiment" in resumed.stdout
    _check_exactly_once(store["uri"], how, "shapes_study.shapes", argv)


def test_poison_sensitivity_after_its_ray_workers_were_killed(store, tmp_path):
    argv = ["--grid", "poison_fraction=0,0.3", "--grid", "hidden_width=8", "--grid", "seed=1,2", "--set",
            "epochs=6000", "--points-per-trial", "1", "--experiment", "killed"]
    common = ["--tracking-uri", store["uri"], "--storage-path", store["ray"]]
    with open(tmp_path / "launch.log", "w+") as log:
        assert _interrupt(["poison_sensitivity", *argv, *common], store, log, "killed", "worker-sigkill",
                          after_finished=1) == 1
    resumed = launch(["poison_sensitivity", *argv, *common, "--resume"], store["dir"])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    _check_exactly_once(store["uri"], "killed", "poison_sensitivity", argv)


def test_adversarial_scaling_after_its_launchers_process_group_was_killed(store, tmp_path):
    argv = ["--grid", "dataset=circles", "--grid", "hidden_width=4,8", "--grid", "seed=1,2", "--set",
            "max_epochs=150", "--set", "patience=150", "--points-per-trial", "1", "--experiment", "group"]
    common = ["--tracking-uri", store["uri"], "--storage-path", store["ray"]]
    with open(tmp_path / "launch.log", "w+") as log:
        assert _interrupt(["adversarial_scaling", *argv, *common], store, log, "group", "sigkill-group",
                          after_finished=1) == -signal.SIGKILL
    assert "RUNNING" in statuses(store["uri"], "group", schema.KIND_SWEEP)
    resumed = launch(["adversarial_scaling", *argv, *common, "--resume", "--force"], store["dir"])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    _check_exactly_once(store["uri"], "group", "adversarial_scaling", argv)


def test_robust_loss_after_its_artifact_store_could_not_be_written(store, tmp_path):
    argv = ["--grid", "loss=cross_entropy,generalized_ce", "--grid", "seed=42", "--set", "epochs=2",
            "--system-metrics", "0", "--experiment", "artifacts"]
    common = ["--tracking-uri", store["uri"], "--storage-path", store["ray"]]
    artifacts = store["dir"] / "experiment-artifacts"
    artifacts.mkdir()
    MlflowClient(store["uri"]).create_experiment("artifacts", artifact_location=artifacts.as_uri())
    prefix = read_only_mount_prefix(artifacts)
    refused = subprocess.run([*prefix, PYTHON, "-m", "tune_jobs", "robust_loss", *argv, *common], cwd=store["dir"],
                             env=python_env(), capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and f"the artifact store {artifacts.as_uri()}" in refused.stderr, refused.stderr
    assert statuses(store["uri"], "artifacts", schema.KIND_SWEEP) == ["FAILED"]
    resumed = launch(["robust_loss", *argv, *common, "--resume"], store["dir"])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    _check_exactly_once(store["uri"], "artifacts", "robust_loss", argv)
