"""`python -m qwenkit bench`: pp/tg the way llama-bench measures, sweeps, servers, KV quality.

    python -m qwenkit bench                               # pp512 + tg128, kit path, r=5
    python -m qwenkit bench -p 512 -n 128 -r 5 -d 4096 --path decode,kit,llama-cpp-python
    python -m qwenkit bench --sweep type_k=f16,q8_0,q4_0 --plot sweep.png --json sweep.json
    python -m qwenkit bench --llama-bench                 # also run llama-bench (same model/flags)
    python -m qwenkit bench --server                      # also the kit's server, streamed
    python -m qwenkit bench --quality --n-ctx-ppl 512     # PPL / KLD per KV type vs f16
    python -m qwenkit bench --config tuned.json           # a saved RunConfig's settings
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from qwenkit import cli_options
from qwenkit.errors import ConfigError

__all__ = ["parse_sweep", "add_cli", "run"]

# the benchmark's own defaults under --config and the flags: llama-bench's n_batch, and
# n_ctx 0 = just enough for the test (RunConfig's defaults for the rest)
_BENCH_DEFAULTS = {"n_batch": 2048, "n_ctx": 0}


def parse_sweep(spec: str) -> tuple[str, list[Any]]:
    """'type_k=f16,q8_0' -> ('type_k', ['f16', 'q8_0']); values read as the field's flag reads them."""
    from qwenkit.config import setting

    field, sep, vals = spec.partition("=")
    field = field.strip().replace("-", "_")
    if not sep or not vals:
        raise ConfigError(f"cannot read --sweep {spec!r}", "write --sweep FIELD=V1,V2,... e.g. n_threads=1,2")
    try:
        s = setting(field)
    except ConfigError:
        raise ConfigError(f"--sweep: RunConfig has no field {field!r}", "use e.g. type_k, type_v, n_threads, "
                          "n_batch, n_ubatch, n_cpu_moe, flash_attn, n_ctx") from None
    return field, [s.parse(v.strip(), f"--sweep {field}") for v in vals.split(",") if v.strip()]


def add_cli(sub) -> None:
    p = sub.add_parser("bench", help="tokens/s measured the way llama-bench does; sweeps; KV quality",
                       description="Prompt processing (pp) and generation (tg) speed, measured as "
                                   "llama-bench measures them (warm-up, r repetitions, KV cleared, mean ± sd).")
    cli_options.add_model_options(p, defaults=_BENCH_DEFAULTS, help={
        "n_ctx": "context size in tokens (default: just enough for -p + -n + -d; 0 too)"})
    p.add_argument("-p", "--n-prompt", type=int, default=512)
    p.add_argument("-n", "--n-gen", type=int, default=128)
    p.add_argument("-r", "--reps", type=int, default=5)
    p.add_argument("-d", "--depth", type=int, default=0, help="tokens prefilled (untimed) before each test")
    p.add_argument("--path", default="kit", help="comma list of: decode, kit, llama-cpp-python")
    p.add_argument("--sweep", action="append", default=[], metavar="FIELD=V1,V2",
                   help="repeatable; each sweeps one RunConfig field on --path's first entry")
    p.add_argument("--llama-bench", action="store_true", help="also run llama-bench (scripts/build_tools.sh)")
    p.add_argument("--server", action="store_true", help="also measure the kit's server (streamed)")
    p.add_argument("--llama-server", action="store_true", help="also measure native llama-server")
    p.add_argument("--quality", action="store_true", help="PPL and KL divergence per KV type vs f16")
    p.add_argument("--kv", default="f16/f16,q8_0/q8_0,q4_0/q4_0,q8_0/f16", help="with --quality")
    p.add_argument("--n-ctx-ppl", type=int, default=512, help="with --quality: chunk size")
    p.add_argument("--chunks", type=int, default=0, help="with --quality: at most this many chunks")
    p.add_argument("--json", dest="json_out", help="write results to this JSON file")
    p.add_argument("--plot", help="write a plot (PNG) of the results")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qwenkit import bench

    need = args.n_prompt + args.n_gen + args.depth
    cfg, _ = cli_options.config_from_args(args)
    if not cfg.n_ctx:  # neither the flags nor --config set it (or --n-ctx 0): just enough
        cfg = cfg.replace(n_ctx=max(need, 256))
    paths = [x.strip() for x in args.path.split(",") if x.strip()]
    for x in paths:
        if x not in bench.PATHS:
            raise ConfigError(f"unknown --path {x!r}", f"use one of: {', '.join(bench.PATHS)}")
    results: list[bench.BenchResult] = []
    sections: dict[str, Any] = {}
    print(cfg.summary(), file=sys.stderr)
    if args.sweep:
        for spec in args.sweep:
            field, values = parse_sweep(spec)
            rows = bench.sweep(cfg, field, values, p=args.n_prompt, n=args.n_gen, r=args.reps,
                               d=args.depth, path=paths[0])
            print(f"\nsweep {field} ({paths[0]}):")
            print(bench.table(rows, columns=[field]))
            results += rows
    else:
        with bench.loaded(cfg, args.n_prompt + args.n_gen + args.depth) as (llm, used):
            for path in paths:  # one load for every path
                results += bench.bench(llm, p=args.n_prompt, n=args.n_gen, r=args.reps, d=args.depth,
                                       path=path, config=used)
    if args.llama_bench:
        results += bench.run_llama_bench(cfg, p=args.n_prompt, n=args.n_gen, r=args.reps, d=args.depth)
    if args.server:
        with bench.kit_server(cfg.replace(n_ctx=max(cfg.n_ctx, 1024))) as srv:
            results.append(bench.bench_server(srv.base_url, n=args.n_gen, r=args.reps, label="kit server",
                                              config=bench.config_fields(cfg)))
    if args.llama_server:
        with bench.NativeServer(cfg.replace(n_ctx=max(cfg.n_ctx, 1024))) as ns:
            results.append(bench.bench_server(ns.base_url, n=args.n_gen, r=args.reps, label="llama-server",
                                              config=bench.config_fields(cfg)))
    if not args.sweep:
        lb = {r.test: r for r in results if r.path == "llama-bench"}
        print(bench.table(results, baseline=(lambda r: lb.get(r.test.replace(" (stream)", ""))) if lb else None))
    if args.quality:
        from qwenkit import quality
        kv = [tuple(x.split("/")) for x in args.kv.split(",") if x]
        kv_rows = quality.kv_quality(cfg, kv=kv, n_ctx=args.n_ctx_ppl, n_chunks=args.chunks or None, progress=True)
        print("\n" + quality.table(kv_rows))
        sections["quality"] = [r.to_dict() for r in kv_rows]
    if args.json_out:
        bench.save_json(results, args.json_out, **sections)
        print(f"wrote {args.json_out}", file=sys.stderr)
    if args.plot and results:
        fig = bench.plot(results, x=(parse_sweep(args.sweep[0])[0] if args.sweep else None))
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0
