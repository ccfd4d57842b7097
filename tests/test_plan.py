"""qwenkit.plan against llama.cpp's own no-alloc figures, placement rules, and the fit."""
from __future__ import annotations

from typing import Any

import pytest

from qwenkit.config import RunConfig
from qwenkit.errors import ConfigError
from qwenkit.gguf_info import read_model_info
from qwenkit.plan import GiB, MiB, compare, fit, fit_report, plan

llama_cpp = pytest.importorskip("llama_cpp")

# llama.cpp prints sizes in MiB with 2 decimals: allow that rounding on top of the bounds
ROUND = 0.006 * MiB

CONFIGS: list[dict[str, Any]] = [
    dict(n_ctx=512),
    dict(n_ctx=4096, type_k="q8_0", type_v="q8_0"),
    dict(n_ctx=2048, flash_attn=False, n_ubatch=256),
    dict(n_ctx=16384, type_k="q8_0", type_v="f16", n_cpu_moe=2),
]


def _models(default_model, engine_models, engine_full_sparse):
    return {"smollm2 (llama)": default_model,
            "tiny qwen35moe": engine_models["qwen35moe"], "tiny qwen3moe": engine_models["qwen3moe"],
            "full qwen35moe": engine_full_sparse["qwen35moe"], "full qwen3moe": engine_full_sparse["qwen3moe"]}


@pytest.fixture(scope="module")
def accuracy(default_model, engine_models, engine_full_sparse):
    from qwenkit.engine import probe
    rows = []
    for name, path in _models(default_model, engine_models, engine_full_sparse).items():
        info = read_model_info(path)
        for kw in CONFIGS:
            cfg = RunConfig(model=str(path), n_threads=2, **kw)
            rows.append((name, cfg, compare(plan(info, cfg, gpu=False), probe(cfg))))
    return rows


def _within(c: dict, bound: float) -> bool:
    return abs(c["planned"] - c["llama"]) <= max(bound * c["llama"], ROUND)


def test_plan_matches_llama_cpp(accuracy):
    lines, bad = [], []
    for name, cfg, c in accuracy:
        lines.append(f"{name:16s} {cfg.n_ctx:6d} {cfg.type_k}/{cfg.type_v} fa={cfg.flash_attn:d}: "
                     + " ".join(f"{k} {c[k]['rel_error'] * 100:+.2f}%" for k in
                                ("weights", "kv", "recurrent", "compute", "total")))
        for key, bound in (("weights", 0.01), ("kv_k", 0.01), ("kv_v", 0.01), ("kv", 0.01),
                           ("recurrent", 0.01), ("total", 0.05)):
            if not _within(c[key], bound):
                bad.append(f"{name} {cfg.summary()}: {key} {c[key]}")
    print("\n".join(lines))
    assert not bad, "\n".join(bad)


def test_kv_only_in_attention_layers(engine_full_sparse):
    info = read_model_info(engine_full_sparse["qwen35moe"])
    assert len(info.kv_layers) == 10
    f16 = plan(info, RunConfig(model=info.source, n_ctx=8192))
    q8 = plan(info, RunConfig(model=info.source, n_ctx=8192, type_k="q8_0", type_v="q8_0"))
    assert f16.kv == 8192 * 20480 and f16.kv == 160 * MiB          # docs/facts.md
    assert q8.kv == 8192 * 10880                                     # 85 MiB
    assert f16.recurrent_bytes == pytest.approx(62.81 * MiB, abs=0.01 * MiB)


@pytest.mark.parametrize("n", [0, 1, 12, 40])
def test_expert_placement(engine_full_sparse, n):
    info = read_model_info(engine_full_sparse["qwen35moe"])
    p = plan(info, RunConfig(model=info.source, n_ctx=4096, n_cpu_moe=n))
    assert p.experts_cpu_by_layer == {il: info.layer_expert_bytes(il) for il in range(n)}
    tok = sum(t.nbytes for t in info.tensors if t.name == "token_embd.weight")
    assert p.weights_cpu == sum(p.experts_cpu_by_layer.values()) + tok   # input layer stays in RAM
    assert p.weights_gpu + p.weights_cpu == info.weights_bytes
    assert len(p.gpu_layers) == 40 and p.output_on_gpu


def test_whole_layers_and_tied_embeddings(default_model):
    info = read_model_info(default_model)
    p = plan(info, RunConfig(model=str(default_model), n_ctx=1024, n_gpu_layers=10))
    assert p.gpu_layers == tuple(range(21, 30)) and p.output_on_gpu   # the last 10 of 31
    assert p.kv_k[0] == 9 * 1024 * 192 * 2 and p.kv_k[1] == 21 * 1024 * 192 * 2
    tok = next(t.nbytes for t in info.tensors if t.name == "token_embd.weight")
    assert p.weights_gpu_by_layer["output"] >= tok  # tied: token_embd copied for the output
    cpu = plan(info, RunConfig(model=str(default_model), n_ctx=1024), gpu=False)
    assert cpu.gpu_total == 0 and cpu.weights_cpu == info.weights_bytes
    text = p.table()
    assert "KV cache" in text and "total" in text and "GPU MiB" in text


def test_fit_keeps_all_layers_and_fewest_experts(engine_full_sparse):
    path = str(engine_full_sparse["qwen35moe"])
    info = read_model_info(path)
    budget = 16 * GiB
    want = RunConfig(model=path, n_ctx=65536, type_k="q8_0", type_v="q8_0", n_ubatch=256, n_threads=3)
    r = fit_report(info, budget, want)
    cfg = r.cfg
    assert r.fits and cfg.n_gpu_layers == -1 and 0 < cfg.n_cpu_moe < 40
    assert (cfg.n_ctx, cfg.type_k, cfg.type_v) == (65536, "q8_0", "q8_0")
    assert cfg.replace(n_cpu_moe=0) == want            # only what the fit chooses changed
    assert plan(info, cfg).gpu_total <= budget
    assert plan(info, cfg.replace(n_cpu_moe=cfg.n_cpu_moe - 1)).gpu_total > budget
    # a big card: everything on the GPU
    assert fit(info, 80 * GiB, RunConfig(model=path, n_ctx=65536)).n_cpu_moe == 0
    # too small for the non-expert part: all experts in RAM, then whole layers move
    small = fit(info, 2 * GiB, RunConfig(model=path, n_ctx=8192))
    assert small.n_cpu_moe == 40 and 0 <= small.n_gpu_layers <= 40
    # system RAM is checked when given
    assert not fit_report(info, budget, RunConfig(model=path, n_ctx=65536), ram_budget=2 * GiB).fits


def test_fit_takes_a_runconfig_and_says_so(engine_full_sparse):
    """The older positional form (n_ctx, type_k, type_v) is gone: an error says how to call it."""
    path = str(engine_full_sparse["qwen35moe"])
    info = read_model_info(path)
    n_ctx: Any = 65536   # the old call, as a notebook of an earlier version makes it
    with pytest.raises(ConfigError, match="takes a RunConfig") as e:
        fit_report(info, 16 * GiB, n_ctx)
    assert e.value.fix and "RunConfig(model=" in e.value.fix
    assert fit_report(info, 80 * GiB).cfg == RunConfig(model=path)   # default: RunConfig's, all on the GPU


def test_fit_dense_moves_whole_layers(default_model):
    info = read_model_info(default_model)
    cfg = RunConfig(model=str(default_model), n_ctx=8192)
    r = fit_report(info, 900 * MiB, cfg)
    assert r.fits and r.cfg.n_cpu_moe == 0 and 0 < r.cfg.n_gpu_layers < 31
    assert plan(info, r.cfg).gpu_total <= 900 * MiB
    assert plan(info, r.cfg.replace(n_gpu_layers=r.cfg.n_gpu_layers + 1)).gpu_total > 900 * MiB
    assert not fit_report(info, 100 * MiB, cfg).fits


def test_plan_shows_the_servers_prompt_cache_budget_apart_from_llama_cpps_memory():
    """Issue 14: the prompt cache budget is part of the memory plan (a RAM ceiling the kit's
    server fills as chats come back), but not of cpu_total (what llama.cpp allocates, which the
    tuning panel checks against free RAM for the in-kernel model, which has no cache)."""
    from qwenkit.plan import plan, target_model_info
    info = target_model_info()
    base = RunConfig(model="x.gguf", n_cpu_moe=11)
    gpu, cpu = plan(info, base), plan(info, base, gpu=False)
    assert gpu.prompt_cache == 2048 * 2**20 and cpu.prompt_cache == 512 * 2**20
    assert "+ prompt cache" in gpu.table() and "2,048.0" in gpu.table().splitlines()[-1]
    assert "prompt cache" in gpu._repr_html_() and gpu.to_dict()["prompt_cache"] == 2048 * 2**20
    sized = plan(info, base.replace(prompt_cache_mib=300))
    assert sized.prompt_cache == 300 * 2**20 and sized.cpu_total == gpu.cpu_total
    off = plan(info, base.replace(prompt_cache_mib=0))
    assert off.prompt_cache == 0 and "prompt cache" not in off.table()
