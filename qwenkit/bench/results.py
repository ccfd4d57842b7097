"""Benchmark results: one test on one path with its per-repetition rates, the settings it ran
with, and the JSON file that keeps them (with where they were measured)."""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwenkit.bench.machine import machine_info
from qwenkit.config import RunConfig
from qwenkit.errors import BenchError

__all__ = ["CONFIG_FIELDS", "BenchError", "BenchResult", "config_fields", "load_json", "merge",
           "save_json", "test_name"]

# the RunConfig fields a result records (and a table shows when they vary)
CONFIG_FIELDS = ("n_ctx", "type_k", "type_v", "flash_attn", "n_gpu_layers", "n_cpu_moe", "n_threads",
                 "n_batch", "n_ubatch")


@dataclass
class BenchResult:
    """One test (pp or tg) on one path: per-repetition rates and their mean +- sample sd."""
    test: str                  # "pp512", "tg128", "tg128 @ d4096" (llama-bench's names)
    path: str                  # decode | kit | llama-cpp-python | llama-bench | <server label>
    n_prompt: int
    n_gen: int
    n_depth: int
    rates: list[float]         # tokens / s of each repetition
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "pp" if self.n_prompt else "tg"

    @property
    def mean(self) -> float:
        return statistics.fmean(self.rates) if self.rates else float("nan")

    @property
    def sd(self) -> float:
        return statistics.stdev(self.rates) if len(self.rates) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(kind=self.kind, mean=self.mean, sd=self.sd)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchResult:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def __str__(self) -> str:
        return f"{self.path:>18} {self.test:>16}: {self.mean:9.2f} ± {self.sd:.2f} t/s"


def test_name(n_prompt: int, n_gen: int, n_depth: int = 0) -> str:
    name = f"pp{n_prompt}" if n_prompt else f"tg{n_gen}"
    return name + (f" @ d{n_depth}" if n_depth else "")


def merge(results: Iterable[BenchResult]) -> list[BenchResult]:
    """Join repetitions of the same (path, test, config) run separately (interleaved runs)."""
    out: dict[tuple, BenchResult] = {}
    for r in results:
        key = (r.path, r.test, json.dumps(r.config, sort_keys=True, default=str))
        if key in out:
            out[key].rates.extend(r.rates)
        else:
            out[key] = BenchResult(r.test, r.path, r.n_prompt, r.n_gen, r.n_depth, list(r.rates),
                                   dict(r.config), dict(r.extra))
    return list(out.values())


def config_fields(cfg: RunConfig) -> dict[str, Any]:
    d = {k: getattr(cfg, k) for k in CONFIG_FIELDS}
    d["model"] = Path(cfg.model).name
    return d


# ---- files -------------------------------------------------------------------------------------
def save_json(results: Sequence[BenchResult], path: str | os.PathLike, meta: dict | None = None,
              **sections: Any) -> Path:
    """{"meta": meta (default: machine_info()), "results": [...], **sections}, written whole or
    not at all (a temporary file renamed)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta if meta is not None else machine_info(),
           "results": [r.to_dict() for r in results], **sections}
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    tmp.replace(p)
    return p


def load_json(path: str | os.PathLike) -> tuple[dict, list[BenchResult]]:
    doc = json.loads(Path(path).read_text())
    return doc.get("meta", {}), [BenchResult.from_dict(d) for d in doc.get("results", [])]
