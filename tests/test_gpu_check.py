"""benchmarks/gpu_check.py's --tiny setting (CPU): the GPU check's every step runs and prints its comparisons."""

import subprocess

from conftest import PYTHON, ROOT, python_env


def test_gpu_check_tiny_runs_every_comparison(tmp_path):
    proc = subprocess.run([PYTHON, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--keep", str(tmp_path)],
                          cwd=tmp_path, env=python_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "on CPU" in out and "CIFAR-10 format" in out
    assert "plain PyTorch" in out and "launcher (run)" in out and "ratio launcher/plain" in out
    assert "one at a time" in out and "packed" in out and "packing speed-up" in out
    assert "system/cpu_utilization_percentage" in out, out
    assert (tmp_path / "cifar-10-batches-py" / "data_batch_5").exists()
