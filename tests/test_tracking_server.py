"""Sweeps against a real `mlflow server` over HTTP (proxied artifacts), and a tracking URI that does not answer."""

import re
import socket
import subprocess
import time

from mlflow.tracking import MlflowClient

from conftest import PYTHON, python_env
from analysis.common import run_analysis
from analysis.poison_sensitivity import ANALYSIS as POISON_ANALYSIS
from record import schema
from record.read import read_sweep
from record.runs import search_all_runs
from tune_jobs.runner import main
from tune_jobs.tracking_server import TrackingServer, _group_alive


#: Ports a Ray node takes by default (GCS, dashboard, client server, dashboard agent): a test's Ray head or server
#: given one of them would collide with the Ray it starts (`ray start` refuses: "used by other components").
RAY_DEFAULT_PORTS = {6379, 8265, 10001, 52365}


def free_port() -> int:
    """A port free on 127.0.0.1 now, not one of Ray's defaults."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in RAY_DEFAULT_PORTS:
            return port


def listening_addresses(port: int) -> set[str]:
    lines = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout.splitlines()
    return {m.group(1) for line in lines if (m := re.search(r"\s(\S+):" + str(port) + r"\s", line))}


def test_sweeps_over_http_reach_the_server_with_artifacts(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    port = free_port()
    server = TrackingServer(f"sqlite:///{tmp_path / 'server.db'}", str(tmp_path / "server-artifacts"), port=port,
                            log_file=tmp_path / "server.log")
    started = time.monotonic()
    with server:
        print(f"mlflow server ready in {time.monotonic() - started:.1f} s")
        assert listening_addresses(port) == {"127.0.0.1"}, "the server listens on loopback only"
        group = server.process.pid
        common = ["--tracking-uri", server.uri, "--storage-path", str(tmp_path / "ray")]
        assert main("poison_sensitivity", ["--grid", "poison_fraction=0,0.5", "--grid", "hidden_width=8",
                                           "--grid", "seed=1", "--set", "epochs=5", "--experiment", "ps-http",
                                           *common]) == 0
        said = capfd.readouterr()
        assert "View run" not in said.out + said.err, "MLflow's link line per run (one more request each)"
        assert run_analysis(POISON_ANALYSIS, read_sweep("ps-http", server.uri, study="poison_sensitivity"),
                            tmp_path / "ps") == 0
        assert main("adversarial_scaling", ["--grid", "hidden_width=8", "--grid", "seed=1",
                                            "--set", "max_epochs=5", "--set", "epsilons=0.1",
                                            "--experiment", "adv-http", *common]) == 0
        assert main("robust_loss", ["--grid", "loss=cross_entropy,generalized_ce", "--grid", "seed=42", "--scale", "smoke",
                                    "--experiment", "rl-http", "--analyze", str(tmp_path / "rl"), *common]) == 0
        client = MlflowClient(server.uri)
        for experiment, n_points in (("ps-http", 2), ("adv-http", 2), ("rl-http", 2)):
            experiment_id = client.get_experiment_by_name(experiment).experiment_id
            trials = search_all_runs(client, [experiment_id], schema.POINT_FILTER)
            assert len(trials) == n_points and all(r.info.status == "FINISHED" for r in trials)
            assert all(r.data.params and r.data.metrics for r in trials)
        adv = search_all_runs(client, [client.get_experiment_by_name("adv-http").experiment_id],
                                       schema.POINT_FILTER)[0]
        csv = client.download_artifacts(adv.info.run_id, "robustness.csv", str(tmp_path))
        assert open(csv).readline().startswith("epsilon,")
        analysis = search_all_runs(client, [client.get_experiment_by_name("ps-http").experiment_id],
                                            "tags.`robustlab.kind` = 'analysis'")
        assert {"summary.json", "accuracy_vs_poison.png"} <= {a.path for a in client.list_artifacts(analysis[0].info.run_id)}
        robust = search_all_runs(client, [client.get_experiment_by_name("rl-http").experiment_id],
                                          schema.POINT_FILTER)[0]
        assert "poisoned_indices.json" in {a.path for a in client.list_artifacts(robust.info.run_id)}
        assert len(client.get_metric_history(robust.info.run_id, "test_acc")) == 2
        # its trained model: an MLflow logged model whose files went through the server, loaded back safely
        from analysis.models import load_model

        [model] = [m for m in client.search_logged_models([robust.info.experiment_id])
                   if m.source_run_id == robust.info.run_id]
        files = {a.path for a in client.list_logged_model_artifacts(model.model_id)}
        assert {"MLmodel", schema.MODEL_SPEC, schema.MODEL_WEIGHTS} <= files, files
        assert not load_model(robust.info.run_id, server.uri).training
        assert (tmp_path / "server-artifacts").exists(), "artifacts went through the server's proxy"
    assert not _group_alive(group), "stopping the server stops its whole process group"


def test_tracking_uri_that_does_not_answer_fails_fast(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = subprocess.run([PYTHON, "-m", "tune_jobs.poison_sensitivity", "--tracking-uri", uri, "--grid", "seed=1"],
                          capture_output=True, text=True, env=python_env(), cwd=tmp_path, timeout=120)
    elapsed = time.monotonic() - started
    assert proc.returncode == 2 and uri in proc.stderr and "does not answer" in proc.stderr
    assert elapsed < 15 + 10, f"took {elapsed:.1f} s"  # 15 s budget plus interpreter start-up
