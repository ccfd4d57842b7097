"""qwenkit.synthetic: the files load in llama.cpp, generate, chat, and the full-size header is right."""
from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING

import numpy as np
import pytest

from qwenkit import synthetic

if TYPE_CHECKING:
    from llama_cpp.llama_types import ChatCompletionRequestMessage

gguf = pytest.importorskip("gguf")

GIB = 2**30
REAL_Q4_K_M_GIB = 19.70   # Qwen3.5-35B-A3B Q4_K_M (docs/facts.md)
QWEN3_Q4_K_GIB = 16.11    # random qwen3moe at Qwen3-30B-A3B shape, "all Q4_K" (docs/facts.md)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private cache dir, so tiny_model() really writes (and then reuses) its files."""
    d = tmp_path_factory.mktemp("qwenkit-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("QWENKIT_CACHE", str(d))
    yield d
    mp.undo()


def _load(path):
    llama_cpp = pytest.importorskip("llama_cpp")
    return llama_cpp.Llama(str(path), n_ctx=256, n_threads=1, n_batch=64, logits_all=True, verbose=False)


@pytest.mark.parametrize("arch", synthetic.ARCHS)
def test_tiny_model_loads_generates_and_chats(cache, arch):
    llama_cpp = pytest.importorskip("llama_cpp")
    path = synthetic.tiny_model(arch)
    assert path.is_file() and path.parent == cache / "synthetic"
    assert path.stat().st_size < 16 * 2**20
    llm = _load(path)
    try:
        assert llm.metadata["general.architecture"] == arch
        if arch == "qwen35moe":  # DeltaNet + attention layers: llama.cpp builds a hybrid memory
            assert llama_cpp.llama_model_is_hybrid(llm.model)
            assert llm.metadata["qwen35moe.full_attention_interval"] == "4"

        tokens = llm.tokenize(b"The quick brown fox jumps over the lazy dog.")
        llm.eval(tokens)
        logits = np.asarray(llm.scores[llm.n_tokens - 1])
        assert logits.shape == (llm.n_vocab(),)
        assert np.isfinite(logits).all() and logits.std() > 0

        out = []
        for _ in range(16):
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            assert np.isfinite(llm.scores[llm.n_tokens - 1]).all()
            out.append(tok)
            llm.eval([tok])
        assert len(set(out)) > 1, out

        r = llm.create_chat_completion(
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            max_tokens=8, temperature=0.0)
        assert isinstance(r["choices"][0]["message"]["content"], str)
        assert r["usage"]["prompt_tokens"] > 5 and r["usage"]["completion_tokens"] > 0
    finally:
        llm.close()


def test_tiny_model_is_cached_by_version(cache):
    a = synthetic.tiny_model("qwen3moe")
    mtime = a.stat().st_mtime_ns
    assert f"-v{synthetic.GENERATOR_VERSION}" in a.name
    assert synthetic.tiny_model("qwen3moe") == a and a.stat().st_mtime_ns == mtime
    other = synthetic.tiny_model("qwen3moe", chat_template="{{ messages[0].content }}")
    assert other != a and other.is_file()
    assert not [p for p in (cache / "synthetic").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
@pytest.mark.parametrize("arch", synthetic.ARCHS)
def test_small_model_loads_and_generates_finite_logits(cache, arch):
    """The CPU-benchmark size: the real structure at ~160-210 MB, finite logits, distinct tokens."""
    llama_cpp = pytest.importorskip("llama_cpp")
    path = synthetic.small_model(arch)
    assert path.name == f"{arch}-small-v{synthetic.GENERATOR_VERSION}.gguf" and path.parent == cache / "synthetic"
    assert 100 * 2**20 < path.stat().st_size < 300 * 2**20
    assert synthetic.small_model(arch) == path
    hp = synthetic.hparams(arch, "small")
    llm = _load(path)
    try:
        md = llm.metadata
        assert md["general.architecture"] == arch
        assert md[f"{arch}.block_count"] == str(hp.n_layer) == "12"
        assert md[f"{arch}.expert_count"] == "16" and md[f"{arch}.expert_used_count"] == "4"
        assert llm.n_vocab() == hp.n_vocab
        if arch == "qwen35moe":  # hybrid: DeltaNet blocks, attention every 4th (3, 7, 11)
            assert llama_cpp.llama_model_is_hybrid(llm.model)
            assert md["qwen35moe.full_attention_interval"] == "4"
            assert [il for il in range(hp.n_layer) if not hp.is_recurrent(il)] == [3, 7, 11]
        tokens = llm.tokenize(b"<|im_start|>user\nThe quick brown fox jumps over the lazy dog.<|im_end|>\n",
                              special=True)
        assert synthetic.SPECIAL_TOKENS[1][0] == "<|im_start|>" and len(tokens) > 10
        llm.eval(tokens)
        out = []
        for _ in range(8):
            logits = np.asarray(llm.scores[llm.n_tokens - 1])
            assert logits.shape == (hp.n_vocab,) and np.isfinite(logits).all() and logits.std() > 0
            out.append(int(np.argmax(logits)))
            llm.eval([out[-1]])
        assert len(set(out)) > 1, out
    finally:
        llm.close()


def test_cached_model_refuses_full_size(cache):
    with pytest.raises(ValueError, match="choose one of: tiny, small"):
        synthetic.cached_model("qwen35moe", "full")


def test_thinking_template_honours_enable_thinking():
    pytest.importorskip("llama_cpp")
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    fmt = Jinja2ChatFormatter(synthetic.THINKING_CHAT_TEMPLATE, eos_token="<|im_end|>",
                              bos_token="<|endoftext|>")
    msgs: list[ChatCompletionRequestMessage] = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nHello"},
        {"role": "user", "content": [{"type": "text", "text": "Again"}]}]
    open_ = fmt(messages=msgs).prompt
    closed = fmt(messages=msgs, enable_thinking=False).prompt
    assert open_.endswith("<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n")
    assert closed == open_ + "<think>\n\n</think>\n\n"
    assert "<|im_start|>assistant\nHello<|im_end|>\n" in open_ and "hmm" not in open_


@pytest.fixture(scope="module")
def full_sparse(tmp_path_factory):
    path = tmp_path_factory.mktemp("full") / "qwen35moe-full-sparse.gguf"
    synthetic.write_model(path, arch="qwen35moe", size="full", weights="sparse", progress=False)
    return path


def test_full_sparse_qwen35moe_header(full_sparse):
    st = full_sparse.stat()
    assert st.st_blocks * 512 < 64 * 2**20          # a hole: almost no disk
    r = gguf.GGUFReader(str(full_sparse))
    f = r.fields
    assert f["general.architecture"].contents() == "qwen35moe"
    assert f["qwen35moe.block_count"].contents() == 40
    assert f["qwen35moe.embedding_length"].contents() == 2048
    assert f["qwen35moe.expert_count"].contents() == 256
    assert f["qwen35moe.expert_used_count"].contents() == 8
    assert f["qwen35moe.attention.head_count"].contents() == 16
    assert f["qwen35moe.attention.head_count_kv"].contents() == 2
    assert f["qwen35moe.attention.key_length"].contents() == 256
    assert f["qwen35moe.context_length"].contents() == 262_144
    assert f["qwen35moe.full_attention_interval"].contents() == 4
    assert f["qwen35moe.rope.dimension_count"].contents() == 64
    assert len(f["tokenizer.ggml.tokens"].data) == 248_320

    t = {x.name: x for x in r.tensors}
    shape = {n: [int(d) for d in x.shape] for n, x in t.items()}
    assert shape["token_embd.weight"] == [2048, 248_320]
    assert shape["blk.0.attn_qkv.weight"] == [2048, 8192]        # DeltaNet: q, k (16x128), v (32x128)
    assert shape["blk.0.ssm_conv1d.weight"] == [4, 8192]
    assert shape["blk.3.attn_q.weight"] == [2048, 8192]          # attention: 16 heads x 256, x2 for the gate
    assert shape["blk.3.attn_k.weight"] == [2048, 512]
    assert shape["blk.39.ffn_gate_exps.weight"] == [2048, 512, 256]
    assert "blk.3.attn_qkv.weight" not in t and "blk.2.attn_q.weight" not in t
    types = {n: x.tensor_type.name for n, x in t.items()}
    assert types["output.weight"] == "Q6_K" and types["token_embd.weight"] == "Q4_K"
    assert types["blk.0.ffn_down_exps.weight"] == "Q6_K" and types["blk.5.ffn_down_exps.weight"] == "Q4_K"
    assert types["blk.0.ffn_gate_inp.weight"] == "F32"

    total = sum(int(x.n_bytes) for x in r.tensors)
    assert total == synthetic.model_nbytes("qwen35moe", "full", "q4_k_m")
    assert abs(total / GIB - REAL_Q4_K_M_GIB) / REAL_Q4_K_M_GIB < 0.01
    assert st.st_size >= total


def test_full_qwen3moe_q4_k_size_matches_measured_model():
    assert synthetic.model_nbytes("qwen3moe", "full", "q4_k") / GIB == pytest.approx(QWEN3_Q4_K_GIB, abs=0.01)
    hp = synthetic.hparams("qwen3moe", "full")
    assert (hp.n_layer, hp.n_expert, hp.n_ff_exp, hp.n_head, hp.n_head_kv, hp.head_dim, hp.n_vocab) == \
        (48, 128, 768, 32, 4, 128, 151_936)


@pytest.mark.parametrize("qtype", synthetic.QUANTIZED)
def test_random_blocks_dequantize_finite_and_small(qtype):
    rng = np.random.default_rng(1)
    blck, bsize = synthetic.GGML_TYPES[qtype][1:]
    n = 4096 // blck * 16
    raw = synthetic.random_blocks(qtype, n, rng, sigma=0.02)
    assert raw.dtype == np.uint8 and raw.size == n * bsize
    x = gguf.quants.dequantize(raw.reshape(16, -1), gguf.GGMLQuantizationType(qtype))
    assert x.shape == (16, n * blck // 16)
    assert np.isfinite(x).all()
    assert abs(float(x.mean())) < 0.002 and 0.014 < float(x.std()) < 0.026
    assert len(np.unique(x)) > 100


def test_pooled_writer_gives_finite_distinct_experts():
    """Tensors above the pool threshold reuse random pools; experts must still differ."""
    hp = synthetic.hparams("qwen35moe", "full")
    t = synthetic.TensorSpec("blk.0.ffn_up_exps.weight", (2048, 512, 8), synthetic.Q4_K, fan_in=2048)
    t.nbytes = synthetic.tensor_nbytes(t.ne, t.ggml_type)
    assert t.nbytes > 4 << 20
    buf = io.BytesIO()
    synthetic._write_random_data(buf, [t], hp, seed=3, bar=None)
    raw = np.frombuffer(buf.getvalue()[:t.nbytes], np.uint8).reshape(8, 512, -1)
    x = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_K)
    assert x.shape == (8, 512, 2048) and np.isfinite(x).all()
    assert 0.5 / np.sqrt(2048) < x.std() < 2 / np.sqrt(2048)
    assert not np.array_equal(x[0], x[1])


def test_write_model_cli_and_choices(tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert synthetic.main(["--arch", "qwen3moe", "--mix", "q4_k", "-o", str(out), "--no-progress"]) == 0
    r = gguf.GGUFReader(str(out))
    assert {x.tensor_type.name for x in r.tensors} == {"Q4_K", "Q6_K", "F32"}
    assert "qwen3moe tiny q4_k" in capsys.readouterr().out
    assert not [p for p in os.listdir(tmp_path) if p != "m.gguf"]
    with pytest.raises(ValueError, match="choose one of"):
        synthetic.write_model(tmp_path / "x.gguf", arch="llama")
