"""One analysis entry point, ``python -m analysis STUDY_OR_REF``, for built-in and own studies; the older commands
as its aliases (real launches, real SQLite MLflow, real processes)."""

import json
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from conftest import PYTHON, python_env
from record import schema
from record.runs import search_all_runs
from test_own_study import readme_example, write_package

pytestmark = pytest.mark.xdist_group(__name__)  # its module fixture: computed once, on one worker

#: A second module of the user's package: the analysis declared apart, the study carrying it, a module name that
#: is not the study's.
DECLARED = """
    import dataclasses

    from analysis.poison_sensitivity import make_analysis
    from my_studies.layer_depth import STUDY as BASE

    ANALYSIS = make_analysis(size="n_hidden_layers", label="depth")
    STUDY = dataclasses.replace(BASE, analysis=ANALYSIS)
"""


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """One store with a small poison_sensitivity sweep and a small sweep of README's own study, each launched with
    ``python -m tune_jobs`` from the user's folder (outside the repository)."""
    work = tmp_path_factory.mktemp("research")
    write_package(work, "my_studies", {"layer_depth": readme_example(), "declared": DECLARED})
    uri = f"sqlite:///{work / 'mlflow.db'}"
    for ref, grid in (("poison_sensitivity", ["--grid", "hidden_width=8"]),
                      ("my_studies.layer_depth", ["--grid", "n_hidden_layers=1"])):
        proc = subprocess.run([PYTHON, "-m", "tune_jobs", ref, *grid, "--grid", "poison_fraction=0.0,0.3",
                               "--grid", "seed=42", "--set", "epochs=5", "--tracking-uri", uri,
                               "--storage-path", str(work / "ray")],
                              cwd=work, env=python_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"dir": work, "uri": uri}


def analysis(sweeps, *args):
    return subprocess.run([PYTHON, "-m", *args], cwd=sweeps["dir"], env=python_env(), capture_output=True,
                          text=True, timeout=300)


def test_a_built_in_study_analysed_logged_and_validated(sweeps):
    out = sweeps["dir"] / "ps"
    proc = analysis(sweeps, "analysis", "poison_sensitivity", "--tracking-uri", sweeps["uri"], "--out", str(out),
                    "--validate")
    # one seed and two fractions: the analysis is written and logged, and the checks say what is missing
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[PASS] all grid points finished: 2/2 finished" in proc.stdout
    assert "[FAIL] standard deviations reported: 0/2 aggregate points have a std over >1 seed" in proc.stdout
    assert "failing checks: " in proc.stdout and f"outputs in {out}/: summary.json" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["study"] == "poison_sensitivity" and summary["n_finished_runs"] == 2
    assert [p["test_acc_std"] for p in summary["aggregate"]] == [None, None], "no std over one seed, not 0"
    client = MlflowClient(sweeps["uri"])
    experiment = client.get_experiment_by_name("poison_sensitivity")
    (run,) = search_all_runs(client, [experiment.experiment_id], f"tags.`{schema.TAG_KIND}` = 'analysis'")
    assert run.data.tags[schema.TAG_SOURCE_NAME] == "python -m analysis poison_sensitivity"
    assert run.data.tags[schema.TAG_COMMAND] == (f"python -m analysis poison_sensitivity --tracking-uri "
                                                 f"{sweeps['uri']} --out {out} --validate")


def test_an_own_study_by_the_reference_the_launcher_takes(sweeps):
    out = sweeps["dir"] / "depth"
    proc = analysis(sweeps, "analysis", "my_studies.layer_depth", "--tracking-uri", sweeps["uri"], "--out", str(out),
                    "--no-log")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["study"] == "layer_depth" and set(summary["depths"]) == {"1"}
    # module:ATTR naming the analysis itself, in a module not named after the study (this exited 2)
    for ref in ("my_studies.declared:ANALYSIS", "my_studies.declared"):
        proc = analysis(sweeps, "analysis.validate", ref, "--tracking-uri", sweeps["uri"])
        assert proc.returncode == 1 and "validating layer_depth sweep" in proc.stdout, (ref, proc.stderr[-2000:])
        assert "[PASS] all grid points finished: 2/2 finished" in proc.stdout
    assert not any(p.name == "results" for p in sweeps["dir"].iterdir()), "validation writes no files"


def test_the_old_commands_are_aliases_with_their_flags_and_exit_codes(sweeps):
    out = sweeps["dir"] / "alias"
    proc = analysis(sweeps, "analysis.poison_sensitivity", "--tracking-uri", sweeps["uri"], "--out", str(out),
                    "--no-log")
    assert proc.returncode == 0 and (out / "sigmoid_fits.csv").exists(), proc.stderr[-3000:]
    assert "Findings:" in proc.stdout and "validation of sweep" not in proc.stdout
    proc = analysis(sweeps, "analysis.validate", "poison_sensitivity", "--tracking-uri", sweeps["uri"])
    assert proc.returncode == 1 and "validating poison_sensitivity sweep" in proc.stdout
    assert "2 finished runs" in proc.stdout and "failing checks:" in proc.stdout
    proc = analysis(sweeps, "analysis.adversarial_scaling", "--tracking-uri", sweeps["uri"])  # its own experiment
    assert proc.returncode == 2 and "error: no experiment 'adversarial_scaling'" in proc.stderr, proc.stderr[-2000:]
    proc = analysis(sweeps, "analysis.validate", "robust_loss", "--tracking-uri", sweeps["uri"],
                    "--experiment", "poison_sensitivity")
    assert proc.returncode == 2 and "no robust_loss sweep in experiment 'poison_sensitivity'" in proc.stderr
    proc = analysis(sweeps, "analysis.robust_loss", "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m analysis.robust_loss")
    assert "--out OUT" in proc.stdout and "default: results/robust_loss" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["nosuchstudy"], "error: unknown study 'nosuchstudy'; built-in: adversarial_scaling, poison_sensitivity, "
                      "robust_loss; or give package.module (its STUDY) or package.module:ATTR"),
    (["nowhere.study"], "error: study 'nowhere.study': no module 'nowhere.study' on the Python path"),
    (["common"], "error: unknown study 'common'"),
])
def test_an_unknown_study_exits_2_with_one_line_naming_it(tmp_path, args, message):
    proc = subprocess.run([PYTHON, "-m", "analysis", *args], cwd=tmp_path, env=python_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith(message) and len(proc.stderr.splitlines()) == 1, \
        proc.stderr
    assert not (tmp_path / "mlruns").exists(), "nothing is created"


def test_another_sweeps_results_move_to_earlier_and_are_never_overwritten(tmp_path, capsys):
    """Issue 26 item 7: results/EXPERIMENT/ holds the latest analysed sweep; an earlier sweep's files move to
    results/EXPERIMENT/earlier/<its sweep id>/ (the same sweep analysed again is simply rewritten)."""
    import json

    import pandas as pd

    from analysis.common import AnalysisOutput, write_outputs

    def write(sweep_id, value):
        output = AnalysisOutput(summary={"sweep_id": sweep_id}, table=pd.DataFrame({"x": [value]}), findings=[])
        write_outputs(output, tmp_path / "results", table_name="table")

    write("first", 1)
    write("first", 2)
    assert not (tmp_path / "results" / "earlier").exists(), "the same sweep again is rewritten in place"
    write("second", 3)
    write("third", 4)
    assert json.loads((tmp_path / "results" / "summary.json").read_text())["sweep_id"] == "third"
    for sweep_id, value in (("first", 2), ("second", 3)):
        kept = tmp_path / "results" / "earlier" / sweep_id
        assert json.loads((kept / "summary.json").read_text())["sweep_id"] == sweep_id
        assert pd.read_csv(kept / "table.csv")["x"].tolist() == [value]
    assert "held another sweep's results: moved to" in capsys.readouterr().out
