"""The GPU benchmark suite: the kit vs llama.cpp's own tools on one CUDA GPU, on the full-size
random synthetic Qwen3.5-35B-A3B (or a real GGUF), in under ~8 minutes on an H200.

    python benchmarks/gpu_suite.py --bin BUILD/bin --out runs/gpu        # writes runs/gpu/gpu_suite.json
    benchmarks/gpu_suite.sh BUILD/bin runs/gpu                           # the same, with the checks

Needs: a CUDA build of llama-cpp-python 0.3.36 made with `pip install -C build-dir=BUILD`
and CMAKE_ARGS adding `-DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAVA_BUILD=OFF`, so
llama-bench and llama-server in BUILD/bin come from the same sources and flags (docs/facts.md, section 2);
fastapi/uvicorn/pydantic/sse-starlette for the servers (no openai package: the streaming
client is plain http.client).

Stages (each writes the JSON again, so a stage that runs out of time loses only itself):
 1. "four": kit defaults (RunConfig()) - llama-bench pp512/tg128 vs in-kernel paths kit /
    decode / llama-cpp-python (r reps); streamed decode of the kit's server (with fastgen,
    and without as a reference) vs native llama-server (same flags, one slot).
 2. "flags": llama-cpp-python's defaults (Llama(): no GPU layers, no flash attention,
    n_ctx 512, cpu_count//2 threads) and the recipe's flags (--n_gpu_layers -1 --flash_attn
    True --n_ctx 8192 --cache_type_k q8_0, i.e. K q8_0 / V f16) vs the kit's defaults:
    in-kernel, llama-bench, and served (`python -m llama_cpp.server` as the recipe runs it,
    and the kit's server).
 3. "kv": KV pairs f16/f16, q8_0/q8_0, q4_0/q4_0, q8_0/f16 at depth 0 and --depth (16384):
    llama-bench and the kit's in-kernel path.
 4. "switches": GGML_CUDA_GRAPH_OPT=1 for llama-bench and the kit in-kernel; n_ubatch.
 6. "offload": --n-cpu-moe layers' experts in system RAM (the 16 GB-card case): llama-bench,
    the kit in-kernel, llama-server and the kit server (automatic stream grouping, and none).
 5. "server": where the kit server's streamed decode goes, variants side by side against
    llama-server (interleaved rounds): the kit's defaults; a request sending llama_cpp.server's
    old default repeat_penalty 1.1; stream writes grouped per 25 ms; GGML_CUDA_GRAPH_OPT=1 for
    both servers. (4 CPU threads for both servers was measured once and changed nothing:
    results/gpu_h200_server_ab.json.)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qwenkit import bench
from qwenkit.config import RunConfig, from_recipe_flags

RECIPE_FLAGS = "--n_gpu_layers -1 --flash_attn True --n_ctx 8192 --cache_type_k q8_0"
GRAPH_OPT = {"GGML_CUDA_GRAPH_OPT": "1"}
KV_PAIRS = (("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q8_0", "f16"))


class Suite:
    def __init__(self, args):
        self.args = args
        self.t0 = time.monotonic()
        self.out = Path(args.out) / "gpu_suite.json"
        self.doc: dict[str, Any] = {"meta": {}, "results": [], "comparisons": [], "stages": {}}

    # -- bookkeeping --
    def left(self) -> float:
        return self.args.budget - (time.monotonic() - self.t0)

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1, default=str) + "\n")
        tmp.replace(self.out)

    def add(self, results, stage: str, label: str | None = None) -> None:
        for r in results:
            r.extra["stage"] = stage
            if label:
                r.extra["setting"] = label
            self.doc["results"].append(r.to_dict())
            print(f"  [{stage}{'/' + label if label else ''}] {r}", flush=True)
        self.save()

    def stage(self, name: str, need_s: float, fn: Callable[[], None]) -> None:
        if self.left() < need_s:
            self.doc["stages"][name] = {"status": "skipped", "reason": f"{self.left():.0f} s left, needs ~{need_s:.0f}"}
            print(f"== {name}: skipped ({self.left():.0f} s left)", flush=True)
            self.save()
            return
        print(f"== {name} ({self.left():.0f} s left)", flush=True)
        t = time.monotonic()
        try:
            fn()
            self.doc["stages"][name] = {"status": "ok", "seconds": round(time.monotonic() - t, 1)}
        except Exception as e:  # noqa: BLE001 - record and go on with the next stage
            import traceback
            traceback.print_exc()
            self.doc["stages"][name] = {"status": "error", "error": f"{type(e).__name__}: {e}"[:2000],
                                        "seconds": round(time.monotonic() - t, 1)}
        self.save()

    def compare(self, figure: str, a: dict, b: dict) -> None:
        def find(q):
            for r in self.doc["results"]:
                if all(r.get(k) == v or r.get("extra", {}).get(k) == v for k, v in q.items()):
                    return r
            return None
        ra, rb = find(a), find(b)
        if ra and rb and ra["rates"] and rb["rates"]:
            self.doc["comparisons"].append({
                "figure": figure, "path": ra["path"], "test": ra["test"], "value": ra["mean"], "sd": ra["sd"],
                "baseline_path": rb["path"], "baseline_test": rb["test"], "baseline": rb["mean"],
                "baseline_sd": rb["sd"], "ratio": ra["mean"] / rb["mean"], "reps": len(ra["rates"]),
                "baseline_reps": len(rb["rates"]), "setting": ra.get("extra", {}).get("setting")})
            self.save()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="folder holding llama-bench and llama-server (BUILD/bin)")
    ap.add_argument("--out", required=True, help="results folder (gpu_suite.json is written there)")
    ap.add_argument("--model", help="GGUF (default: the full-size random synthetic qwen35moe, written once)")
    ap.add_argument("--model-dir", default=os.environ.get("QWENKIT_GPU_MODEL_DIR", "/tmp/qwenkit-models"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--server-n", type=int, default=128)
    ap.add_argument("--depth", type=int, default=16384)
    ap.add_argument("--n-cpu-moe", type=int, default=11, help="offload stage: layers whose experts stay in RAM "
                    "(11: what `qwenkit fit` chose for a 16 GiB budget on this model)")
    ap.add_argument("--budget", type=float, default=450, help="seconds; later stages are skipped past it")
    ap.add_argument("--stages", default="four,flags,kv,switches", help="comma list of stages to run")
    args = ap.parse_args(argv)
    s = Suite(args)
    bin_dir = Path(args.bin).resolve()
    r, sn = args.reps, args.server_n

    # model
    model = args.model
    if not model:
        t, written = time.monotonic(), (Path(args.model_dir) / bench.SYNTHETIC_MODEL_NAME).is_file()
        model = bench.synthetic_model(args.model_dir)
        if not written:
            s.doc["meta"]["model_write_s"] = round(time.monotonic() - t, 1)
    meta = bench.machine_info()
    meta.update(model=Path(model).name, model_path=model, model_bytes=Path(model).stat().st_size,
                tools=str(bin_dir), reps=r, server_n=sn, depth=args.depth, suite="gpu_suite")
    try:
        out = subprocess.run([str(bin_dir / "llama-bench"), "--version"], check=False, capture_output=True, text=True,
                             timeout=60, env=bench.tool_env(bin_dir))
        meta["llama_bench_version"] = (out.stdout + out.stderr).strip()[-300:]
    except Exception as e:  # noqa: BLE001
        meta["llama_bench_version"] = f"error: {e}"
    s.doc["meta"] = {**s.doc["meta"], **meta}
    s.save()

    kit = RunConfig(model=model)                                     # the kit's defaults
    recipe, _, notes = from_recipe_flags(RECIPE_FLAGS, model=model)  # K q8_0 / V f16
    ncpu = os.cpu_count() or 2
    lcp = RunConfig(model=model, n_ctx=512, n_gpu_layers=0, flash_attn=False, n_threads=max(1, ncpu // 2),
                    n_batch=512, n_ubatch=512)                       # Llama()'s defaults
    s.doc["meta"]["configs"] = {"kit": kit.to_dict(), "recipe": recipe.to_dict(), "llama-cpp-python": lcp.to_dict(),
                                "recipe_flags": RECIPE_FLAGS, "recipe_notes": notes}

    # ---- 1. the four at the kit's defaults ---------------------------------------------
    def four():
        s.add(bench.run_llama_bench(kit, r=r, bin_dir=bin_dir), "four", "kit defaults")
        from qwenkit.engine import load
        llm = load(kit)
        try:
            for path in ("kit", "decode", "llama-cpp-python"):
                s.add(bench.bench(llm, r=r, path=path), "four", "kit defaults")
        finally:
            llm.close()
        with bench.kit_server(kit) as ks, bench.NativeServer(kit, bin_dir=bin_dir) as ns:
            for _ in range(2):  # interleaved: two rounds of ceil(r/2)
                for label, srv in (("kit server", ks), ("llama-server", ns)):
                    s.add([bench.bench_server(srv.base_url, n=sn, r=max(1, (r + 1) // 2), label=label,
                                              config=bench.config_fields(kit))], "four", "kit defaults")
        _merge_stage(s, "four")
        s.compare("kit in-kernel tg128 vs llama-bench", {"path": "kit", "test": "tg128", "stage": "four"},
                  {"path": "llama-bench", "test": "tg128", "stage": "four"})
        s.compare("kit in-kernel pp512 vs llama-bench", {"path": "kit", "test": "pp512", "stage": "four"},
                  {"path": "llama-bench", "test": "pp512", "stage": "four"})
        s.compare("binding decode loop tg128 vs llama-bench", {"path": "decode", "test": "tg128", "stage": "four"},
                  {"path": "llama-bench", "test": "tg128", "stage": "four"})
        s.compare("stock Llama.generate tg128 vs llama-bench",
                  {"path": "llama-cpp-python", "test": "tg128", "stage": "four"},
                  {"path": "llama-bench", "test": "tg128", "stage": "four"})
        t = f"tg{sn} (stream)"
        s.compare("kit server vs llama-server", {"path": "kit server", "test": t, "stage": "four"},
                  {"path": "llama-server", "test": t, "stage": "four"})
        s.compare("llama-server vs llama-bench tg128", {"path": "llama-server", "test": t, "stage": "four"},
                  {"path": "llama-bench", "test": "tg128", "stage": "four"})

    # ---- 2. llama-cpp-python defaults and the recipe's flags vs the kit's defaults -----------
    def flags():
        from qwenkit.engine import load
        # llama-cpp-python's defaults: everything on the CPU (slow): fewer tokens, 2 reps
        llm = load(lcp)
        try:
            s.add(bench.bench(llm, p=512, n=32, r=2, path="llama-cpp-python"), "flags", "llama-cpp-python defaults")
        finally:
            llm.close()
        with bench.StockServer(model, []) as st:   # python -m llama_cpp.server --model M: nothing else
            s.add([bench.bench_server(st.base_url, n=32, r=2, label="llama_cpp.server",
                                      config=bench.config_fields(lcp))], "flags", "llama-cpp-python defaults")
        # the recipe's flags, as llama_cpp.server really takes them (type ids; --cache_type_k does not exist)
        s.add(bench.run_llama_bench(recipe, r=r, bin_dir=bin_dir), "flags", "recipe")
        llm = load(recipe)
        try:
            s.add(bench.bench(llm, r=r, path="kit"), "flags", "recipe")
        finally:
            llm.close()
        recipe_server_args = ["--n_gpu_layers", "-1", "--flash_attn", "true", "--n_ctx", "8192", "--type_k", "8"]
        with bench.StockServer(model, recipe_server_args) as st, bench.kit_server(recipe) as ks:
            for label, srv in (("llama_cpp.server", st), ("kit server", ks)):
                s.add([bench.bench_server(srv.base_url, n=sn, r=r, label=label, config=bench.config_fields(recipe))],
                      "flags", "recipe")
        t = f"tg{sn} (stream)"
        for setting in ("recipe",):
            s.compare(f"{setting}: llama_cpp.server vs kit server (kit defaults)",
                      {"path": "llama_cpp.server", "test": t, "setting": setting},
                      {"path": "kit server", "test": t, "stage": "four"})
            s.compare(f"{setting}: kit in-kernel tg128 vs kit defaults",
                      {"path": "kit", "test": "tg128", "setting": setting},
                      {"path": "kit", "test": "tg128", "stage": "four"})
        s.compare("llama-cpp-python defaults: Llama.generate tg32 vs kit defaults tg128",
                  {"path": "llama-cpp-python", "test": "tg32", "setting": "llama-cpp-python defaults"},
                  {"path": "kit", "test": "tg128", "stage": "four"})
        s.compare("llama-cpp-python defaults: llama_cpp.server vs kit server (kit defaults)",
                  {"path": "llama_cpp.server", "test": "tg32 (stream)", "setting": "llama-cpp-python defaults"},
                  {"path": "kit server", "test": t, "stage": "four"})

    # ---- 3. KV types at depth 0 and a long depth ------------------------------------------------
    def kv():
        from qwenkit.engine import load
        n_ctx = args.depth + 512 + 128 + 256
        for k, v in KV_PAIRS:
            c = kit.replace(type_k=k, type_v=v, n_ctx=n_ctx)
            label = f"{k}/{v}"
            if s.left() < 40:
                s.doc["stages"].setdefault("kv_skipped", []).append(label)
                continue
            s.add(bench.run_llama_bench(c, r=r, d=[0, args.depth], bin_dir=bin_dir),
                  "kv", label)
            llm = load(c)
            try:
                for d in (0, args.depth):
                    s.add(bench.bench(llm, r=r, d=d, path="kit"), "kv", label)
            finally:
                llm.close()
        for d in (0, args.depth):
            for kind in ("pp512", "tg128"):
                t = kind + (f" @ d{d}" if d else "")
                for k, v in KV_PAIRS[1:]:
                    s.compare(f"KV {k}/{v} vs f16 (llama-bench {t})",
                              {"path": "llama-bench", "test": t, "setting": f"{k}/{v}"},
                              {"path": "llama-bench", "test": t, "setting": "f16/f16"})
                s.compare(f"kit in-kernel vs llama-bench, KV f16 {t}", {"path": "kit", "test": t, "setting": "f16/f16"},
                          {"path": "llama-bench", "test": t, "setting": "f16/f16"})

    # ---- 4. llama.cpp's speed switches -----------------------------------------------------------
    def switches():
        env = GRAPH_OPT
        s.add(bench.run_llama_bench(kit, p=0, r=r, bin_dir=bin_dir, env=env), "switches", "GGML_CUDA_GRAPH_OPT=1")
        s.add(bench.run_llama_bench(kit, p=0, r=r, bin_dir=bin_dir), "switches", "default")
        # the kit in a fresh process with the variable set (it is read when the backend starts)
        for label, e in (("GGML_CUDA_GRAPH_OPT=1", env), ("default", {})):
            out = Path(args.out) / f"switch_{'opt' if e else 'default'}.json"
            cmd = [sys.executable, "-m", "qwenkit", "bench", "--model", model, "-p", "0", "-n", "128",
                   "-r", str(r), "--path", "kit,decode", "--n-ctx", "8192", "--json", str(out)]
            root = str(Path(__file__).resolve().parent.parent)
            pp = os.pathsep.join([root] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
            done = subprocess.run(cmd, check=False, env={**os.environ, **e, "PYTHONPATH": pp}, capture_output=True,
                                  text=True, timeout=max(60, s.left()))
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {(done.stdout + done.stderr)[-1500:]}")
            _, res = bench.load_json(out)
            s.add(res, "switches", label)
        s.add(bench.run_llama_bench(kit, r=r, bin_dir=bin_dir, extra_args=["-ub", "256,1024"]), "switches", "n_ubatch")
        s.compare("GGML_CUDA_GRAPH_OPT=1: llama-bench tg128 vs default",
                  {"path": "llama-bench", "test": "tg128", "setting": "GGML_CUDA_GRAPH_OPT=1"},
                  {"path": "llama-bench", "test": "tg128", "setting": "default"})
        s.compare("GGML_CUDA_GRAPH_OPT=1: kit tg128 vs default",
                  {"path": "kit", "test": "tg128", "setting": "GGML_CUDA_GRAPH_OPT=1"},
                  {"path": "kit", "test": "tg128", "setting": "default"})

    # ---- 5. the kit server's per-token costs -----------------------------------------------------
    def server():
        t = f"tg{sn} (stream)"
        with contextlib.ExitStack() as st:
            ns = st.enter_context(bench.NativeServer(kit, bin_dir=bin_dir))
            ks = st.enter_context(bench.kit_server(kit))
            variants = [("llama-server", ns, None, "kit defaults"),
                        ("kit server", ks, None, "kit defaults"),
                        ("kit server", ks, {"repeat_penalty": 1.1}, "request repeat_penalty 1.1"),
                        ("kit server", st.enter_context(bench.kit_server(kit, stream_flush_ms=25)), None,
                         "stream_flush_ms 25"),
                        ("llama-server", st.enter_context(bench.NativeServer(kit, bin_dir=bin_dir, env=GRAPH_OPT)),
                         None, "GGML_CUDA_GRAPH_OPT=1"),
                        ("kit server", st.enter_context(bench.kit_server(kit, env=GRAPH_OPT)), None,
                         "GGML_CUDA_GRAPH_OPT=1")]
            _interleaved(s, "server", variants, max(2, r), sn, bench.config_fields(kit))
        _merge_stage(s, "server")
        for setting in ("kit defaults", "request repeat_penalty 1.1", "stream_flush_ms 25"):
            s.compare(f"server stage: kit server ({setting}) vs llama-server",
                      {"path": "kit server", "test": t, "stage": "server", "setting": setting},
                      {"path": "llama-server", "test": t, "stage": "server", "setting": "kit defaults"})
        for path in ("llama-server", "kit server"):
            s.compare(f"server stage: {path} GGML_CUDA_GRAPH_OPT=1 vs default",
                      {"path": path, "test": t, "stage": "server", "setting": "GGML_CUDA_GRAPH_OPT=1"},
                      {"path": path, "test": t, "stage": "server", "setting": "kit defaults"})

    # ---- 6. experts of the first layers in system RAM (the 16 GB-card case) ---------------------
    def offload():
        t = f"tg{sn} (stream)"
        off = kit.replace(n_cpu_moe=args.n_cpu_moe)
        label = f"n_cpu_moe={args.n_cpu_moe}"
        s.add(bench.run_llama_bench(off, p=0, r=r, bin_dir=bin_dir), "offload", label)
        from qwenkit.engine import load
        llm = load(off)
        try:
            s.add(bench.bench(llm, p=0, r=r, path="kit"), "offload", label)
        finally:
            llm.close()
        with contextlib.ExitStack() as st:
            variants = [("llama-server", st.enter_context(bench.NativeServer(off, bin_dir=bin_dir)), None, label),
                        ("kit server", st.enter_context(bench.kit_server(off)), None, label + ", flush auto"),
                        ("kit server", st.enter_context(bench.kit_server(off, stream_flush_ms=0)), None,
                         label + ", flush 0")]
            s.doc["meta"]["offload_kit_server_status"] = variants[1][1].status()
            _interleaved(s, "offload", variants, max(2, r), sn, bench.config_fields(off))
        _merge_stage(s, "offload")
        s.compare(f"{label}: kit in-kernel tg128 vs llama-bench", {"path": "kit", "test": "tg128", "stage": "offload"},
                  {"path": "llama-bench", "test": "tg128", "stage": "offload"})
        for setting in (label + ", flush auto", label + ", flush 0"):
            s.compare(f"{setting}: kit server vs llama-server", {"path": "kit server", "test": t, "setting": setting},
                      {"path": "llama-server", "test": t, "setting": label})

    want = set(args.stages.split(","))
    for name, need, fn in (("four", 60, four), ("flags", 90, flags), ("kv", 60, kv), ("switches", 45, switches),
                           ("server", 90, server), ("offload", 90, offload)):
        if name in want:
            s.stage(name, need, fn)
    s.doc["meta"]["wall_s"] = round(time.monotonic() - s.t0, 1)
    s.save()
    print()
    print(bench.table([bench.BenchResult.from_dict(d) for d in s.doc["results"]]))
    print()
    rows = [[c["figure"], f"{c['value']:.2f} ± {c['sd']:.2f}", f"{c['baseline']:.2f} ± {c['baseline_sd']:.2f}",
             f"{c['ratio']:.3f}"] for c in s.doc["comparisons"]]
    print(bench.markdown_table(["figure", "t/s", "baseline t/s", "ratio"], rows))
    print(f"\nwrote {s.out} in {s.doc['meta']['wall_s']} s", flush=True)
    return 0


def _interleaved(s: Suite, stage: str, variants, rounds: int, n: int, config: dict) -> None:
    """Streamed decode of server variants (label, server, extra request body, setting): one
    warm-up each, then `rounds` rounds of one request each, the order reversed every other round
    so that drift hits all variants alike."""
    for _, srv, extra, _ in variants:
        bench.stream_completion(srv.base_url, bench.DEFAULT_SERVER_PROMPT, 8, headers=srv.headers(), extra=extra)
    for k in range(rounds):
        for label, srv, extra, setting in (variants if k % 2 == 0 else variants[::-1]):
            s.add([bench.bench_server(srv.base_url, n=n, r=1, label=label, warmup=False, extra_body=extra,
                                      headers=srv.headers(), config=config)], stage, setting)


def _merge_stage(s: Suite, stage: str) -> None:
    """Join the interleaved server rounds of one stage into one result per (path, test, setting)."""
    keep: list[dict[str, Any]] = []
    merged: dict[tuple, dict[str, Any]] = {}
    for d in s.doc["results"]:
        ex = d.get("extra", {})
        if ex.get("stage") != stage:
            keep.append(d)
            continue
        key = (d["path"], d["test"], ex.get("setting"))
        if key in merged:
            m = merged[key]
            m["rates"] = m["rates"] + d["rates"]
            for k in ("ttft_s", "chunks"):
                if k in ex:
                    m["extra"][k] = m["extra"].get(k, []) + ex[k]
        else:
            merged[key] = json.loads(json.dumps(d))
    for m in merged.values():
        r = bench.BenchResult.from_dict(m)
        m.update(mean=r.mean, sd=r.sd)
    s.doc["results"] = keep + list(merged.values())
    s.save()


if __name__ == "__main__":
    sys.exit(main())
