"""benchmarks/gpu_check.py, the script prepared for a first GPU, run small on the CPU: every
section runs and its correctness checks hold here too."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_gpu_check_runs_every_section_on_the_cpu(tmp_path):
    out = tmp_path / "check.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"),
                           "--device", "cpu", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    for name in ("versions", "correctness", "throughput", "jobs_per_gpu", "stage"):
        assert "error" not in report[name], (name, report[name])
    assert report["versions"]["torch"] and report["versions"]["device"] == "cpu"
    checks = report["correctness"]
    assert checks["train_fp32"]["learns"] and checks["train_bf16"]["learns"]
    assert checks["deterministic_retrain_exact"] and checks["deterministic_resume_exact"]
    assert checks["resumed_on_cpu"]["ok"]
    assert checks["conv_precision"]["fp32_is_fp32"] and checks["conv_precision"]["bf16_applied"]
    for key in ("small/fp32", "small/bf16"):
        assert report["throughput"][key]["trainer_img_per_s"] > 0
    assert set(report["jobs_per_gpu"]) == {"1", "2"}
    assert report["stage"]["finished"] == 2 and report["stage"]["trials_per_minute"] > 0


def test_gpu_check_refuses_cuda_where_torch_has_none(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"),
                           "--out", str(tmp_path / "x.json")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "--device cpu --quick" in done.stderr and not (tmp_path / "x.json").exists()
