"""llama.cpp's own tools built from the same sources as the wheel (scripts/build_tools.sh):
where they are, the environment they run in, and llama-bench's run read back as BenchResults."""
from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from qwenkit.bench.results import BenchError, BenchResult, config_fields, test_name
from qwenkit.config import RunConfig

__all__ = ["find_tools", "run_llama_bench", "tool_env", "tool_path"]

_ROOT = Path(__file__).resolve().parents[2]


def find_tools(required: Sequence[str] = ("llama-bench", "llama-server")) -> Path | None:
    """The folder holding llama.cpp's tools built from the same sources as the wheel:
    $QWENKIT_TOOLS_BIN, else what scripts/build_tools.sh built (its --print), else None."""
    cands = []
    if os.environ.get("QWENKIT_TOOLS_BIN"):
        cands.append(Path(os.environ["QWENKIT_TOOLS_BIN"]))
    script = _ROOT / "scripts" / "build_tools.sh"
    if script.is_file():
        try:
            out = subprocess.run(["bash", str(script), "--print"], check=False, capture_output=True, text=True,
                                 timeout=30)
            if out.returncode == 0 and out.stdout.strip():
                cands.append(Path(out.stdout.strip().splitlines()[-1]))
        except (OSError, subprocess.SubprocessError):
            pass
    for c in cands:
        if all((c / t).is_file() for t in required):
            return c
    return None


def tool_path(name: str, bin_dir: Path | None = None) -> Path:
    """The path of a built tool (in bin_dir, else find_tools()), or a BenchError saying how to
    build it."""
    bin_dir = bin_dir or find_tools((name,))
    if not bin_dir or not (Path(bin_dir) / name).is_file():
        raise BenchError(f"{name} is not built", "run scripts/build_tools.sh (once; ~10 min on 2 cores), "
                         "or set QWENKIT_TOOLS_BIN to a folder holding it")
    return Path(bin_dir) / name


def tool_env(bin_dir: Path) -> dict[str, str]:
    """This process's environment with bin_dir first on LD_LIBRARY_PATH (the tools' shared
    libraries lie beside them)."""
    env = dict(os.environ)
    before = [env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else []
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(bin_dir), *before])
    return env


def _csv(x) -> str:
    return ",".join(str(v) for v in x) if isinstance(x, (list, tuple)) else str(x)


def run_llama_bench(cfg: RunConfig, p: int | Sequence[int] = 512, n: int | Sequence[int] = 128, r: int = 5,
                    d: int | Sequence[int] = 0, bin_dir: Path | None = None, extra_args: Sequence[str] = (),
                    env: dict | None = None, timeout: float = 1800) -> list[BenchResult]:
    """Run llama-bench for cfg's model and settings; its JSON output as BenchResults.
    p, n, d take one value or a list (llama-bench runs each; p=0 or n=0 skips that test).
    extra_args may override a setting (e.g. ["-ub", "256,1024"]): each result's config is
    read back from llama-bench's own report."""
    exe = tool_path("llama-bench", bin_dir)
    base = cfg.llama_bench_args()
    over = {a for a in extra_args if a.startswith("-")}
    kept = []
    for i in range(0, len(base), 2):  # a flag given in extra_args replaces the RunConfig's
        if base[i] not in over:
            kept += base[i:i + 2]
    args = [str(exe), "-m", cfg.model, "-p", _csv(p), "-n", _csv(n), "-r", str(r), "-d", _csv(d),
            *kept, "-o", "json", *extra_args]
    e = tool_env(exe.parent)
    e.update(env or {})
    proc = subprocess.run(args, check=False, capture_output=True, text=True, timeout=timeout, env=e)
    if proc.returncode != 0:
        raise BenchError(f"llama-bench failed (exit {proc.returncode}): {proc.stderr[-800:]}",
                         "check the flags against `llama-bench --help`")
    data = json.loads(proc.stdout)
    conf = config_fields(cfg)
    out = []
    for t in data:
        npmt, ngen, ndep = int(t["n_prompt"]), int(t["n_gen"]), int(t.get("n_depth", 0))
        c = dict(conf)
        for k in ("n_batch", "n_ubatch", "n_threads", "type_k", "type_v", "n_gpu_layers", "n_cpu_moe"):
            if k in t:
                c[k] = t[k]
        if "flash_attn" in t:
            fa = t["flash_attn"]
            c["flash_attn"] = fa if isinstance(fa, bool) else str(fa).lower() in ("1", "true", "on", "enabled")
        if c.get("n_gpu_layers") == 999 and cfg.n_gpu_layers < 0:
            c["n_gpu_layers"] = cfg.n_gpu_layers
        out.append(BenchResult(test_name(npmt, ngen, ndep), "llama-bench", npmt, ngen, ndep,
                               [float(x) for x in t["samples_ts"]], c,
                               {"build_commit": t.get("build_commit"), "backends": t.get("backends"),
                                "cpu_info": t.get("cpu_info"), "gpu_info": t.get("gpu_info"),
                                "model_type": t.get("model_type"), "model_size": t.get("model_size")}))
    return out
