"""doctor: real facts of this machine, and the GPU branches through diagnose()'s seam."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from qwenkit import doctor
from qwenkit.doctor import GPU, BuildInfo

RTX_4060TI = GPU(0, "NVIDIA GeForce RTX 4060 Ti", "8.9", 16380, 15800, "560.35")
CPU_BUILD = BuildInfo("0.3.36", False, "CPU : AVX2 = 1 | AVX512 = 1 |")
CUDA_BUILD = BuildInfo("0.3.36", True, "CPU : AVX2 = 1 | CUDA : ARCHS = 890 |")


def test_this_machine_is_cpu_only():
    report = doctor.diagnose()
    assert report.build.backend == "CPU" and not report.build.gpu_offload
    assert report.gpus == []
    assert report.verdict == doctor.VERDICT_NO_GPU and report.ok
    assert report.fix_command is None


def test_gpu_with_cpu_build_gets_exact_cache_proof_fix():
    report = doctor.diagnose(build=CPU_BUILD, gpus=[RTX_4060TI], nvcc="12.6 (/usr/local/cuda/bin/nvcc)")
    assert report.verdict == doctor.VERDICT_CPU_BUILD_WITH_GPU and not report.ok
    fix = report.fix_command or ""
    assert "-DCMAKE_CUDA_ARCHITECTURES=89" in fix
    assert "--no-cache-dir" in fix and "--force-reinstall" in fix


def test_gpu_without_nvcc_is_told_how_to_get_it():
    report = doctor.diagnose(build=CPU_BUILD, gpus=[RTX_4060TI], nvcc=None)
    assert report.verdict == doctor.VERDICT_NO_NVCC
    assert any("nvcc" in a and "install" in a for a in report.advice)


def test_cuda_build_and_gpu_ok():
    report = doctor.diagnose(build=CUDA_BUILD, gpus=[RTX_4060TI], nvcc=None)
    assert report.verdict == doctor.VERDICT_OK and report.ok and report.build.backend == "CUDA"
    assert "RTX 4060 Ti" in str(report)


def test_cuda_build_without_gpu():
    assert doctor.diagnose(build=CUDA_BUILD, gpus=[], nvcc=None).verdict == doctor.VERDICT_CUDA_NO_GPU


@pytest.mark.slow
def test_cli_json_loads_a_model_and_reports(default_model):
    out = subprocess.run([sys.executable, "-m", "qwenkit", "doctor", "--json"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["build"]["backend"] == "CPU" and data["gpus"] == []
    assert data["verdict"] == "no GPU: CPU only" and data["ok"] is True
    load = data["load"]
    assert load["model"].endswith(".gguf") and load["offloaded"].startswith("0")
    assert load["tokens"] > 0 and load["tok_per_s"] > 1
