"""Every run says where it came from: the command to run it again, the git commit (and whether the tree had
changes), the user, the versions; the experiment opens on its training runs in the MLflow UI."""

import json
import shlex
import subprocess

from mlflow.tracking import MlflowClient

from conftest import PYTHON, ROOT, python_env
from record import schema
from record.runs import search_all_runs, sweep_runs
from record.provenance import git_state

GRID = ["--grid", "poison_fraction=0,0.2", "--grid", "hidden_width=8", "--grid", "seed=1", "--set", "epochs=20"]


def _git(folder, *args):
    subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"})


def test_git_state_reads_the_commit_and_the_changes_of_a_repository(tmp_path):
    assert git_state(tmp_path) is None, "not a repository"
    _git(tmp_path, "init", "-q")
    (tmp_path / "study.py").write_text("A = 1\n")
    _git(tmp_path, "add", "study.py")
    _git(tmp_path, "commit", "-q", "-m", "first")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert git_state(tmp_path) == (head.strip(), False)
    (tmp_path / "study.py").write_text("A = 2\n")
    assert git_state(tmp_path) == (head.strip(), True)


def test_runs_carry_provenance_and_the_recorded_command_runs_again(store):
    uri = store["uri"]
    proc = subprocess.run([PYTHON, "-m", "tune_jobs", "poison_sensitivity", *GRID, "--tracking-uri", uri,
                           "--storage-path", store["ray"]], cwd=store["dir"], env=python_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("poison_sensitivity")
    assert experiment.tags[schema.TAG_EXPERIMENT_KIND] == schema.EXPERIMENT_KIND_TRAINING
    link = f"#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
    assert link in proc.stdout, "the launch prints the UI link that opens the training runs"
    (parent,) = sweep_runs(client, experiment.experiment_id)
    children = search_all_runs(client, [experiment.experiment_id], schema.POINT_FILTER)
    commit, dirty = git_state(ROOT)
    for run in (parent, *children):
        tags = run.data.tags
        assert tags[schema.TAG_GIT_COMMIT] == commit and tags[schema.TAG_GIT_DIRTY] == str(dirty).lower()
        assert tags[schema.TAG_SOURCE_NAME] == "python -m tune_jobs poison_sensitivity" and tags[schema.TAG_USER]
        versions = json.loads(tags[schema.TAG_VERSIONS])
        assert {"python", "torch", "ray", "mlflow"} <= set(versions)
    assert parent.data.tags[schema.TAG_NOTE].startswith("**poison_sensitivity**")
    command = parent.data.tags[schema.TAG_COMMAND]
    assert command.startswith("python -m tune_jobs poison_sensitivity --grid poison_fraction=0,0.2")

    analysis = subprocess.run([PYTHON, "-m", "analysis.poison_sensitivity", "--tracking-uri", uri, "--out", "out"],
                              cwd=store["dir"], env=python_env(), capture_output=True, text=True, timeout=300)
    assert analysis.returncode == 0, analysis.stderr[-3000:]
    (run,) = search_all_runs(client, [experiment.experiment_id], f"tags.`{schema.TAG_KIND}` = 'analysis'")
    tags = run.data.tags
    assert tags[schema.TAG_SOURCE_NAME] == "python -m analysis.poison_sensitivity"
    assert tags[schema.TAG_COMMAND] == f"python -m analysis.poison_sensitivity --tracking-uri {uri} --out out"
    assert tags[schema.TAG_GIT_COMMIT] == commit and tags[schema.TAG_USER] and tags[schema.TAG_HOST]

    again = shlex.split(command)
    again = subprocess.run([PYTHON, *again[1:]], cwd=store["dir"], env=python_env(), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(sweep_runs(client, experiment.experiment_id)) == 2


def test_readme_query_returns_one_sweeps_points_only(store):
    import re

    text = (ROOT / "README.md").read_text()
    example = re.search(r"<!-- example: query one sweep -->\s*```python\n(.*?)```", text, re.S).group(1)
    grid = ["--grid", "poison_fraction=0,0.2", "--grid", "hidden_width=8,128", "--grid", "seed=1,2",
            "--set", "epochs=10"]
    from tune_jobs.runner import main

    for _ in range(2):  # two sweeps in the experiment (the default store in the test's folder, launched in this
        # process: no interpreter and imports per launch): the query must still return one sweep's 4 points
        assert main("poison_sensitivity", [*grid, "--storage-path", store["ray"]]) == 0
    assert (store["dir"] / "mlruns" / "mlflow.db").exists(), "the launches wrote the default store the example reads"
    # verbatim, in a fresh interpreter in the folder the launches ran in (in this process, MLflow would reuse a store
    # it opened for the same relative URI in another test's folder)
    check = "\nassert len(runs) == 4 and set(runs['tags.robustlab.sweep_id']) == {sweep.run_id}\nprint('one sweep')"
    proc = subprocess.run([PYTHON, "-c", example + check], cwd=store["dir"], env=python_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "one sweep" in proc.stdout, proc.stdout + proc.stderr[-2000:]
