"""qwenkit.engine: expert placement through tensor overrides, load / relaunch / close, probe."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from qwenkit.config import RunConfig
from qwenkit.engine import (
    Engine,
    TensorOverrides,
    cpu_buffer_type,
    cpu_moe_patterns,
    devices,
    last_logits,
    load,
    probe,
    rss_bytes,
)
from qwenkit.errors import ModelLoadError
from qwenkit.gguf_info import read_model_info

llama_cpp = pytest.importorskip("llama_cpp")
MiB = 2**20


def _expected_cpu_experts(path, n: int) -> set[str]:
    info = read_model_info(path)
    return {t.name for t in info.tensors if t.is_expert and t.layer is not None and t.layer < n}


def _cfg(path, **kw) -> RunConfig:
    kw.setdefault("n_ctx", 256)
    kw.setdefault("n_threads", 1)  # 2 shared cores: spinning threads stall under load
    kw.setdefault("n_batch", 64)
    kw.setdefault("n_ubatch", 64)
    return RunConfig(model=str(path), **kw)


def test_override_array_is_null_terminated_and_owns_its_strings():
    ov = TensorOverrides.cpu_moe(3)
    assert len(ov) == 3 and ov.rules[0] == (r"blk\.0\.ffn_(up|down|gate|gate_up)_(ch|)exps", cpu_buffer_type())
    raw = ctypes.cast(ov.address, ctypes.POINTER(ctypes.c_void_p * 8)).contents
    third = raw[4]
    assert third is not None and ctypes.string_at(third) == rb"blk\.2\.ffn_(up|down|gate|gate_up)_(ch|)exps"
    assert raw[6] is None and raw[7] is None  # terminator {NULL, NULL}
    assert cpu_moe_patterns(0) == [] and TensorOverrides.cpu_moe(0).rules == []
    assert any(d.kind == "cpu" for d in devices())


@pytest.mark.parametrize("arch,n", [("qwen35moe", 3), ("qwen3moe", 2), ("qwen35moe", 0)])
def test_overrides_place_exactly_the_expert_tensors(engine_models, arch, n):
    path = engine_models[arch]
    llm = load(_cfg(path, n_cpu_moe=n))
    try:
        placed = llm.load_log.overrides()
        assert set(placed) == _expected_cpu_experts(path, n)
        assert all(b.startswith("CPU") for b in placed.values())
    finally:
        llm.close()
    # the no-alloc probe goes through the same overrides
    assert set(probe(_cfg(path, n_cpu_moe=n)).overrides) == _expected_cpu_experts(path, n)


def test_offloaded_model_generates_finite_varied_tokens(engine_models):
    path = engine_models["qwen35moe"]
    n_layer = read_model_info(path).n_layer_all
    prompt = b"The quick brown fox"
    logits = {}
    for n in (0, n_layer):  # no experts in RAM, all experts in RAM
        llm = load(_cfg(path, n_cpu_moe=n), logits_all=False)
        try:
            toks = llm.tokenize(prompt)
            llm.eval(toks)
            logits[n] = last_logits(llm)
            out = []
            for t in llm.generate(toks, temp=0.0, reset=True):
                out.append(t)
                if len(out) == 24:
                    break
        finally:
            llm.close()
        assert np.isfinite(logits[n]).all() and logits[n].std() > 0
        assert len(set(out)) > 3, out
    # placement changes where the weights live, not what the model computes
    scale = np.abs(logits[0]).max()
    assert np.abs(logits[0] - logits[n_layer]).max() <= 0.02 * scale


def test_relaunch_twenty_times_keeps_memory_flat(default_model):
    """Each eval touches every mapped weight page, so a model left open stays resident:
    one leaked SmolLM2 adds about 116 MiB of RSS (measured), far above the bound."""
    cfg = _cfg(default_model, n_threads=1)
    eng = Engine()
    eng.load(cfg)
    eng.llm.eval(eng.llm.tokenize(b"hello"))
    start = rss_bytes()
    for i in range(20):
        eng.load(cfg.replace(n_ctx=256 + 256 * (i % 2)))
        eng.llm.eval(eng.llm.tokenize(b"hello"))
    grown = rss_bytes() - start
    eng.close()
    assert not eng.loaded
    assert grown < 48 * MiB, f"RSS grew {grown / MiB:.1f} MiB over 20 relaunches"


def test_engine_errors_carry_reasons(tmp_path, default_model):
    with pytest.raises(ModelLoadError, match="does not exist"):
        Engine().load(_cfg(tmp_path / "missing.gguf"))
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(default_model.read_bytes()[:30_000_000])
    eng = Engine()
    with pytest.raises(ModelLoadError, match="not within the file bounds"):
        eng.load(_cfg(bad))
    assert not eng.loaded


def test_probe_reports_llama_cpp_sizes_without_allocating(engine_full_sparse):
    path = engine_full_sparse["qwen35moe"]
    info = read_model_info(path)
    before = rss_bytes()
    p = probe(RunConfig(model=str(path), n_ctx=8192, type_k="q8_0", type_v="q8_0", n_threads=2))
    assert rss_bytes() - before < 512 * MiB  # a 20 GiB model, metadata only
    assert p.model_size == info.weights_bytes
    (kv,) = p.kv
    assert (kv.layers, kv.cells, kv.type_k) == (10, 8192, "q8_0")
    assert kv.bytes == pytest.approx(8192 * 10 * 2 * 256 * 2 * 34 / 32, rel=1e-3)  # 85 MiB
    assert p.recurrent_bytes == pytest.approx(62.81 * MiB, abs=0.01 * MiB)
    assert p.compute_bytes > 485 * MiB  # logits of 512 tokens x 248,320 vocab, f32


def test_failed_context_frees_the_loaded_model(default_model):
    """A context that cannot be created (here: 2^22 cells, ~96 GB of KV) must not keep the
    model loaded: on a GPU the half-built Llama held the weights until a later gc, so the
    next, smaller attempt ran out of memory (H200, 64K q8_0 sweep of benchmarks/fit_gpu.py)."""
    name = default_model.name

    def mapped() -> int:
        with open("/proc/self/maps") as f:
            return sum(name in line for line in f)

    before = mapped()
    cfg = RunConfig(model=str(default_model), n_ctx=2**22)
    with pytest.raises(ModelLoadError, match="could not create the context"):
        Engine().load(cfg)
    assert mapped() == before
