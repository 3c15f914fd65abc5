"""A researcher's own study, outside the repository: README's example end to end, and the study contract."""

import json
import os
import re
import shlex
import subprocess
import textwrap

import pytest
from mlflow.tracking import MlflowClient

from conftest import PYTHON, ROOT, python_env
from record import schema
from record.runs import point_runs, search_all_runs, sweep_runs
from tune_jobs.runner import main

EXAMPLE_MARKER = "<!-- example: my_studies/layer_depth.py -->"
EPOCHS_EXAMPLE_MARKER = "<!-- example: my_studies/label_smoothing.py -->"


def readme_example(marker: str = EXAMPLE_MARKER) -> str:
    """The code block README gives after an example marker, verbatim."""
    text = (ROOT / "README.md").read_text()
    match = re.search(re.escape(marker) + r"\s*```python\n(.*?)```", text, re.S)
    assert match, f"README lost its example ({marker})"
    return match.group(1)


def write_package(root, name: str, modules: dict[str, str]):
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for module, source in modules.items():
        (package / f"{module}.py").write_text(textwrap.dedent(source))
    return package


def test_readme_example_runs_from_a_package_outside_the_repository(tmp_path):
    source = readme_example()
    assert len(source.splitlines()) < 80
    work = tmp_path / "research"  # the user's own folder: not the repository, not on robustlab's path
    write_package(work, "my_studies", {"layer_depth": source})
    out = work / "results"
    uri = f"sqlite:///{work / 'mlflow.db'}"
    command = [PYTHON, "-m", "tune_jobs", "my_studies.layer_depth",
               "--grid", "poison_fraction=0,0.1,0.3,0.5", "--grid", "n_hidden_layers=1,2", "--grid", "seed=1,2",
               "--set", "epochs=60", "--tracking-uri", uri, "--storage-path", str(work / "ray"),
               "--analyze", str(out)]
    proc = subprocess.run(command, cwd=work, env=python_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "16/16 grid points finished" in proc.stdout and "passed, 0 failed" in proc.stdout

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("layer_depth")
    runs = search_all_runs(client, [experiment.experiment_id], f"tags.`{schema.TAG_KIND}` = '{schema.KIND_POINT}'")
    assert len(runs) == 16 and all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.params["n_hidden_layers"] for r in runs} == {"1", "2"}
    assert all(r.data.tags[schema.TAG_STUDY] == "layer_depth" for r in runs)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["depths"]) == {"1", "2"} and summary["n_finished_runs"] == 16
    assert (out / "accuracy_vs_poison.png").stat().st_size > 0

    resumed = subprocess.run(command[:command.index("--analyze")] + ["--resume"], cwd=work, env=python_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and "(16 already finished)" in resumed.stdout, resumed.stdout[-2000:]

    # the recorded line runs the launch again from any folder, in a shell without this test's environment
    (sweep,) = sweep_runs(client, experiment.experiment_id)
    rerun = sweep.data.tags[schema.TAG_RERUN]
    assert rerun in proc.stdout and sweep.data.tags[schema.TAG_IMPORT_ROOT] == str(work)
    (tmp_path / "elsewhere").mkdir()
    shell_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    again = subprocess.run(["bash", "-c", rerun], cwd=tmp_path / "elsewhere", env=shell_env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    first, second = (sorted((r.data.tags[schema.TAG_POINT], r.data.metrics["test_acc"]) for r in point_runs(
        client, experiment.experiment_id, s.info.run_id)) for s in reversed(sweep_runs(client, experiment.experiment_id)))
    assert len(first) == 16 and first == second, "the same launch, the same numbers"


def test_readme_second_example_reports_epochs_is_analysed_searched_with_asha_and_reruns_anywhere(tmp_path):
    """README's second example verbatim from a package outside the repository: a reduced grid with --analyze
    (packed points with per-epoch histories, the generic analysis), then README's ASHA search over its main axis,
    whose recorded command, pasted in another folder without this environment, gives the same numbers."""
    source = readme_example(EPOCHS_EXAMPLE_MARKER)
    assert len(source.splitlines()) < 80
    work = tmp_path / "research"
    write_package(work, "my_studies", {"label_smoothing": source})
    uri = f"sqlite:///{work / 'mlflow.db'}"
    common = ["--tracking-uri", uri, "--storage-path", str(work / "ray")]
    grid = [PYTHON, "-m", "tune_jobs", "my_studies.label_smoothing", "--grid", "smoothing=0,0.1,0.3", "--grid",
            "poison_fraction=0.4", "--grid", "seed=1,2", "--set", "epochs=10", "--experiment", "ls-grid",
            "--analyze", str(work / "grid"), *common]
    proc = subprocess.run(grid, cwd=work, env=python_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "6 grid points (0 already finished) in 2 Ray trials" in proc.stdout and "passed, 0 failed" in proc.stdout
    assert not re.search(r"\] epoch ", proc.stdout), "no console line per epoch for packed points"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("ls-grid")
    runs = search_all_runs(client, [experiment.experiment_id], f"tags.`{schema.TAG_KIND}` = '{schema.KIND_POINT}'")
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert sorted(m.step for m in history) == list(range(10))
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 10
    summary = json.loads((work / "grid" / "summary.json").read_text())
    trend = summary["trends"]["0.4"]
    assert trend["n"] == 3 and trend["r_boot"] is not None and summary["intervals"]["available"]
    (parent,) = sweep_runs(client, experiment.experiment_id)
    assert parent.data.metrics["test_acc_vs_smoothing_r_poison_fraction0.4"] == trend["r"]
    assert (work / "grid" / "test_acc_vs_smoothing.png").stat().st_size > 0

    commands = re.search(re.escape(EPOCHS_EXAMPLE_MARKER) + r".*?```bash\n(.*?)```", (ROOT / "README.md").read_text(),
                         re.S).group(1)
    search = shlex.split(commands.split("\n", 1)[1].split("#")[0].replace("\\\n", " "))
    assert search[:4] == ["python", "-m", "tune_jobs", "my_studies.label_smoothing"] and "asha" in search
    search = [PYTHON, *search[1:], "--max-concurrent", "1", *common]  # one at a time: ASHA decides in one order
    proc = subprocess.run(search, cwd=work, env=python_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "8/8 points finished" in proc.stdout and "passed, 0 failed" in proc.stdout
    experiment = client.get_experiment_by_name("label_smoothing")
    (sweep,) = sweep_runs(client, experiment.experiment_id)
    assert sweep.data.params["space.smoothing"] == "uniform(0.0,0.5)" and sweep.data.params["scheduler"] == "asha"

    def outcome(sweep_id):  # every point's val_acc per epoch and whether ASHA stopped it
        return sorted((r.data.tags[schema.TAG_POINT], r.data.tags.get(schema.TAG_STOPPED),
                       [m.value for m in sorted(client.get_metric_history(r.info.run_id, "val_acc"),
                                                key=lambda m: m.step)])
                      for r in point_runs(client, experiment.experiment_id, sweep_id))

    first = outcome(sweep.info.run_id)
    assert len(first) == 8 and any(stopped for _, stopped, _ in first), "ASHA stopped some points"
    assert all(len(values) == (int(stopped) if stopped else 40) for _, stopped, values in first)
    rerun = sweep.data.tags[schema.TAG_RERUN]
    assert rerun in proc.stdout
    (tmp_path / "elsewhere").mkdir()
    shell_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    again = subprocess.run(["bash", "-c", rerun], cwd=tmp_path / "elsewhere", env=shell_env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    newest = sweep_runs(client, experiment.experiment_id)[0]
    assert newest.info.run_id != sweep.info.run_id
    assert outcome(newest.info.run_id) == first, "the same launch, the same numbers"


def test_unknown_study_lists_the_built_in_ones(tmp_path):
    for ref, message in (("poison_sensitivty", "unknown study 'poison_sensitivty'; built-in: adversarial_scaling, "
                                               "poison_sensitivity, robust_loss"),
                         ("nowhere.my_study", "no module 'nowhere.my_study' on the Python path")):
        proc = subprocess.run([PYTHON, "-m", "tune_jobs", ref, "--help"], cwd=tmp_path, env=python_env(),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


BARE_STUDY = """
    from dataclasses import dataclass

    from core.point import PointResult
    from tune_jobs.study import Study


    @dataclass(frozen=True)
    class Config:
        x: int = 1


    def run_point(config, context):
        return PointResult(metrics={"y": float(config.x)})


    STUDY = Study(name="bare", description="no analysis", config_type=Config, grid={"x": (1, 2)},
                  run_point=run_point, metrics=("y",))
    LIAR = Study(name="liar", description="declares a metric it never reports", config_type=Config,
                 grid={"x": (1, 2)}, run_point=run_point, metrics=("y", "z"))
"""


def test_a_study_without_analysis_runs_and_refuses_analyze_before_ray(tmp_path):
    write_package(tmp_path, "bare_pkg", {"bare": BARE_STUDY})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    refused = subprocess.run([PYTHON, "-m", "tune_jobs", "bare_pkg.bare", "--tracking-uri", uri, "--analyze", "out"],
                             cwd=tmp_path, env=python_env(), capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--analyze: study 'bare' declares no analysis" in refused.stderr
    assert not (tmp_path / "mlflow.db").exists(), "refused before anything was created"
    ran = subprocess.run([PYTHON, "-m", "tune_jobs", "bare_pkg.bare", "--tracking-uri", uri,
                          "--storage-path", str(tmp_path / "ray")], cwd=tmp_path, env=python_env(),
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0 and "2/2 grid points finished" in ran.stdout, ran.stdout[-2000:] + ran.stderr[-2000:]


def test_a_config_field_with_no_default_outside_the_grid_is_named_even_for_help(tmp_path):
    source = BARE_STUDY.split("    LIAR = ")[0].replace("        x: int = 1\n", "        width: int\n        x: int = 1\n")
    write_package(tmp_path, "nodefault_pkg", {"study": source})
    proc = subprocess.run([PYTHON, "-m", "tune_jobs", "nodefault_pkg.study", "--help"], cwd=tmp_path,
                          env=python_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "config field 'width' has no default and is not a grid dimension" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_a_result_without_a_declared_metric_fails_its_point_naming_it(store, monkeypatch):
    write_package(store["dir"], "liar_pkg", {"liar": BARE_STUDY})
    monkeypatch.syspath_prepend(str(store["dir"]))  # the driver imports it; Ray's workers get the cwd (store["dir"])
    status = main("liar_pkg.liar:LIAR", ["--tracking-uri", store["uri"], "--storage-path", store["ray"]])
    assert status == 1
    client = MlflowClient(store["uri"])
    runs = search_all_runs(client, [client.get_experiment_by_name("liar").experiment_id],
                           f"tags.`{schema.TAG_KIND}` = '{schema.KIND_POINT}'")
    assert len(runs) == 2 and all(r.info.status == "FAILED" for r in runs)
    assert all("lacks declared metric(s) 'z'" in r.data.tags[schema.TAG_ERROR] for r in runs)


@pytest.mark.parametrize("ref", ["poison_sensitivity", "tune_jobs.studies.poison_sensitivity",
                                 "tune_jobs.studies.poison_sensitivity:STUDY"])
def test_the_three_forms_of_a_study_reference_name_the_same_study(ref):
    from tune_jobs.study import load_study

    assert load_study(ref) is load_study("poison_sensitivity")


BATCHING_STUDY = """
    from dataclasses import dataclass

    from core.point import PointResult
    from tune_jobs.study import Study


    @dataclass(frozen=True)
    class Config:
        x: int = 1


    def run_point(config, context):
        if config.x == 3:
            raise ValueError("x=3 is refused")
        return PointResult(metrics={"y": float(config.x)})


    def run_points(configs, context):  # tells its results apart from run_point's, to show which one ran
        if any(c.x == 3 for c in configs):
            raise RuntimeError("one bad point spoils the batch")
        return [PointResult(metrics={"y": 10.0 * c.x}) for c in configs]


    STUDY = Study(name="batching", description="points computed together", config_type=Config,
                  grid={"x": (1, 2, 3, 4)}, run_point=run_point, run_points=run_points, metrics=("y",),
                  points_per_trial=2)
"""


def test_points_computed_together_are_recorded_one_run_each_and_a_failed_batch_runs_its_points_alone(
        store, monkeypatch, capsys):
    write_package(store["dir"], "batching_pkg", {"batching": BATCHING_STUDY})
    monkeypatch.syspath_prepend(str(store["dir"]))
    status = main("batching_pkg.batching", ["--max-concurrent", "1", "--tracking-uri", store["uri"],
                                            "--storage-path", store["ray"]])
    assert status == 1  # x=3 fails
    client = MlflowClient(store["uri"])
    runs = search_all_runs(client, [client.get_experiment_by_name("batching").experiment_id],
                           f"tags.`{schema.TAG_KIND}` = '{schema.KIND_POINT}'")
    by_x = {r.data.params["x"]: r for r in runs}
    assert len(runs) == 4 and set(by_x) == {"1", "2", "3", "4"}
    # Ray trials of two points: x=1,2 computed together; x=3,4's batch raised, so each ran alone
    assert [by_x[x].data.metrics.get("y") for x in ("1", "2", "4")] == [10.0, 20.0, 4.0]
    assert [by_x[x].info.status for x in ("1", "2", "3", "4")] == ["FINISHED", "FINISHED", "FAILED", "FINISHED"]
    assert by_x["3"].data.tags[schema.TAG_ERROR] == "ValueError: x=3 is refused"
    # one console line per point, those computed together (reported to Ray Tune as one result) too
    lines = [line for line in capsys.readouterr().out.splitlines() if re.match(r"\[\d/4 ", line)]
    assert [re.sub(r"^\[(\d)/4 .*?\] (\w+) +(x=\d).*", r"\1 \2 \3", line) for line in lines] == [
        "1 finished x=1", "2 finished x=2", "3 failed x=3", "4 finished x=4"]
