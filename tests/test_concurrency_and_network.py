"""16 trials at once on the default SQLite store, and a local Ray that listens on loopback only."""

import os
import re
import subprocess
import time

from mlflow.tracking import MlflowClient

from conftest import PYTHON, python_env
from record import schema
from record.runs import search_all_runs

EPOCHS = 1500


def _listening_addresses(session: int) -> dict[str, set[str]]:
    """Listening TCP addresses (from ``ss -ltnp``) of the processes in session ``session``, by process name."""
    found: dict[str, set[str]] = {}
    lines = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines()
    for line in lines:
        address = line.split()[3].rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:")  # IPv4-mapped IPv6
        for name, pid in re.findall(r'\("([^"]+)",pid=(\d+)', line):
            try:
                if os.getsid(int(pid)) == session:
                    found.setdefault(name, set()).add(address)
            except ProcessLookupError:
                continue
    return found


def test_sixteen_concurrent_trials_on_the_default_store_lose_nothing(tmp_path):
    command = [PYTHON, "-m", "tune_jobs.poison_sensitivity", "--grid", "poison_fraction=0,0.1,0.3,0.5",
               "--grid", "hidden_width=16,32", "--grid", "seed=1,2", "--set", f"epochs={EPOCHS}",
               "--points-per-trial", "1", "--cpus-per-trial", "0.125", "--storage-path", str(tmp_path / "ray")]
    log = open(tmp_path / "launcher.log", "w+")
    driver = subprocess.Popen(command, cwd=tmp_path, env=python_env(), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    addresses: dict[str, set[str]] = {}
    while driver.poll() is None:  # sample the sockets of every process the launch started
        for name, ips in _listening_addresses(driver.pid).items():
            addresses.setdefault(name, set()).update(ips)
        time.sleep(0.5)
    log.seek(0)
    output = log.read()
    assert driver.returncode == 0, output[-3000:]
    assert "database is locked" not in output
    assert addresses, "the local Ray cluster was seen listening"
    assert {ip for ips in addresses.values() for ip in ips} == {"127.0.0.1"}, addresses

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"  # the embedded default store
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("poison_sensitivity")
    assert experiment.artifact_location.startswith((tmp_path / "mlruns" / "artifacts").as_uri())
    runs = search_all_runs(client, [experiment.experiment_id], schema.POINT_FILTER)
    assert len(runs) == 16 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert sorted(m.step for m in history) == list(range(EPOCHS)), run.data.tags[schema.TAG_POINT]
        assert len(run.data.params) >= 14 and len(run.data.metrics) >= 5
    spans = sorted((r.info.start_time, r.info.end_time) for r in runs)
    overlap = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert overlap >= 8, f"at most {overlap} trials ran at once"
