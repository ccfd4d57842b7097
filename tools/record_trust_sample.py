"""Record a trust sample: decode speed for f16 and q8_0 KV on the default model, with what
else used the CPU meanwhile (qwenkit.trust.Probe). tests/test_trust.py judges the recorded
samples; record a new one with:

    .venv/bin/python tools/record_trust_sample.py NAME "how the machine was" [--reps 5] [--n 32]

It is added to tests/data/trust_samples.json under NAME (a quiet machine, a busy one)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from qwenkit import bench  # first: qwenkit loads llama.cpp before numpy
from qwenkit.config import RunConfig, default_threads
from qwenkit.models import default_model_path

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "trust_samples.json"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("note")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--n", type=int, default=32)
    a = ap.parse_args()
    cfg = RunConfig(model=str(default_model_path()), n_ctx=512, n_threads=default_threads())
    figures = []
    for kv in ("f16", "q8_0"):
        (r,) = bench.bench(cfg.replace(type_k=kv, type_v=kv), p=0, n=a.n, r=a.reps)
        figures.append({"label": f"{kv}/{kv} {r.test}", "values": r.rates, "unit": "tok/s",
                        "machine": r.extra["machine"]})
        print(figures[-1], file=sys.stderr)
    data = json.loads(OUT.read_text()) if OUT.exists() else {}
    data[a.name] = {"recorded": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "note": a.note,
                    "model": Path(cfg.model).name, "figures": figures}
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    print("written", OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
