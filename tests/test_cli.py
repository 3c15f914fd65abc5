"""Every bad launch value is refused before Ray starts, with a message naming it."""

import subprocess
import time

import pytest

from conftest import PYTHON, python_env
from tune_jobs.cli import parse_launch
from tune_jobs.launch import UsageError
from tune_jobs.studies.poison_sensitivity import STUDY


@pytest.mark.parametrize("argv, message", [
    (["--grid", "poison_fraction=0,1.5"], "poison_fraction must be in [0, 1], got 1.5"),
    (["--grid", "hidden_width=0,32"], "hidden_width must be >= 1, got 0"),
    (["--grid", "depth=1,2"], "unknown grid dimension 'depth'"),
    (["--grid", "epochs=1,2"], "use --set epochs=... for a fixed value"),
    (["--grid", "seed="], "seed needs at least one value"),
    (["--grid", "seed=1,1"], "seed repeats a value"),
    (["--grid", "seed"], "--grid takes KEY=VALUE, got 'seed'"),
    (["--grid", "hidden_width=wide"], "hidden_width: expected int, got 'wide'"),
    (["--set", "momentum=0.9"], "unknown protocol value 'momentum'"),
    (["--set", "seed=3"], "it is a grid dimension: use --grid seed=..."),
    (["--set", "epochs=-5"], "epochs must be >= 1, got -5"),
    (["--set", "lr=fast"], "lr: expected float, got 'fast'"),
    (["--cpus-per-trial", "-1"], "--cpus-per-trial must be >= 0, got -1.0"),
    (["--max-concurrent", "0"], "--max-concurrent must be >= 1, got 0"),
    (["--cpus-per-trial", "nan"], "--cpus-per-trial must be a finite number, got nan"),
    (["--experiment", "../elsewhere"], "--experiment must be a non-empty name"),
    (["--experiment", "/tmp/abs"], "--experiment must be a non-empty name"),
])
def test_bad_values_name_the_key_and_value(argv, message):
    with pytest.raises(UsageError) as error:
        parse_launch(STUDY, argv)
    assert message in str(error.value)


def test_a_config_file_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "sweep.yaml").write_bytes(b"grid:\n  seed: \xff\xfe\n")
    with pytest.raises(UsageError, match="--config .*sweep.yaml"):
        parse_launch(STUDY, ["--config", str(tmp_path / "sweep.yaml")])


def test_negative_epsilon_and_unknown_dataset_are_named():
    from tune_jobs.studies.adversarial_scaling import STUDY as ADVERSARIAL

    with pytest.raises(UsageError, match="epsilons must be >= 0.0, got -0.1"):
        parse_launch(ADVERSARIAL, ["--set", "epsilons=0.1,-0.1"])
    with pytest.raises(UsageError, match="dataset must be one of .*got 'spirals'"):
        parse_launch(ADVERSARIAL, ["--grid", "dataset=circles,spirals"])


def test_analysis_of_an_experiment_without_runs_says_so(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from analysis.common import run_analysis
    from analysis.poison_sensitivity import ANALYSIS

    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    MlflowClient(uri).create_experiment("empty")
    for experiment, message in (("empty", "no poison_sensitivity sweep in experiment 'empty'"),
                                ("missing", "no experiment 'missing'")):
        status = run_analysis(ANALYSIS, "poison_sensitivity", ["--experiment", experiment, "--tracking-uri", uri,
                                                          "--out", str(tmp_path / "out")])
        assert status == 2 and message in capsys.readouterr().err


def test_overrides_reach_the_points():
    launch = parse_launch(STUDY, ["--grid", "hidden_width=8,16", "--grid", "seed=1", "--set", "epochs=3",
                                     "--set", "lr=0.1"])
    assert len(launch.points) == 9 * 2 * 1
    assert {p.hidden_width for p in launch.points} == {8, 16}
    assert all(p.epochs == 3 and p.lr == 0.1 and p.seed == 1 for p in launch.points)
    assert STUDY.point_key(launch.points[0]) == "poison_fraction=0.0 hidden_width=8 seed=1"


def test_launcher_exits_2_before_starting_ray(tmp_path):
    started = time.monotonic()
    proc = subprocess.run([PYTHON, "-m", "tune_jobs.poison_sensitivity", "--grid", "poison_fraction=1.5",
                           "--tracking-uri", f"sqlite:///{tmp_path}/m.db"],
                          capture_output=True, text=True, env=python_env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "poison_fraction must be in [0, 1], got 1.5" in proc.stderr
    assert not (tmp_path / "m.db").exists(), "nothing may be created for a refused launch"
    assert time.monotonic() - started < 60


def test_help_documents_the_shared_flags():
    proc = subprocess.run([PYTHON, "-m", "tune_jobs.poison_sensitivity", "--help"], capture_output=True, text=True,
                          env=python_env(), timeout=120)
    assert proc.returncode == 0
    for flag in ("--grid", "--set", "--tracking-uri", "--experiment", "--address", "--cpus-per-trial",
                 "--gpus-per-trial", "--max-concurrent", "--max-failures", "--resume", "poison_fraction"):
        assert flag in proc.stdout


def test_seeds_take_the_first_n_of_the_documented_list_or_an_explicit_one():
    from tune_jobs.study import SEEDS

    assert SEEDS[:10] == (42, 123, 7, 1, 2, 3, 4, 5, 6, 8)
    assert parse_launch(STUDY, ["--seeds", "10"]).grid["seed"] == SEEDS[:10]
    assert parse_launch(STUDY, ["--seeds", "5,9"]).grid["seed"] == (5, 9)
    assert len(parse_launch(STUDY, ["--seeds", "10"]).points) == 9 * 3 * 10
    for argv, message in ((["--seeds", "0"], "--seeds N takes 1 <= N"), (["--seeds", "x"], "got 'x'"),
                          (["--seeds", "1,1"], "repeats a seed"),
                          (["--seeds", "3", "--grid", "seed=1"], "both set the seeds")):
        with pytest.raises(UsageError, match=message):
            parse_launch(STUDY, argv)


def test_each_fields_rule_is_declared_once_and_shown_by_help():
    """A config's RULES check its values (the message names the rule) and --help shows the same rule."""
    from core.validation import field_rules
    from tune_jobs.cli import build_parser

    help_text = " ".join(build_parser(STUDY, "prog").format_help().split())
    assert "epochs=200 (>= 1)" in help_text and "poison_fraction (default 0.0,0.01" in help_text
    for name, rule in field_rules(STUDY.config_type).items():
        assert f"{name}=" in help_text or f"{name} (default" in help_text
        with pytest.raises(UsageError, match=f"{name} must be"):
            parse_launch(STUDY, ["--grid" if name in STUDY.grid else "--set", f"{name}=-1000"])
