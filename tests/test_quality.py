"""qwenkit.quality: perplexity finite, KL(f16 || f16) exactly 0, quantized caches cost
something small, the method agrees with llama.cpp's llama-perplexity where it is built."""
from __future__ import annotations

import math

import numpy as np
import pytest

from qwenkit import quality
from qwenkit.config import RunConfig


@pytest.fixture(scope="module")
def llm(default_model):
    from qwenkit.engine import load
    m = load(RunConfig(model=str(default_model), n_ctx=256))
    yield m
    m.close()


@pytest.fixture(scope="module")
def rows(llm, default_model):
    return quality.evaluate(llm, kv=quality.DEFAULT_KV, text=quality.bundled_text("en"), n_ctx=128,
                            n_chunks=2, model_path=str(default_model))


def test_bundled_text_is_long_enough(llm):
    assert len(quality.tokenize_text(llm, quality.bundled_text("en"))) > 2000
    assert quality.bundled_text("en+ja").startswith(quality.bundled_text("en"))


def test_perplexity_finite_and_kl_f16_is_zero(rows):
    assert [r.label for r in rows] == ["f16/f16", "q8_0/q8_0", "q4_0/q4_0", "q8_0/f16"]
    base = rows[0]
    assert base.n_chunks == 2 and base.n_scored == 2 * (128 - 1 - 64)
    assert math.isfinite(base.ppl) and 1 < base.ppl < 1000 and base.ppl_unc > 0
    assert base.kld_mean == 0.0 and base.kld_max == 0.0 and base.same_top == 1.0 and base.ln_ppl_ratio == 0.0
    for r in rows[1:]:
        assert math.isfinite(r.ppl) and r.kld_mean >= 0 and r.kld_p99 <= r.kld_max
        assert r.kld_mean < 0.5 and r.same_top > 0.5      # a quantized cache costs little on this model
        assert abs(r.ln_ppl_ratio) < 0.5


def test_quantized_caches_are_smaller(rows):
    by = {r.label: r.kv_bytes_per_token for r in rows}
    assert by["q4_0/q4_0"] < by["q8_0/q8_0"] < by["q8_0/f16"] < by["f16/f16"]
    t = quality.table(rows, speed={"q8_0/q8_0": {"tg vs f16": 0.9}})
    assert "f16/f16" in t and "saved vs f16" in t and "0.900" in t


def test_same_context_twice_gives_identical_logits(llm):
    toks = quality.tokenize_text(llm, quality.bundled_text("en"))[:64]
    with quality.KVContext(llm.model, 64) as a:
        x = a.chunk_logits(toks, 32)
        y = a.chunk_logits(toks, 32)
    assert x.shape == (32, llm.n_vocab()) and np.array_equal(x, y)


def test_text_too_short(llm):
    with pytest.raises(quality.QualityError, match="needs at least"):
        quality.evaluate(llm, text="short text", n_ctx=128)


def test_quantized_v_without_flash_attention_is_refused(llm):
    with pytest.raises(quality.QualityError):
        quality.evaluate(llm, kv=[("q8_0", "q8_0")], text=quality.bundled_text("en"), n_ctx=128,
                         n_chunks=1, flash_attn=False)


def test_mean_uncertainty_matches_llama_cpp_formula():
    x = np.arange(20, dtype=float)
    m, u = quality._mean_unc(x)
    assert m == 9.5 and u == pytest.approx(math.sqrt((np.mean(x * x) - 9.5 ** 2) / 19))
    assert quality._mean_unc(np.ones(5))[1] == 0.0


def test_agrees_with_llama_perplexity(default_model, llm, tmp_path):
    from qwenkit import bench
    bin_dir = bench.find_tools(("llama-perplexity",))
    if bin_dir is None:
        pytest.skip("llama-perplexity not built (scripts/build_tools.sh)")
    from repo_scripts import load_script
    mod = load_script("benchmarks/kv_quality.py", "kvq")
    text = quality.bundled_text("en")
    ref = mod.llama_perplexity(bin_dir, str(default_model), text, 128, 2, 2)
    mine = quality.evaluate(llm, kv=[("f16", "f16")], text=text, n_ctx=128, n_chunks=2)[0].ppl
    assert ref is not None and mine == pytest.approx(ref, rel=2e-4)
