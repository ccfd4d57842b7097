"""What each KV cache type saves in memory and costs in quality and in decode speed.

    python benchmarks/kv_quality.py                               # default model, bundled text
    python benchmarks/kv_quality.py --model M.gguf --depth 16384 --n-ctx-ppl 512

1. Quality: perplexity and KL divergence vs the f16 cache (qwenkit.quality, llama.cpp's
   perplexity method) for f16/f16, q8_0/q8_0, q4_0/q4_0 and the recipe's K q8_0 / V f16 on
   the bundled sample text (English + Japanese); the f16 perplexity is checked against
   llama.cpp's own `llama-perplexity` on the same text when that tool is built.
2. Memory: KV bytes per token (from the GGUF header) and the cache at --mem-ctx tokens.
3. Speed: decode tg{n} at depth 0 and at --depth, for each KV pair, on the kit's in-kernel
   path and llama-bench, repetitions interleaved across the pairs; ratio to f16 in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qwenkit import bench, quality
from qwenkit.config import RunConfig, default_threads
from qwenkit.models import default_model_path

HERE = Path(__file__).resolve().parent


def llama_perplexity(bin_dir: Path, model: str, text: str, n_ctx: int, threads: int,
                     chunks: int | None) -> float | None:
    exe = bin_dir / "llama-perplexity"
    if not exe.is_file():
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(text)
    try:
        args = [str(exe), "-m", model, "-f", f.name, "-c", str(n_ctx), "-b", str(n_ctx), "-t", str(threads),
                "-fa", "on", "-ctk", "f16", "-ctv", "f16"] + (["--chunks", str(chunks)] if chunks else [])
        out = subprocess.run(args, check=False, capture_output=True, text=True, timeout=3600,
                             env=bench.tool_env(bin_dir))
        m = re.search(r"Final estimate: PPL = ([0-9.]+)", out.stdout + out.stderr)
        return float(m.group(1)) if m else None
    finally:
        os.unlink(f.name)


def _speed_note(n: int, depth: int, mem_ctx: int) -> str:
    return (f"Speed columns: decode rate with this KV pair relative to the f16/f16 cache, median over the "
            f"interleaved rounds of the ratio within a round (kit in-kernel path and llama-bench, tg{n} at "
            f"depth 0 and {depth}); KV MiB at {mem_ctx} tokens from the GGUF header. At depth 0 the cache "
            f"holds a few dozen tokens: differences there are this shared machine's noise, not the KV type.")


def speed_ratios(results, speed, labels, pairs, n, depth) -> None:
    """Decode rate of each KV pair relative to f16/f16: the median over rounds of the ratio
    within a round (each round ran every pair once, so a load burst hits a round's pair alike;
    this machine's neighbours made single repetitions collapse by 10-50x now and then)."""
    get = {(r.path, r.test, r.config.get("type_k"), r.config.get("type_v")): r for r in results}
    for lab, (k, v) in zip(labels, pairs, strict=True):
        for d in (0, depth):
            t = bench.test_name(0, n, d)
            for path in ("kit", "llama-bench"):
                a, b = get.get((path, t, k, v)), get.get((path, t, "f16", "f16"))
                if a and b and a.rates and len(a.rates) == len(b.rates):
                    speed[lab][f"{path} {t} vs f16"] = statistics.median(
                        x / y for x, y in zip(a.rates, b.rates, strict=True))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--n-ctx-ppl", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=0, help="at most this many chunks (0: all)")
    ap.add_argument("--text", default="en+ja", help="bundled text: en, ja or en+ja; or a file path")
    ap.add_argument("--depth", type=int, default=4096, help="the long depth for the speed cost")
    ap.add_argument("-n", type=int, default=64, help="tokens per tg test")
    ap.add_argument("--reps", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--mem-ctx", type=int, default=8192)
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--recompute", action="store_true",
                    help="only recompute the speed ratios and the file's tables from --out's results")
    ap.add_argument("--bin", default=None)
    ap.add_argument("--note", action="append", default=[], help="a line for RESULTS.md (repeatable)")
    ap.add_argument("--out", default=str(HERE / "results" / "kv_quality.json"))
    args = ap.parse_args(argv)

    if args.recompute:
        doc = json.loads(Path(args.out).read_text())
        res = [bench.BenchResult.from_dict(d) for d in doc["results"]]
        labels = [f"{k}/{v}" for k, v in quality.DEFAULT_KV]
        speed: dict[str, dict[str, Any]] = {lab: {k: v for k, v in doc["speed"][lab].items()
                                                  if not k.endswith("vs f16")} for lab in labels}
        m = doc["meta"]
        speed_ratios(res, speed, labels, list(quality.DEFAULT_KV), int(res[0].n_gen), int(m["depth"]))
        doc["speed"] = speed
        mem_ctx = int(m.get("kv_mib_at", {}).get("n_ctx", 8192))
        doc["speed_note"] = _speed_note(int(res[0].n_gen), int(m["depth"]), mem_ctx)
        Path(args.out).write_text(json.dumps(doc, indent=1, default=str) + "\n")
        rows = [quality.KVQuality(**{k: v for k, v in q.items() if k != "label"}) for q in doc["quality"]]
        print(quality.table(rows, speed))
        return 0
    model = args.model or str(default_model_path())
    text = Path(args.text).read_text() if Path(args.text).is_file() else quality.bundled_text(args.text)
    pairs = list(quality.DEFAULT_KV)
    labels = [f"{k}/{v}" for k, v in pairs]
    meta = bench.machine_info()
    meta["notes"] = list(args.note)
    meta.update(model=Path(model).name, model_path=model, threads=args.threads, reps=args.reps,
                text=args.text, n_ctx_ppl=args.n_ctx_ppl, depth=args.depth, suite="kv_quality")
    bin_dir = Path(args.bin) if args.bin else bench.find_tools(("llama-bench",))

    # 1. quality
    print("quality ...", file=sys.stderr)
    rows = quality.kv_quality(RunConfig(model=model, n_threads=args.threads), kv=pairs, text=text,
                              n_ctx=args.n_ctx_ppl, n_chunks=args.chunks or None, progress=True)
    print(quality.table(rows))
    if bin_dir:
        ref = llama_perplexity(bin_dir, model, text, args.n_ctx_ppl, args.threads, args.chunks or None)
        meta["llama_perplexity_f16"] = ref
        base = next(r for r in rows if r.label == "f16/f16")
        meta.setdefault("notes", []).append(f"f16 perplexity: qwenkit.quality {base.ppl:.4f}, "
                                            f"llama.cpp llama-perplexity {ref}"
                         f" (same text, n_ctx {args.n_ctx_ppl}, {base.n_chunks} chunks, {base.n_scored} scored tokens)")

    # 2. memory
    from qwenkit.gguf_info import read_model_info
    info = read_model_info(model)
    mem = {lab: info.kv_bytes_per_token(k, v) * args.mem_ctx / 2**20 for lab, (k, v) in zip(labels, pairs, strict=True)}
    meta["kv_mib_at"] = {"n_ctx": args.mem_ctx, **{k: round(v, 2) for k, v in mem.items()}}

    # 3. speed, interleaved over the pairs
    results: list[bench.BenchResult] = []
    speed = {lab: {f"KV MiB @ {args.mem_ctx}": f"{mem[lab]:.1f}"} for lab in labels}
    loads = []
    if not args.no_speed:
        from qwenkit.engine import load
        n_ctx = args.depth + args.n + 256
        llms = {}
        try:
            for lab, (k, v) in zip(labels, pairs, strict=True):
                llms[lab] = (load(RunConfig(model=model, n_ctx=n_ctx, type_k=k, type_v=v, n_threads=args.threads)),
                             RunConfig(model=model, n_ctx=n_ctx, type_k=k, type_v=v, n_threads=args.threads))
            warm = set()
            for rnd in range(args.reps):
                la0 = os.getloadavg()
                order = labels if rnd % 2 == 0 else labels[::-1]
                for lab in order:
                    llm, cfg = llms[lab]
                    for d in (0, args.depth):
                        res = bench.bench(llm, p=0, n=args.n, r=1, d=d, path="kit", config=cfg,
                                          warmup=(lab, d) not in warm)
                        warm.add((lab, d))
                        for x in res:
                            x.extra["setting"] = lab
                        results += res
                        if bin_dir:
                            lb = bench.run_llama_bench(cfg, p=0, n=args.n, r=1, d=d, bin_dir=bin_dir)
                            for x in lb:
                                x.extra["setting"] = lab
                            results += lb
                loads.append({"round": rnd, "before": la0, "after": os.getloadavg()})
                print(f"speed round {rnd + 1}/{args.reps}", file=sys.stderr)
        finally:
            for llm, _ in llms.values():
                llm.close()
        results = bench.merge(results)
        speed_ratios(results, speed, labels, pairs, args.n, args.depth)
        meta["load"] = loads
    bench.save_json(results, args.out, meta=meta, quality=[r.to_dict() for r in rows], speed=speed,
                    speed_note=_speed_note(args.n, args.depth, args.mem_ctx))
    print()
    print(quality.table(rows, speed))
    if results:
        print()
        print(bench.table(results))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
