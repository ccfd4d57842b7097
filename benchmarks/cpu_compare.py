"""The kit vs llama.cpp's own tools on this machine's CPU, same model, same build, same flags.

    python benchmarks/cpu_compare.py                        # default model, all cores, r=5
    python benchmarks/cpu_compare.py --reps 7 --out benchmarks/results/cpu_2core.json

Four figures and their baselines, measured in ONE run with the repetitions interleaved
(round k runs every path once, in alternating order), so load from other processes hits all
paths alike:
  in-kernel  pp512 / tg128: kit (qwenkit.fastgen loop: decode + greedy + detokenize) vs
             llama-bench (built by scripts/build_tools.sh from the wheel's sources and flags);
             references: the same loop without sampling ("decode", llama-bench's own loop
             through the Python binding) and stock llama-cpp-python `Llama.generate`.
  server     streamed decode tok/s seen by a client (greedy, n tokens): the kit's server
             (qwenkit.server, with the fastgen completion path) vs native llama-server;
             references: the kit's server without fastgen, and `python -m llama_cpp.server`
             with only --n_threads set.
The machine's load average is recorded before and after every round.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qwenkit import bench
from qwenkit.config import RunConfig, default_threads
from qwenkit.models import default_model_path

HERE = Path(__file__).resolve().parent


def comparisons(results: list[bench.BenchResult], p: int, n: int) -> list[dict]:
    """figure / baseline pairs with their ratio (from the merged results)."""
    get = {(r.path, r.test): r for r in results}
    tg_stream = f"tg{n} (stream)"
    pairs = [
        ("kit in-kernel pp", ("kit", f"pp{p}"), ("llama-bench", f"pp{p}")),
        ("kit in-kernel tg (decode + sample + detok)", ("kit", f"tg{n}"), ("llama-bench", f"tg{n}")),
        ("binding decode loop tg (no sampling)", ("decode", f"tg{n}"), ("llama-bench", f"tg{n}")),
        ("stock Llama.generate tg", ("llama-cpp-python", f"tg{n}"), ("llama-bench", f"tg{n}")),
        ("kit server streamed decode", ("kit server", tg_stream), ("llama-server", tg_stream)),
        ("kit server without fastgen", ("kit server (no fastgen)", tg_stream), ("llama-server", tg_stream)),
        ("llama_cpp.server (--n_threads only)", ("llama_cpp.server", tg_stream), ("llama-server", tg_stream)),
        ("llama-server vs llama-bench tg", ("llama-server", tg_stream), ("llama-bench", f"tg{n}")),
    ]
    out = []
    for name, a, b in pairs:
        ra, rb = get.get(a), get.get(b)
        if not (ra and rb and ra.rates and rb.rates):
            continue
        c = {"figure": name, "path": a[0], "test": a[1], "value": ra.mean, "sd": ra.sd,
             "baseline_path": b[0], "baseline_test": b[1], "baseline": rb.mean, "baseline_sd": rb.sd,
             "ratio": ra.mean / rb.mean, "reps": len(ra.rates), "baseline_reps": len(rb.rates)}
        if len(ra.rates) == len(rb.rates) > 1:
            # one repetition of each per round: the ratio within a round sees the same load
            per_round = [x / y for x, y in zip(ra.rates, rb.rates, strict=True)]
            c["ratio_rounds"] = per_round
            c["ratio_median_of_rounds"] = statistics.median(per_round)
        out.append(c)
    return out


def print_comparisons(comps: list[dict]) -> None:
    rows = [[c["figure"], f"{c['value']:.2f} ± {c['sd']:.2f}", f"{c['baseline_path']} {c['baseline_test']}",
             f"{c['baseline']:.2f} ± {c['baseline_sd']:.2f}", f"{c['ratio']:.3f}",
             f"{c['ratio_median_of_rounds']:.3f}" if "ratio_median_of_rounds" in c else ""] for c in comps]
    head = ["figure", "t/s", "baseline", "baseline t/s", "ratio of means", "median ratio per round"]
    print(bench.markdown_table(head, rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5, help="interleaved rounds (each path once per round)")
    ap.add_argument("--server-n", type=int, default=128, help="tokens per streamed request")
    ap.add_argument("--no-servers", action="store_true")
    ap.add_argument("--no-stock", action="store_true", help="skip the reference paths")
    ap.add_argument("--bin", default=None, help="folder with llama-bench / llama-server")
    ap.add_argument("--switches", action="store_true",
                    help="also sweep n_threads (tg) and n_ubatch (pp) on the kit and llama-bench")
    ap.add_argument("--note", action="append", default=[], help="a line for RESULTS.md (repeatable)")
    ap.add_argument("--out", default=str(HERE / "results" / "cpu_compare.json"))
    args = ap.parse_args(argv)

    model = args.model or str(default_model_path())
    cfg = RunConfig(model=model, n_ctx=2048, n_threads=args.threads)
    bin_dir = Path(args.bin) if args.bin else bench.find_tools()
    if bin_dir is None:
        print("llama-bench / llama-server are not built: run scripts/build_tools.sh", file=sys.stderr)
        return 2
    meta = bench.machine_info()
    meta.update(model=Path(model).name, model_path=model, threads=args.threads, tools=str(bin_dir),
                reps=args.reps, p=args.p, n=args.n, server_n=args.server_n, config=cfg.to_dict())
    info = bin_dir.parent / "BUILD_INFO"
    if info.is_file():
        meta["tools_build"] = info.read_text().strip().splitlines()
    print(cfg.summary(), "| tools:", bin_dir, file=sys.stderr)

    from qwenkit.engine import load
    llm = load(cfg)
    servers: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        stack.callback(llm.close)
        if not args.no_servers:
            servers["kit server"] = stack.enter_context(bench.kit_server(cfg))
            if not args.no_stock:
                servers["llama_cpp.server"] = stack.enter_context(bench.StockServer(
                    model, ["--n_threads", str(args.threads), "--n_threads_batch", str(args.threads)]))
            servers["llama-server"] = stack.enter_context(bench.NativeServer(cfg, bin_dir=bin_dir))
            for s in servers.values():  # one warm-up request each
                bench.stream_completion(s.base_url, bench.DEFAULT_SERVER_PROMPT, 8, headers=s.headers())
        kernel_paths = ["kit", "decode"] + ([] if args.no_stock else ["llama-cpp-python"])
        warm = set()
        results: list[bench.BenchResult] = []
        loads = []
        for k in range(args.reps):
            order = ["llama-bench", *kernel_paths, *servers]
            if k % 2:
                order.reverse()
            la0 = os.getloadavg()
            for what in order:
                if what == "llama-bench":
                    results += bench.run_llama_bench(cfg, p=args.p, n=args.n, r=1, bin_dir=bin_dir)
                elif what in kernel_paths:
                    results += bench.bench(llm, p=args.p, n=args.n, r=1, path=what, warmup=what not in warm)
                    warm.add(what)
                else:
                    s = servers[what]
                    results.append(bench.bench_server(s.base_url, n=args.server_n, r=1, label=what, warmup=False,
                                                      headers=s.headers(), config=bench.config_fields(cfg)))
            loads.append({"round": k, "before": la0, "after": os.getloadavg()})
            print(f"round {k + 1}/{args.reps} done, load {la0[0]:.2f} -> {os.getloadavg()[0]:.2f}", file=sys.stderr)
    merged = bench.merge(results)
    for r in merged:
        r.config = bench.config_fields(cfg)
    comps = comparisons(merged, args.p, args.n)
    if args.switches:
        sw: list[bench.BenchResult] = []
        for _ in range(args.reps):  # interleaved too
            for field, values, p_, n_ in (("n_threads", sorted({1, args.threads}), 0, args.n),
                                          ("n_ubatch", [128, 256, 512], args.p, 0)):
                for v in values:
                    c = cfg.replace(**{field: v})
                    sw += [dict_setting(x, f"{field}={v}") for x in bench.bench(c, p=p_, n=n_, r=1, path="kit")]
                    sw += [dict_setting(x, f"{field}={v}") for x in
                           bench.run_llama_bench(c, p=p_, n=n_, r=1, bin_dir=bin_dir)]
        merged += bench.merge(sw)
    meta["load"] = loads
    meta["notes"] = list(args.note)
    bench.save_json(merged, args.out, meta=meta, comparisons=comps)
    print(bench.table(merged))
    print()
    print_comparisons(comps)
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


def dict_setting(r: bench.BenchResult, setting: str) -> bench.BenchResult:
    r.extra["setting"] = setting
    return r


if __name__ == "__main__":
    sys.exit(main())
