"""`python -m qwenkit fit`: memory plan of a model and the config that fits a VRAM budget.

    python -m qwenkit fit --model Qwen3.5-35B-A3B-Q4_K_M.gguf --vram 16GiB --n-ctx 65536 \\
        --type-k q8_0 --type-v q8_0
    python -m qwenkit fit --model m.gguf --vram auto          # the GPU's free memory
    python -m qwenkit fit --model m.gguf --plan --n-cpu-moe 8 # plan one config, no fit
    python -m qwenkit fit --model m.gguf --probe              # also ask llama.cpp (no-alloc)
    python -m qwenkit fit --config tuned.json --vram 16GiB    # a saved RunConfig's settings
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from qwenkit import cli_options
from qwenkit.errors import ConfigError
from qwenkit.units import parse_bytes  # re-exported: callers import it from here

__all__ = ["parse_bytes", "add_cli", "run", "main"]

def add_cli(sub) -> None:
    p = sub.add_parser("fit", help="memory plan and the config that fits your GPU",
                       description="Plan where a model's weights, KV cache and buffers go, and pick "
                                   "the config that keeps the most on the GPU within a VRAM budget.")
    cli_options.add_model_options(p, help={
        "n_cpu_moe": "with --plan: keep the expert tensors of the first N layers in system RAM "
                     "(the fit picks it otherwise) (default: 0)",
        "n_gpu_layers": "with --plan: layers on the GPU, -1 every layer (the fit picks it otherwise) "
                        "(default: -1)"})
    p.add_argument("--vram", default="auto",
                   help="VRAM budget: 16GiB, 15.5GB, ... or 'auto' (the GPU's free memory)")
    p.add_argument("--plan", action="store_true", help="plan the given config only (no fit)")
    p.add_argument("--cpu", action="store_true", help="plan for a build without GPU offload")
    p.add_argument("--margin", help="safety margin left on the card (default: max(256MiB, 2%%))")
    p.add_argument("--probe", action="store_true",
                   help="also ask llama.cpp what it would allocate (no-alloc load) and compare")
    p.add_argument("--save", help="write the chosen RunConfig to this JSON file")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=run)


# the settings the fit decides or depends on, as `serve` takes them
_FIT_FLAGS = ("n_ctx", "type_k", "type_v", "flash_attn", "n_gpu_layers", "n_cpu_moe")


def _flags(cfg) -> str:
    return " ".join(cfg.cli_args(_FIT_FLAGS))


def run(args: argparse.Namespace) -> int:
    from qwenkit.gguf_info import read_model_info
    from qwenkit.plan import compare, fit_report, plan

    base, _ = cli_options.config_from_args(args)
    info = read_model_info(base.model)
    margin = parse_bytes(args.margin) if args.margin else None
    out: dict[str, Any] = {}
    reason = None
    if args.plan or args.cpu:
        cfg = base
        p = plan(info, cfg, gpu=not args.cpu, margin=margin)
    else:
        if str(args.vram).lower() == "auto":
            from qwenkit.engine import gpu_free_bytes
            budget = gpu_free_bytes()
            if budget is None:
                raise ConfigError("no GPU offload in this llama-cpp-python build, so there is no VRAM to fit",
                                  "pass --vram 16GiB to plan for a card, or --cpu for a CPU-only plan; "
                                  "`python -m qwenkit doctor` says how to get a CUDA build")
        else:
            budget = parse_bytes(args.vram)
        r = fit_report(info, budget, base, margin=margin)
        cfg, p, reason = r.cfg, r.plan, r.reason
        out["fits"] = r.fits
        out["budget"] = budget
    out.update(reason=reason, config=cfg.to_dict(), plan=p.to_dict(), flags=_flags(cfg))
    cmp = None
    if args.probe:
        from qwenkit.engine import probe
        cmp = compare(plan(info, cfg, gpu=False), probe(cfg))
        out["vs_llama_cpp"] = cmp
    if args.save:
        cfg.save(args.save)
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        if reason:
            print(reason)
        print(p.table())
        print(f"\nconfig: {cfg.summary()}")
        print(f"flags:  {_flags(cfg)}")
        if cmp:
            print("\nplanned vs llama.cpp (no-alloc load, all in RAM):")
            for k, v in cmp.items():
                print(f"  {k:10s} {v['planned'] / 2**20:12,.2f} MiB {v['llama'] / 2**20:12,.2f} MiB "
                      f"{v['rel_error'] * 100:+7.2f}%")
        if args.save:
            print(f"saved {args.save}")
    return 0 if out.get("fits", True) else 1


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - `python -m qwenkit fit` is the entry
    parser = argparse.ArgumentParser(prog="qwenkit-fit")
    sub = parser.add_subparsers(dest="verb")
    add_cli(sub)
    args = parser.parse_args(["fit", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)
