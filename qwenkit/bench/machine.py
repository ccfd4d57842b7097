"""Where a result was measured: machine, CPU, GPU, load, date, commit, llama.cpp build."""
from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["cpu_seconds", "gpu_slug", "machine_info"]

_ROOT = Path(__file__).resolve().parents[2]


def machine_info() -> dict[str, Any]:
    """Machine, CPU, GPU, load, date, commit: what a result file says about where it came from."""
    info: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "hostname": platform.node(),
                            "python": platform.python_version(), "platform": platform.platform()}
    try:
        cpu = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
               if line.startswith("model name")]
        info["cpu"] = cpu[0] if cpu else platform.processor()
        info["cpu_count"] = len(os.sched_getaffinity(0))
    except OSError:
        info["cpu"] = platform.processor()
    try:
        info["loadavg"] = list(os.getloadavg())
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",  # noqa: PLW1510
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        info["gpu"] = out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        info["gpu"] = None
    try:
        info["commit"] = subprocess.run(["git", "-C", str(_ROOT), "rev-parse", "--short", "HEAD"],  # noqa: PLW1510
                                        capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    try:
        import llama_cpp

        from qwenkit.llama_api import C
        info["llama_cpp_python"] = llama_cpp.__version__
        info["gpu_offload"] = bool(C.llama_supports_gpu_offload())
        info["system_info"] = C.llama_print_system_info().decode(errors="replace").strip()
    except Exception:  # noqa: BLE001, S110 - optional facts
        pass
    return info


def cpu_seconds() -> float:
    """CPU time (user + system) this process has used: a benchmark client records what it cost
    over a scenario, to show it was not the bottleneck."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def gpu_slug() -> str:
    """The first GPU's short name for a result file's name ("h200" for an NVIDIA H200), "gpu"
    when nvidia-smi cannot say."""
    try:
        name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], check=False,
                              capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "gpu"
    words = [w for w in name.replace("-", " ").split() if w.lower() not in ("nvidia", "geforce", "tesla")]
    return (words[0] if words else "gpu").lower()
