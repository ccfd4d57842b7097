"""Fit Qwen3.5-35B-A3B (full-size synthetic, or a real GGUF) to a VRAM budget on a CUDA GPU
and measure it: planned vs llama.cpp-reported vs NVML-measured memory, and decode speed.

    python benchmarks/fit_gpu.py --out runs/fit_gpu.json                 # 16 GiB, n_ctx 8192
    python benchmarks/fit_gpu.py --model Qwen3.5-35B-A3B-Q4_K_M.gguf --budget 16GiB \\
        --n-ctx 65536 --type-k q8_0 --type-v q8_0 --sweep 8:20:2 --out runs/q35.json
    python benchmarks/fit_gpu.py --calibrate --out runs/cal.json         # no-alloc probe grid only

What it does (needs a CUDA build of llama-cpp-python; `python -m qwenkit doctor` checks):
1. the model: --model, or the full-size random synthetic qwen35moe (Q4_K_M-like, ~19.7 GiB)
   written once to --model-dir;
2. plan + fit to --budget; llama.cpp's no-alloc figures for the fitted config (per backend);
3. --hold (default on): a child process takes all free GPU memory but the budget, so the
   budget is real; then the fitted config is loaded, NVML-measured memory and llama.cpp's
   buffer sizes are recorded, and pp / tg speed is measured (greedy, first tokens kept);
4. the all-on-GPU reference (n_cpu_moe=0, no hold) when the card has room: first greedy tokens
   and last-token logits vs the fitted run;
5. --sweep N0:N1:step: the same measurements for other n_cpu_moe values (under the hold,
   those that do not fit are recorded as failures), so the fitted N can be compared with the
   fastest one that fits; --llama-bench PATH runs llama.cpp's own `-ncmoe` sweep too.
Everything goes to the JSON file given by --out (written after each step).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qwenkit.cli_fit import parse_bytes
from qwenkit.config import RunConfig
from qwenkit.gguf_info import read_model_info

MiB = 2**20
GiB = 2**30


# ---------------------------------------------------------------------------------- NVML
class NVML:
    def __init__(self, index: int = 0):
        import pynvml
        self.nv = pynvml
        pynvml.nvmlInit()
        self.h = pynvml.nvmlDeviceGetHandleByIndex(index)

    def info(self) -> dict[str, Any]:
        nv = self.nv
        name = nv.nvmlDeviceGetName(self.h)
        return dict(name=name.decode() if isinstance(name, bytes) else name,
                    driver=_s(nv.nvmlSystemGetDriverVersion()),
                    total=nv.nvmlDeviceGetMemoryInfo(self.h).total)

    def used(self) -> int:
        return int(self.nv.nvmlDeviceGetMemoryInfo(self.h).used)

    def free(self) -> int:
        return int(self.nv.nvmlDeviceGetMemoryInfo(self.h).free)

    def process_used(self, pid: int) -> int | None:
        try:
            for p in self.nv.nvmlDeviceGetComputeRunningProcesses(self.h):
                if p.pid == pid and p.usedGpuMemory:
                    return int(p.usedGpuMemory)
        except Exception:  # noqa: BLE001 - not supported in some containers
            return None
        return None


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


HOLDER = r"""
import ctypes, sys, time
n = int(sys.argv[1])
try:
    import torch
    buf = torch.empty(n, dtype=torch.uint8, device="cuda")
except Exception:
    rt = None
    for name in ("libcudart.so", "libcudart.so.13", "libcudart.so.12"):
        try:
            rt = ctypes.CDLL(name); break
        except OSError:
            pass
    p = ctypes.c_void_p()
    assert rt is not None and rt.cudaMalloc(ctypes.byref(p), ctypes.c_size_t(n)) == 0
print("held", n, flush=True)
time.sleep(86400)
"""


class Hold:
    """A child process holding `nbytes` of GPU memory (so that only the budget is free)."""

    def __init__(self, nbytes: int):
        self.nbytes = max(0, int(nbytes))
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> "Hold":
        if self.nbytes > 0:
            self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(self.nbytes)],
                                         stdout=subprocess.PIPE, text=True)
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            if not line.startswith("held"):
                raise RuntimeError("could not hold GPU memory for the budget")
        return self

    def __exit__(self, *exc) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            time.sleep(1.0)


# ------------------------------------------------------------------------------- measuring
def measure_run(cfg: RunConfig, nv: NVML | None, n_tg: int, n_pp: int) -> dict[str, Any]:
    """Load cfg, record memory (llama.cpp buffers, NVML), measure pp and tg, keep the first
    greedy tokens and the last-token logits' summary."""
    import numpy as np

    from qwenkit.engine import Engine, last_logits
    from qwenkit.errors import ModelLoadError

    out: dict[str, Any] = dict(n_cpu_moe=cfg.n_cpu_moe, n_gpu_layers=cfg.n_gpu_layers)
    used0 = nv.used() if nv else 0
    eng = Engine()
    t0 = time.perf_counter()
    try:
        llm = eng.load(cfg)
    except ModelLoadError as e:
        out.update(ok=False, error=e.problem, fix=e.fix)
        return out
    out["load_s"] = time.perf_counter() - t0
    log = llm.load_log
    out["llama"] = log.summary()
    out["overridden_tensors"] = len(log.overrides())
    if nv:
        out["nvml_used_delta"] = nv.used() - used0
        out["nvml_process"] = nv.process_used(os.getpid())
    try:
        rng = np.random.default_rng(0)
        n_vocab = llm.n_vocab()
        prompt = [int(t) for t in rng.integers(100, min(n_vocab, 30000), n_pp)]
        llm.eval(prompt[:16])  # warm-up (llama-bench runs one too): first-use costs stay out
        llm.eval(prompt[16:20])
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt)
        out["pp_tok_s"] = n_pp / (time.perf_counter() - t)
        logits = last_logits(llm)
        out["logits_head"] = [float(x) for x in logits[:8]]
        out["logits_finite"] = bool(np.isfinite(logits).all())
        # decode random tokens, as llama-bench does: feeding back the argmax of random weights
        # repeats one token, which routes to the same experts every step and (with experts in
        # RAM) overstated decode by half (195 vs llama-bench's 130 tok/s at n_cpu_moe=11)
        toks, times = [int(np.argmax(logits))], []
        feed = [int(t) for t in rng.integers(100, min(n_vocab, 30000), n_tg)]
        for tok in feed:
            t = time.perf_counter()
            llm.eval([tok])
            times.append(time.perf_counter() - t)
            toks.append(int(np.argmax(last_logits(llm))))
        out["tg_tok_s"] = len(times) / sum(times)
        out["tg_tok_s_median"] = 1 / sorted(times)[len(times) // 2]
        out["first_tokens"] = toks[:16]
        out["_logits"] = logits  # removed before JSON
        if nv:
            out["nvml_used_after_decode_delta"] = nv.used() - used0
        out["ok"] = True
    finally:
        eng.close()
    return out


def llama_bench(path: str, model: str, ncmoe: list[int], cfg: RunConfig) -> list[dict[str, Any]]:
    rows = []
    for n in ncmoe:
        cmd = [path, "-m", model, "-fa", "1" if cfg.flash_attn else "0", "-ngl", "99", "-ncmoe", str(n),
               "-ctk", cfg.type_k, "-ctv", cfg.type_v, "-p", "512", "-n", "128", "-r", "3", "-o", "json"]
        try:
            res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900)
            rows.append(dict(n_cpu_moe=n, cmd=" ".join(cmd), rc=res.returncode,
                             results=json.loads(res.stdout) if res.returncode == 0 else None,
                             stderr_tail=res.stderr[-2000:]))
        except Exception as e:  # noqa: BLE001
            rows.append(dict(n_cpu_moe=n, error=repr(e)))
    return rows


# ------------------------------------------------------------------------------ calibrate
def calibrate(models: dict[str, str], out: dict[str, Any], save) -> None:
    """llama.cpp's no-alloc figures per backend over a grid, next to the plan's."""
    from qwenkit.engine import probe
    from qwenkit.plan import plan
    grid: list[dict[str, Any]] = []
    for n_ctx in (8192, 65536):
        for tk in ("f16", "q8_0"):
            for n_moe in (0, 1, 12, 40):
                grid.append(dict(n_ctx=n_ctx, type_k=tk, type_v=tk, n_cpu_moe=n_moe))
    grid += [dict(n_ctx=8192, n_cpu_moe=40, n_gpu_layers=g) for g in (30, 10, 0)]
    grid += [dict(n_ctx=8192, n_ubatch=1024, n_batch=2048), dict(n_ctx=8192, flash_attn=False)]
    out["calibration"] = rows = []
    for name, path in models.items():
        info = read_model_info(path)
        for kw in grid:
            cfg = RunConfig(model=path, **kw)
            try:
                p = probe(cfg)
            except Exception as e:  # noqa: BLE001
                rows.append(dict(model=name, cfg=kw, error=repr(e)))
                continue
            pl = plan(info, cfg)
            rows.append(dict(model=name, cfg=kw, llama=p.summary(),
                             compute_buffers=p.compute_buffers, output_buffers=p.output_buffers,
                             plan=dict(compute_gpu=pl.compute[0], compute_host=pl.compute[1],
                                       phases=pl.compute_phases, kv=pl.kv, recurrent=pl.recurrent_bytes)))
        save()


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="GGUF to use (default: full-size random synthetic qwen35moe)")
    ap.add_argument("--model-dir", default=os.environ.get("QWENKIT_CACHE", "runs/models"))
    ap.add_argument("--budget", default="16GiB")
    ap.add_argument("--n-ctx", type=int, default=8192)
    ap.add_argument("--type-k", default="f16")
    ap.add_argument("--type-v", default="f16")
    ap.add_argument("--tg", type=int, default=128, help="tokens to decode for tg")
    ap.add_argument("--pp", type=int, default=512, help="prompt tokens for pp")
    ap.add_argument("--no-hold", action="store_true", help="do not hold the rest of the card")
    ap.add_argument("--no-reference", action="store_true", help="skip the all-on-GPU reference run")
    ap.add_argument("--sweep", help="n_cpu_moe values to measure too: N0:N1:STEP or a comma list")
    ap.add_argument("--llama-bench", help="path of llama-bench (built from the same sources) for -ncmoe")
    ap.add_argument("--calibrate", action="store_true", help="only the no-alloc probe grid")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    import llama_cpp

    from qwenkit.engine import devices, probe
    from qwenkit.plan import fit_report, plan

    out: dict[str, Any] = dict(date=_dt.datetime.now().isoformat(timespec="seconds"),
                               llama_cpp_python=llama_cpp.__version__,
                               gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()),
                               devices=[vars(d) for d in devices()], args=vars(a))
    outp = Path(a.out)
    outp.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        def clean(o):
            if isinstance(o, dict):
                return {k: clean(v) for k, v in o.items() if not k.startswith("_")}
            if isinstance(o, (list, tuple)):
                return [clean(v) for v in o]
            return o
        outp.write_text(json.dumps(clean(out), indent=2, default=str) + "\n")

    try:
        nv = NVML()
        out["gpu"] = nv.info()
    except Exception as e:  # noqa: BLE001
        nv = None
        out["gpu"] = dict(error=repr(e))
    save()

    if a.model:
        model = a.model
    else:
        from qwenkit import synthetic
        weights = "sparse" if a.calibrate else "random"
        model = str(Path(a.model_dir) / f"qwen35moe-full-q4_k_m-{weights}.gguf")
        if not Path(model).is_file():
            t = time.perf_counter()
            synthetic.write_model(model, arch="qwen35moe", size="full", weights=weights, progress=True)
            out["model_write_s"] = time.perf_counter() - t
    out["model"] = model

    if a.calibrate:
        models = {"qwen35moe": model}
        if not a.model:
            from qwenkit import synthetic
            q3 = str(Path(a.model_dir) / "qwen3moe-full-q4_k_m-sparse.gguf")
            if not Path(q3).is_file():
                synthetic.write_model(q3, arch="qwen3moe", size="full", weights="sparse", progress=False)
            models["qwen3moe"] = q3
        calibrate(models, out, save)
        save()
        print(f"wrote {outp}")
        return 0

    info = read_model_info(model)
    budget = parse_bytes(a.budget)
    r = fit_report(info, budget, RunConfig(model=model, n_ctx=a.n_ctx, type_k=a.type_k, type_v=a.type_v))
    cfg = r.cfg
    out["fit"] = dict(reason=r.reason, fits=r.fits, config=cfg.to_dict(), plan=r.plan.to_dict(),
                      table=r.plan.table(), tried=r.tried)
    print(r.reason)
    print(r.plan.table())
    p = probe(cfg)
    out["fit"]["llama_no_alloc"] = dict(summary=p.summary(), compute_buffers=p.compute_buffers)
    save()

    # the fitted config under a real budget
    hold = 0
    if nv and not a.no_hold:
        hold = max(0, nv.free() - budget)
    out["hold_bytes"] = hold
    with Hold(hold):
        if nv:
            out["free_under_hold"] = nv.free()
        run = measure_run(cfg, nv, a.tg, a.pp)
        pl = r.plan
        if run.get("ok"):
            mb = run["llama"]
            gpu_bufs = sum(v for k, v in mb["model_buffers"].items() if k.startswith("CUDA") and "Host" not in k)
            gpu_bufs += sum(v for d in ("kv_buffers", "rs_buffers", "compute_buffers")
                            for k, v in mb[d].items() if k.startswith("CUDA") and "Host" not in k)
            run["comparison_mib"] = dict(
                planned_gpu_total=pl.gpu_total / MiB,
                planned_gpu_without_runtime_margin=(pl.gpu_total - pl.runtime - pl.margin) / MiB,
                llama_gpu_buffers=gpu_bufs,
                nvml_used_delta=(run.get("nvml_used_delta") or 0) / MiB,
                nvml_minus_llama=((run.get("nvml_used_delta") or 0) / MiB - gpu_bufs),
                planned_weights_gpu=pl.weights_gpu / MiB,
                planned_compute_gpu=pl.compute[0] / MiB)
        out["fitted_run"] = run
        save()
        sweep_vals: list[int] = []
        if a.sweep:
            if ":" in a.sweep:
                n0, n1, st = (int(x) for x in (a.sweep.split(":") + ["1"])[:3])
                sweep_vals = list(range(n0, n1 + 1, st))
            else:
                sweep_vals = [int(x) for x in a.sweep.split(",")]
        out["sweep"] = []
        for n in sweep_vals:
            if n == cfg.n_cpu_moe:
                continue
            c = cfg.replace(n_cpu_moe=n)
            m = measure_run(c, nv, a.tg, a.pp)
            m["planned_gpu_total_mib"] = plan(info, c).gpu_total / MiB
            out["sweep"].append(m)
            save()
            print(f"n_cpu_moe={n}: ok={m.get('ok')} tg={m.get('tg_tok_s', 0):.1f} tok/s")

    ok_runs = [x for x in [out["fitted_run"], *out["sweep"]] if x.get("ok")]
    if ok_runs:
        best = max(ok_runs, key=lambda x: x["tg_tok_s"])
        out["best_fitting"] = dict(n_cpu_moe=best["n_cpu_moe"], tg_tok_s=best["tg_tok_s"])
        if out["fitted_run"].get("ok"):
            out["fitted_vs_best_tg"] = out["fitted_run"]["tg_tok_s"] / best["tg_tok_s"]

    if not a.no_reference and nv and out["fitted_run"].get("ok"):
        ref_cfg = cfg.replace(n_cpu_moe=0, n_gpu_layers=-1)
        if plan(info, ref_cfg).gpu_total < nv.free():
            ref = measure_run(ref_cfg, nv, min(a.tg, 32), a.pp)
            out["reference_all_gpu"] = ref
            if ref.get("ok"):
                import numpy as np
                fr = out["fitted_run"]
                out["reference_match"] = dict(
                    first_tokens_equal=fr["first_tokens"][:8] == ref["first_tokens"][:8],
                    n_equal_prefix=next((i for i, (x, y) in enumerate(zip(fr["first_tokens"], ref["first_tokens"],
                                                                         strict=False))
                                         if x != y), min(len(fr["first_tokens"]), len(ref["first_tokens"]))),
                    logits_max_abs_diff=float(np.abs(fr["_logits"] - ref["_logits"]).max()),
                    logits_max_abs=float(np.abs(ref["_logits"]).max()))
        save()

    if a.llama_bench:
        vals = sorted({0, cfg.n_cpu_moe, *sweep_vals})
        out["llama_bench"] = llama_bench(a.llama_bench, model, vals, cfg)
        save()
    print(json.dumps({k: out.get(k) for k in ("gpu", "hold_bytes", "best_fitting", "fitted_vs_best_tg",
                                                "reference_match")}, indent=2, default=str))
    if out["fitted_run"].get("comparison_mib"):
        print(json.dumps(out["fitted_run"]["comparison_mib"], indent=2))
    print(f"wrote {outp}")
    return 0 if out["fitted_run"].get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
