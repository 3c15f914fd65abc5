"""Issue 26 item 6 (and 5's defaults): the launch's console lines, help texts, the missing-data message, where
results go by default. Fast: the progress callback is fed results as Ray Tune hands them over."""

import subprocess

from conftest import PYTHON, python_env


def _progress(capsys, mode, total, results, last=("benchmark",)):
    from tune_jobs.progress import PointProgress

    progress = PointProgress(("test_acc",), mode, {"benchmark": "bench", "seed": "s"}, last)
    progress.total = total  # as the first result's trial context would set it
    for result in results:
        progress._outcome([], None, result)
    return capsys.readouterr().out.splitlines()


def _epochs(point, n):
    return [{"status": "epoch", "point": point, "epoch": e, "epochs_total": n, "test_acc": 0.5} for e in range(n)]


POINT = "benchmark=cnn-digits-labelflip loss=generalized_ce seed=42"


def test_epoch_lines_follow_the_progress_setting_and_mlflow_steps(capsys):
    # the robust_loss default: 12 points of 30 epochs gave 360 epoch lines; auto gives one line per point
    twelve = [r for i in range(12) for r in _epochs(POINT.replace("42", str(i)), 30)
              + [{"status": "finished", "point": POINT.replace("42", str(i)), "test_acc": 0.9}]]
    lines = _progress(capsys, "auto", 12, twelve)
    assert len(lines) == 12 and all(" finished " in line for line in lines)
    assert "loss=generalized_ce s=0 bench=cnn-digits-labelflip  test_acc=0.9" in lines[0]
    assert len(_progress(capsys, "epochs", 12, twelve)) == 12 * 31
    assert _progress(capsys, "none", 12, twelve) == []
    # a launch of a few long points: one epoch line per 10 % of its epochs, numbered as MLflow's steps
    lines = _progress(capsys, "auto", 2, _epochs(POINT, 30))
    assert len(lines) == 10 and "epoch 2 (of 0..29), test_acc=0.5" in lines[0] and "epoch 29 (of 0..29)" in lines[-1]
    assert _progress(capsys, "points", 2, _epochs(POINT, 30)) == []


def test_floats_in_console_lines_have_4_significant_digits(capsys):
    [line] = _progress(capsys, "points", 3, [{"status": "finished", "point": "lr=0.4812893194050143 seed=42",
                                              "test_acc": 0.123456}], last=())
    assert "lr=0.4813 s=42  test_acc=0.1235" in line and "0.48128" not in line


def test_no_eta_until_points_finished_after_the_first(capsys, monkeypatch):
    import tune_jobs.progress as progress

    clock = iter([100.0, 130.0, 131.0, 132.0, 133.0])  # setup; the first point carries 30 s of start-up
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    lines = _progress(capsys, "points", 40, [{"status": "finished", "point": f"seed={i}"} for i in range(4)])
    assert "ETA" not in lines[0] and "ETA" not in lines[1]
    assert "[3/40   32.0s, ETA 37s]" in lines[2] and "[4/40   33.0s, ETA 36s]" in lines[3]  # 1 s a point, not 11 s


def test_help_texts_have_no_markup_and_read_as_english():
    for args in (["-m", "analysis", "--help"], ["-m", "analysis", "adversarial_scaling", "--help"],
                 ["-m", "analysis.validate", "adversarial_scaling", "--help"],
                 ["-m", "tune_jobs", "adversarial_scaling", "--help"], ["-m", "tune_jobs", "robust_loss", "--help"]):
        out = subprocess.run([PYTHON, *args], env=python_env(), capture_output=True, text=True, timeout=120).stdout
        assert out and "`" not in out and " a adversarial" not in " ".join(out.split()), (args, out)
        if args[-2] == "robust_loss":
            assert "--progress {auto,points,epochs,none}" in out and "results/EXPERIMENT" in " ".join(out.split())


def test_missing_data_names_the_launcher_flags(tmp_path):
    proc = subprocess.run([PYTHON, "-m", "tune_jobs", "robust_loss", "--grid", "benchmark=resnet20-cifar10-labelflip",
                           "--data-dir", str(tmp_path / "none"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"],
                          env=python_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "data files not found" in proc.stderr, proc.stderr[-2000:]
    assert "--download to fetch cifar10" in proc.stderr and "core.vision_data" not in proc.stderr


def test_results_default_to_the_experiments_folder():
    from tune_jobs.cli import parse_launch
    from tune_jobs.studies.robust_loss import STUDY

    assert parse_launch(STUDY, []).outputs.analyze_out == "results/robust_loss"  # README's published path
    assert parse_launch(STUDY, ["--experiment", "ablation"]).outputs.analyze_out == "results/ablation"
    assert parse_launch(STUDY, ["--analyze", "out"]).outputs.analyze_out == "out"
    assert parse_launch(STUDY, ["--progress", "none"]).outputs.progress == "none"
