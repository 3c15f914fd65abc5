"""Ray Tune's searchers and schedulers through the launcher: random search, Optuna over a loss hyperparameter,
ASHA stopping points early; search flags that cannot work exit 2 naming them."""

import pytest
from mlflow.tracking import MlflowClient

from record import schema
from record.runs import search_all_runs, sweep_runs
from tune_jobs.runner import main


def _runs(uri, experiment):
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    children = search_all_runs(client, [experiment_id], f"tags.`{schema.TAG_KIND}` = '{schema.KIND_POINT}'")
    (parent,) = sweep_runs(client, experiment_id)
    return client, parent, children


def test_random_search_samples_the_space_once_per_point_per_grid_point(store):
    args = ["--search", "random", "--num-samples", "3", "--space", "lr=loguniform(0.01,0.3)",
            "--grid", "hidden_width=8,32", "--grid", "poison_fraction=0.1", "--grid", "seed=1", "--set", "epochs=20",
            "--tracking-uri", store["uri"], "--storage-path", store["ray"]]
    assert main("poison_sensitivity", args) == 0
    _, parent, children = _runs(store["uri"], "poison_sensitivity")
    assert len(children) == 6 and all(r.info.status == "FINISHED" for r in children)
    lrs = [float(r.data.params["lr"]) for r in children]
    assert len(set(lrs)) == 6 and all(0.01 <= lr <= 0.3 for lr in lrs)
    assert sorted(int(r.data.params["hidden_width"]) for r in children) == [8, 8, 8, 32, 32, 32]
    assert all(r.data.tags[schema.TAG_POINT].startswith("hidden_width=") and " lr=" in r.data.tags[schema.TAG_POINT]
               for r in children)
    assert parent.data.params["search"] == "random" and parent.data.params["space.lr"] == "loguniform(0.01,0.3)"
    assert parent.data.tags[schema.TAG_N_POINTS] == "6" and parent.info.status == "FINISHED"

    again = [*args[:-4], "--experiment", "again", "--tracking-uri", store["uri"], "--storage-path", store["ray"]]
    assert main("poison_sensitivity", again) == 0
    _, _, repeated = _runs(store["uri"], "again")
    assert sorted(float(r.data.params["lr"]) for r in repeated) == sorted(lrs), "same --search-seed, same samples"


def test_a_searched_grid_key_replaces_its_dimension(store):
    """Searching a study's main axis: the points are num_samples x the remaining grid, and the parent records the
    searched key as space.<key>, not as a grid dimension."""
    from tune_jobs.cli import parse_launch
    from tune_jobs.studies.poison_sensitivity import STUDY
    from tune_jobs.studies.robust_loss import STUDY as ROBUST_LOSS

    args = ["--search", "random", "--num-samples", "6", "--grid", "seed=42", "--space",
            "poison_fraction=uniform(0,0.5)", "--space", "hidden_width=choice(8,16)", "--set", "epochs=5",
            "--tracking-uri", store["uri"], "--storage-path", store["ray"]]
    launch = parse_launch(STUDY, args)
    assert launch.n_points == 6 and launch.searched_dims == ("poison_fraction", "hidden_width")
    assert launch.recorded_grid == {"seed": (42,)}
    optuna = parse_launch(ROBUST_LOSS, ["--search", "optuna", "--space", "loss=choice(cross_entropy,generalized_ce)",
                                        "--grid", "seed=42", "--metric", "val_acc", "--mode", "max"])
    assert optuna.n_points == 1 and optuna.searched_dims == ("loss",), "Optuna may search a grid dimension"
    assert main("poison_sensitivity", args) == 0
    _, parent, children = _runs(store["uri"], "poison_sensitivity")
    assert len(children) == 6 and all(r.info.status == "FINISHED" for r in children)
    assert len({r.data.params["poison_fraction"] for r in children}) == 6
    assert {r.data.params["hidden_width"] for r in children} <= {"8", "16"}
    assert "grid.poison_fraction" not in parent.data.params and parent.data.params["grid.seed"] == "42"
    assert parent.data.params["space.poison_fraction"] == "uniform(0.0,0.5)"


def test_optuna_tunes_a_loss_hyperparameter_on_a_validation_split(store, capsys):
    args = ["--search", "optuna", "--num-samples", "4", "--space", "loss.q=uniform(0.1,1.0)", "--grid",
            "loss=generalized_ce", "--grid", "seed=42", "--metric", "val_acc", "--mode", "max", "--set", "epochs=3",
            "--tracking-uri", store["uri"], "--storage-path", store["ray"], "--analyze", str(store["dir"] / "out")]
    assert main("robust_loss", args) == 0
    out = capsys.readouterr().out
    client, parent, children = _runs(store["uri"], "robust_loss")
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    qs = [float(r.data.params["loss.q"]) for r in children]
    assert len(set(qs)) == 4 and all(0.1 <= q <= 1.0 for q in qs)
    assert [r.data.metrics["dim.loss.q"] for r in children] == qs, "the sampled number, queryable as one"
    assert all(r.data.metrics["dim.seed"] == 42 for r in children)
    assert all(r.data.params["val_fraction"] == "0.1" and int(r.data.params["val_size"]) > 0 for r in children)
    top = max(r.data.metrics["val_acc"] for r in children)  # a tie goes to the run that started first
    best = min((r for r in children if r.data.metrics["val_acc"] == top), key=lambda r: (r.info.start_time, r.info.run_id))
    assert parent.data.tags[schema.TAG_BEST_RUN] == best.info.run_id
    assert parent.data.params["best.loss.q"] == best.data.params["loss.q"]
    assert parent.data.metrics["best_val_acc"] == best.data.metrics["val_acc"]
    assert f"best point by val_acc (max)" in out and best.info.run_id in out
    assert parent.data.params["search"] == "optuna" and parent.data.params["metric"] == "val_acc"
    assert (store["dir"] / "out" / "search.png").stat().st_size > 0, "the search view"


def test_asha_stops_poor_points_early_and_records_them(store, capsys):
    epochs = 6
    args = ["--grid", "loss=cross_entropy,generalized_ce,symmetric_ce,bootstrap", "--grid", "seed=1,2",
            "--scheduler", "asha", "--metric", "val_acc", "--mode", "max", "--reduction-factor", "2",
            "--set", f"epochs={epochs}", "--tracking-uri", store["uri"], "--storage-path", store["ray"],
            "--analyze", str(store["dir"] / "out")]
    assert main("robust_loss", args) == 0
    out = capsys.readouterr().out
    client, _, children = _runs(store["uri"], "robust_loss")
    assert len(children) == 8 and all(r.info.status == "FINISHED" for r in children)
    stopped = [r for r in children if schema.TAG_STOPPED in r.data.tags]
    trained = [len(client.get_metric_history(r.info.run_id, "val_acc")) for r in children]
    assert stopped and sum(trained) < len(children) * epochs
    for run in stopped:
        assert len(client.get_metric_history(run.info.run_id, "val_acc")) == int(run.data.tags[schema.TAG_STOPPED])
        assert schema.TAG_CHECKPOINT not in run.data.tags
    assert f"the scheduler stopped {len(stopped)} of 8 points early" in out
    assert f"({len(stopped)} stopped early by the scheduler, left out of the tables)" in out


@pytest.mark.parametrize("flags, message", [
    (["--search", "random", "--space", "lr=loguniform(0,1)"], "loguniform needs 0 < low, got low=0.0"),
    (["--search", "random", "--space", "lr=gauss(0,1)"], "unknown distribution 'gauss'"),
    (["--search", "random", "--space", "learning_rate=uniform(0,1)"], "unknown key 'learning_rate'"),
    (["--search", "random", "--space", "lr=uniform(0.1,1)", "--num-samples", "0"], "--num-samples must be >= 1"),
    (["--search", "random", "--space", "lr=uniform(-1,1)"], "lr must be > 0, got -1.0"),
    (["--space", "lr=uniform(0.1,1)"], "--space needs --search random or --search optuna"),
    (["--search", "optuna", "--space", "lr=uniform(0.1,1)"], "--search optuna needs --metric NAME"),
    (["--scheduler", "asha"], "--scheduler asha needs --metric NAME and --mode max|min"),
    (["--scheduler", "asha", "--metric", "test_acc", "--mode", "max"], "--metric test_acc: searchers and schedulers"),
    (["--search", "optuna", "--space", "lr=uniform(0.1,1)", "--metric", "val_acc", "--mode", "max"],
     "--search optuna takes no grid: loss has 4 values"),
    (["--search", "random", "--space", "seed=randint(0,9)", "--grid", "seed=1"], "search it or grid it, not both"),
    # a validation metric the points do not report (no validation split): refused before Ray, not a Ray traceback
    (["--grid", "loss=cross_entropy", "--grid", "seed=1", "--scheduler", "asha", "--metric", "val_acc", "--mode", "max",
      "--set", "val_fraction=0", "--set", "epochs=2"],
     "--metric val_acc: the points of this launch do not report it; a metric they report that a searcher may select "
     "on: none (--set val_fraction=0.0 overrides this study's search default val_fraction=0.1)"),
    (["--search", "random", "--space", "loss.p=uniform(0.1,1)", "--grid", "loss=generalized_ce"],
     "loss 'generalized_ce' has no hyperparameter 'p'"),
])
def test_a_search_that_cannot_work_exits_2_naming_it(store, flags, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main("robust_loss", [*flags, "--tracking-uri", store["uri"], "--storage-path", store["ray"]])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (store["dir"] / "mlflow.db").exists(), "refused before anything was created"


def test_a_yaml_file_holds_the_same_flags(store, tmp_path):
    from tune_jobs.cli import parse_launch
    from tune_jobs.studies.robust_loss import STUDY

    (tmp_path / "sweep.yaml").write_text(
        "search: optuna\nnum_samples: 40\nmetric: val_acc\nmode: max\nscheduler: asha\ngrace_period: 2\n"
        "grid:\n  loss: generalized_ce\n  seed: [1, 2]\nset:\n  epochs: 12\n"
        "space:\n  loss.q: uniform(0.1,1.0)\n  lr: loguniform(0.01,0.3)\n")
    with pytest.raises(SystemExit):  # two seeds: Optuna takes no grid
        main("robust_loss", ["--config", str(tmp_path / "sweep.yaml"), "--tracking-uri", store["uri"]])
    launch = parse_launch(STUDY, ["--config", str(tmp_path / "sweep.yaml"), "--grid", "seed=1"])
    search = launch.search
    assert (search.algorithm, search.num_samples, search.metric, search.scheduler, search.grace_period) == (
        "optuna", 40, "val_acc", "asha", 2)
    assert [d.describe() for d in search.space] == ["uniform(0.1,1.0)", "loguniform(0.01,0.3)"]
    assert launch.points[0].epochs == 12 and launch.points[0].val_fraction == 0.1 and launch.n_points == 40
    (tmp_path / "bad.yaml").write_text("serach: optuna\n")
    with pytest.raises(SystemExit) as exit_:
        main("robust_loss", ["--config", str(tmp_path / "bad.yaml"), "--tracking-uri", store["uri"]])
    assert exit_.value.code == 2
