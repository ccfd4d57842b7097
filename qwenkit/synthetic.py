"""Random-weight GGUF files with a real architecture's exact tensors and hyperparameters.

The kit's code paths (hybrid Gated-DeltaNet / full-attention layers, MoE expert placement,
memory planning, speed benchmarks) need a `qwen35moe` model, and the real one is a
19.70 GiB download. This module writes stand-ins:

* ``size="tiny"``: a few MB, same structure (hybrid layers with ``full_attention_interval`` 4,
  routed + shared experts, Q/K norms, partial IMRoPE), loads and generates in well under a
  second on a 2-core CPU. Used by the tests and the notebooks' CI runs.
* ``size="small"``: 157 MiB (qwen3moe: 212 MiB), the same structure at a size where prefill
  costs what a CPU benchmark can see: 12 blocks (DeltaNet 0-2, 4-6, 8-10; attention 3, 7, 11),
  16 experts with 4 used (+ a shared one in qwen35moe), the real models' head sizes, a
  4,096-token vocabulary (the same tokenizer and chat template as the others). On the 2-core
  box (AMD EPYC, AVX-512) a 500-token prefill takes 1.25-1.4 s at 1 thread (qwen3moe
  1.1-1.3 s), decoding 130-160 t/s; the file is written in ~3.5 s. Used by the CPU multi-turn
  benchmark (benchmarks/multiturn.py) and benchmarks/rs_rollback.py.
* ``size="full", weights="sparse"``: the exact full-size header and tensor table of
  Qwen3.5-35B-A3B (or Qwen3-30B-A3B for ``arch="qwen3moe"``) with a Q4_K_M-like type mix;
  the tensor data is a hole (seek + truncate), so a 20 GiB file costs almost no disk and is
  written in a second or two. Used for header reads and memory plans.
* ``size="full", weights="random"``: same header, tensor data filled with random quantized
  blocks whose scales are finite and small, written at disk speed by reusing random pools.
  Used for speed and memory measurements on a GPU.

Checked on an H200 machine (16 cores, llama.cpp 0c1e570 built for sm_90): the full random
qwen35moe file (19.70 GiB of weights, 34.66 B params as llama.cpp counts them) is written in
17-29 s (about 1.8 GB/s); greedy decoding gives 48 distinct tokens, perplexity is finite at
every position; llama-bench -fa 1 -ngl 99: pp512 about 5,000, tg128 240 t/s. The full random
qwen3moe ``mix="q4_k"`` file is 16.11 GiB and gives tg128 300 t/s (docs/facts.md: 304-306
on its own random model of that shape).

Tensor names, shapes and hyperparameter keys follow llama.cpp's loader in the version that
llama-cpp-python 0.3.36 vendors (``src/models/qwen35moe.cpp``, ``src/models/qwen3moe.cpp``,
``src/llama-arch.cpp``); the type mix follows ``llama_tensor_get_type_impl`` in
``src/llama-quant.cpp`` for Q4_K_M. Block layouts follow ``ggml/src/ggml-common.h``.

    python -m qwenkit.synthetic --arch qwen35moe --size full --weights sparse -o q35.gguf
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qwenkit.units import format_bytes

__all__ = ["ARCHS", "CACHED_SIZES", "DEFAULT_CHAT_TEMPLATE", "F16", "F32", "GENERATOR_VERSION", "GGML_TYPES",
           "GGUF_ALIGNMENT", "MIXES", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0", "QUANTIZED", "SIZES",
           "SPECIAL_TOKENS", "THINKING_CHAT_TEMPLATE", "WEIGHTS", "HParams", "TensorSpec", "cached_model", "hparams",
           "main", "model_nbytes", "random_blocks", "small_model", "summary", "tensor_nbytes", "tensor_table",
           "tiny_model", "type_name", "write_model"]

# Bump when the bytes a given (arch, size, weights, mix, seed) produces change:
# tiny_model() rewrites its cached files when this changes.
GENERATOR_VERSION = 1

ARCHS = ("qwen35moe", "qwen3moe")
SIZES = ("tiny", "small", "full")
CACHED_SIZES = ("tiny", "small")  # what cached_model() writes (random weights, a few MB to ~160 MB)
WEIGHTS = ("random", "sparse")
MIXES = ("q4_k_m", "q4_k", "q8_0")

GGUF_ALIGNMENT = 32  # gguf.GGUF_DEFAULT_ALIGNMENT; llama.cpp's default too

# --------------------------------------------------------------------------------------
# chat templates
# --------------------------------------------------------------------------------------

# Qwen3-style ChatML template. With `enable_thinking=False` it closes the thinking block
# right after the assistant prefix (what Qwen3 / Qwen3.5 templates do); otherwise it leaves
# thinking open for the model. Earlier assistant turns lose their <think> part, as in Qwen3.
# Content may be a string or a list of OpenAI text parts; tool definitions are not rendered.
THINKING_CHAT_TEMPLATE = (
    "{%- macro render_content(content) -%}"
    "{%- if content is none -%}"
    "{%- elif content is string -%}{{- content -}}"
    "{%- elif content is iterable and content is not mapping -%}"
    "{%- for part in content -%}"
    "{%- if part is string -%}{{- part -}}"
    "{%- elif part.type == 'text' -%}{{- part.text -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- else -%}{{- content -}}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'assistant' -%}"
    "{%- set content = render_content(message.content) -%}"
    "{%- if '</think>' in content -%}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}"
    "{%- endif -%}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' -}}"
    "{%- elif message.role == 'tool' -%}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + render_content(message.content)"
    " + '\\n</tool_response><|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message.role + '\\n' + render_content(message.content) + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)

DEFAULT_CHAT_TEMPLATE = THINKING_CHAT_TEMPLATE

SPECIAL_TOKENS = (  # (text, GGUF token type): 3 = control, 4 = user-defined
    ("<|endoftext|>", 3),
    ("<|im_start|>", 3),
    ("<|im_end|>", 3),
    ("<think>", 4),
    ("</think>", 4),
    ("<tool_call>", 4),
    ("</tool_call>", 4),
)

# --------------------------------------------------------------------------------------
# hyperparameters
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HParams:
    """The hyperparameters written to the header (llama.cpp's names in comments)."""

    arch: str
    name: str
    n_layer: int            # block_count
    n_embd: int             # embedding_length
    n_vocab: int            # tokenizer size = rows of token_embd / output
    n_ctx_train: int        # context_length
    n_head: int             # attention.head_count
    n_head_kv: int          # attention.head_count_kv
    head_dim: int           # attention.key_length = value_length
    n_expert: int           # expert_count
    n_expert_used: int      # expert_used_count
    n_ff_exp: int           # expert_feed_forward_length
    rope_theta: float       # rope.freq_base
    rms_eps: float = 1e-6   # attention.layer_norm_rms_epsilon
    n_ff: int = 0           # feed_forward_length (written when > 0)
    n_ff_shexp: int = 0     # expert_shared_feed_forward_length (qwen35moe)
    n_rot: int = 0          # rope.dimension_count (partial RoPE; 0 = not written)
    rope_sections: tuple[int, ...] = ()  # rope.dimension_sections (IMRoPE)
    ssm_d_conv: int = 0     # ssm.conv_kernel
    ssm_d_state: int = 0    # ssm.state_size   = DeltaNet head dim (k and v)
    ssm_n_group: int = 0    # ssm.group_count  = DeltaNet key heads
    ssm_dt_rank: int = 0    # ssm.time_step_rank = DeltaNet value heads
    full_attention_interval: int = 0

    @property
    def ssm_d_inner(self) -> int:  # ssm.inner_size
        return self.ssm_d_state * self.ssm_dt_rank

    def is_recurrent(self, il: int) -> bool:
        """Gated-DeltaNet layer? (llama.cpp: (il + 1) % full_attention_interval != 0)."""
        return self.full_attention_interval > 0 and (il + 1) % self.full_attention_interval != 0


_HPARAMS = {
    # Qwen3.5-35B-A3B as llama.cpp's convert_hf_to_gguf writes it (docs/facts.md, section 1)
    ("qwen35moe", "full"): HParams(
        arch="qwen35moe", name="Qwen3.5-35B-A3B (qwenkit synthetic)",
        n_layer=40, n_embd=2048, n_vocab=248_320, n_ctx_train=262_144,
        n_head=16, n_head_kv=2, head_dim=256,
        n_expert=256, n_expert_used=8, n_ff_exp=512, n_ff_shexp=512,
        rope_theta=1e7, n_rot=64, rope_sections=(11, 11, 10, 0),
        ssm_d_conv=4, ssm_d_state=128, ssm_n_group=16, ssm_dt_rank=32,
        full_attention_interval=4),
    # same structure, a few MB: 8 blocks (DeltaNet 0-2, 4-6; attention 3, 7), 4 experts
    # (not 8: llama-quantize treats 8-expert models as Mixtral and changes the type mix)
    ("qwen35moe", "tiny"): HParams(
        arch="qwen35moe", name="Qwen3.5-MoE tiny (qwenkit synthetic)",
        n_layer=8, n_embd=256, n_vocab=512, n_ctx_train=32_768,
        n_head=4, n_head_kv=2, head_dim=64,
        n_expert=4, n_expert_used=2, n_ff_exp=256, n_ff_shexp=256,
        rope_theta=1e7, n_rot=16, rope_sections=(3, 3, 2, 0),
        ssm_d_conv=4, ssm_d_state=64, ssm_n_group=2, ssm_dt_rank=4,
        full_attention_interval=4),
    # same structure, ~160 MB: 500-token prefill >= 1 s at 1 CPU thread (module docstring);
    # 12 blocks (attention 3, 7, 11), the real head sizes, 16 experts (4 used) + shared expert
    ("qwen35moe", "small"): HParams(
        arch="qwen35moe", name="Qwen3.5-MoE small (qwenkit synthetic)",
        n_layer=12, n_embd=1024, n_vocab=4096, n_ctx_train=32_768,
        n_head=8, n_head_kv=2, head_dim=256,
        n_expert=16, n_expert_used=4, n_ff_exp=256, n_ff_shexp=256,
        rope_theta=1e7, n_rot=64, rope_sections=(11, 11, 10, 0),
        ssm_d_conv=4, ssm_d_state=128, ssm_n_group=8, ssm_dt_rank=16,
        full_attention_interval=4),
    # Qwen3-30B-A3B
    ("qwen3moe", "full"): HParams(
        arch="qwen3moe", name="Qwen3-30B-A3B (qwenkit synthetic)",
        n_layer=48, n_embd=2048, n_vocab=151_936, n_ctx_train=40_960,
        n_head=32, n_head_kv=4, head_dim=128,
        n_expert=128, n_expert_used=8, n_ff_exp=768, n_ff=6144,
        rope_theta=1e6),
    ("qwen3moe", "tiny"): HParams(
        arch="qwen3moe", name="Qwen3-MoE tiny (qwenkit synthetic)",
        n_layer=4, n_embd=256, n_vocab=512, n_ctx_train=32_768,
        n_head=4, n_head_kv=2, head_dim=64,
        n_expert=4, n_expert_used=2, n_ff_exp=256, n_ff=512,
        rope_theta=1e6),
    ("qwen3moe", "small"): HParams(
        arch="qwen3moe", name="Qwen3-MoE small (qwenkit synthetic)",
        n_layer=12, n_embd=1024, n_vocab=4096, n_ctx_train=32_768,
        n_head=16, n_head_kv=2, head_dim=128,
        n_expert=16, n_expert_used=4, n_ff_exp=512, n_ff=3072,
        rope_theta=1e6),
}


def hparams(arch: str = "qwen35moe", size: str = "tiny") -> HParams:
    """Hyperparameters of a synthetic model (``arch`` in ARCHS, ``size`` in SIZES)."""
    _check_choice("arch", arch, ARCHS)
    _check_choice("size", size, SIZES)
    return _HPARAMS[(arch, size)]


def _check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


# --------------------------------------------------------------------------------------
# GGML types and random quantized blocks
# --------------------------------------------------------------------------------------

# GGML type ids (ggml.h) -> (name, elements per block, bytes per block)
F32, F16, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K = 0, 1, 6, 7, 8, 12, 13, 14
GGML_TYPES = {
    F32: ("F32", 1, 4),
    F16: ("F16", 1, 2),
    Q5_0: ("Q5_0", 32, 22),
    Q5_1: ("Q5_1", 32, 24),
    Q8_0: ("Q8_0", 32, 34),
    Q4_K: ("Q4_K", 256, 144),
    Q5_K: ("Q5_K", 256, 176),
    Q6_K: ("Q6_K", 256, 210),
}
QUANTIZED = (Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)
_FALLBACK = {Q4_K: Q5_0, Q5_K: Q5_1, Q6_K: Q8_0}  # llama-quant.cpp tensor_type_fallback


def type_name(ggml_type: int) -> str:
    return GGML_TYPES[ggml_type][0]


def tensor_nbytes(ne: Sequence[int], ggml_type: int) -> int:
    """Bytes of a tensor with ggml dims ``ne`` (ne[0] = row length) of ``ggml_type``."""
    _, blck, bsize = GGML_TYPES[ggml_type]
    if ne[0] % blck:
        raise ValueError(f"row length {ne[0]} is not a multiple of {type_name(ggml_type)}'s block ({blck})")
    n = 1
    for d in ne:
        n *= int(d)
    return n // blck * bsize


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    """float array (n,) -> (n, 2) uint8, little-endian f16."""
    return np.ascontiguousarray(x.astype("<f2")).view(np.uint8).reshape(-1, 2)


def _k_scales(s: np.ndarray) -> np.ndarray:
    """Pack 8 six-bit sub-block scales per block (n, 8) into Q4_K/Q5_K's 12 bytes, with the
    mins equal to the scales (so dmin = centre * d makes every sub-block zero-mean)."""
    s = s.astype(np.uint8)
    lo, hi = s[:, :4], s[:, 4:]
    b = np.empty((s.shape[0], 12), np.uint8)
    b[:, 0:4] = (lo & 63) | ((hi >> 4) << 6)   # scales 0-3 (+ top bits of scales 4-7)
    b[:, 4:8] = b[:, 0:4]                       # mins 0-3 (+ top bits of mins 4-7)
    b[:, 8:12] = (hi & 15) | ((hi & 15) << 4)   # low nibbles of scales / mins 4-7
    return b


def random_blocks(ggml_type: int, n_blocks: int, rng: np.random.Generator, sigma: float = 0.02) -> np.ndarray:
    """``n_blocks`` random blocks of ``ggml_type`` as a flat uint8 array.

    Quants are uniform random; per-block scales are f16, finite, and chosen so the
    dequantized weights are roughly zero-mean with standard deviation ``sigma``
    (d is about 1e-4 for sigma 0.02 with Q4_K).
    """
    n = int(n_blocks)
    _, _, bsize = GGML_TYPES[ggml_type]
    jitter = rng.uniform(0.75, 1.25, n)
    if ggml_type == F32:
        return rng.normal(0.0, sigma, n).astype("<f4").view(np.uint8)
    if ggml_type == F16:
        return rng.normal(0.0, sigma, n).astype("<f2").view(np.uint8)
    b = np.empty((n, bsize), np.uint8)
    if ggml_type in (Q4_K, Q5_K):
        s = rng.integers(8, 64, (n, 8))
        s_rms = float(np.sqrt(np.mean(np.arange(8, 64) ** 2)))
        bits = 4 if ggml_type == Q4_K else 5
        centre = (2 ** bits - 1) / 2.0
        q_std = np.sqrt(((2 ** bits) ** 2 - 1) / 12.0)
        d = sigma / (s_rms * q_std) * jitter
        b[:, 0:2] = _f16_bytes(d)
        b[:, 2:4] = _f16_bytes(d * centre)   # dmin
        b[:, 4:16] = _k_scales(s)
        b[:, 16:] = rng.integers(0, 256, (n, bsize - 16), dtype=np.uint8)  # (qh +) qs
    elif ggml_type == Q6_K:
        b[:, 0:192] = rng.integers(0, 256, (n, 192), dtype=np.uint8)     # ql, qh
        sc = rng.integers(8, 64, (n, 16)) * rng.choice((-1, 1), (n, 16))
        b[:, 192:208] = sc.astype(np.int8).view(np.uint8)
        s_rms = float(np.sqrt(np.mean(np.arange(8, 64) ** 2)))
        d = sigma / (s_rms * np.sqrt((64 ** 2 - 1) / 12.0)) * jitter
        b[:, 208:210] = _f16_bytes(d)
    elif ggml_type == Q8_0:
        d = sigma / np.sqrt((255 ** 2 - 1) / 12.0) * jitter
        b[:, 0:2] = _f16_bytes(d)
        b[:, 2:34] = rng.integers(-127, 128, (n, 32), dtype=np.int8).view(np.uint8)
    elif ggml_type in (Q5_0, Q5_1):
        d = sigma / np.sqrt((32 ** 2 - 1) / 12.0) * jitter
        b[:, 0:2] = _f16_bytes(d)
        off = 2
        if ggml_type == Q5_1:
            b[:, 2:4] = _f16_bytes(-15.5 * d)   # m: value = d * q + m
            off = 4
        b[:, off:] = rng.integers(0, 256, (n, bsize - off), dtype=np.uint8)  # qh, qs
    else:  # pragma: no cover - GGML_TYPES and this function list the same types
        raise ValueError(f"no random block generator for type {ggml_type}")
    return b.reshape(-1)


# --------------------------------------------------------------------------------------
# tensor table
# --------------------------------------------------------------------------------------


@dataclass
class TensorSpec:
    """One tensor: ``ne`` is in ggml order (ne[0] = row length), as llama.cpp prints it."""

    name: str
    ne: tuple[int, ...]
    ggml_type: int = F32
    init: str = "weight"   # how random data is made: weight | norm | ssm_a | ssm_dt | conv | router
    offset: int = 0        # from the start of the data section
    nbytes: int = 0
    fan_in: int = field(default=0)

    @property
    def type_name(self) -> str:
        return type_name(self.ggml_type)


def _layer_tensors(hp: HParams, il: int) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, ne, init) of block ``il``, as llama.cpp's load_arch_tensors creates them."""
    E, hd = hp.n_embd, hp.head_dim
    b = f"blk.{il}."
    out: list[tuple[str, tuple[int, ...], str]] = [(b + "attn_norm.weight", (E,), "norm")]
    if hp.arch == "qwen35moe":
        out.append((b + "post_attention_norm.weight", (E,), "norm"))
        if not hp.is_recurrent(il):
            # full attention: joint Q + gate projection, separate K, V
            out += [
                (b + "attn_q.weight", (E, hd * hp.n_head * 2), "weight"),
                (b + "attn_k.weight", (E, hd * hp.n_head_kv), "weight"),
                (b + "attn_v.weight", (E, hd * hp.n_head_kv), "weight"),
                (b + "attn_output.weight", (hd * hp.n_head, E), "weight"),
                (b + "attn_q_norm.weight", (hd,), "norm"),
                (b + "attn_k_norm.weight", (hd,), "norm"),
            ]
        else:
            # Gated DeltaNet (linear attention)
            key_dim = hp.ssm_d_state * hp.ssm_n_group
            value_dim = hp.ssm_d_state * hp.ssm_dt_rank
            conv_dim = 2 * key_dim + value_dim
            out += [
                (b + "attn_qkv.weight", (E, conv_dim), "weight"),
                (b + "attn_gate.weight", (E, value_dim), "weight"),
                (b + "ssm_conv1d.weight", (hp.ssm_d_conv, conv_dim), "conv"),
                (b + "ssm_dt.bias", (hp.ssm_dt_rank,), "ssm_dt"),
                (b + "ssm_a", (hp.ssm_dt_rank,), "ssm_a"),
                (b + "ssm_beta.weight", (E, hp.ssm_dt_rank), "weight"),
                (b + "ssm_alpha.weight", (E, hp.ssm_dt_rank), "weight"),
                (b + "ssm_norm.weight", (hp.ssm_d_state,), "norm"),
                (b + "ssm_out.weight", (value_dim, E), "weight"),
            ]
        X, F, Fs = hp.n_expert, hp.n_ff_exp, hp.n_ff_shexp
        out += [
            (b + "ffn_gate_inp.weight", (E, X), "router"),
            (b + "ffn_down_exps.weight", (F, E, X), "weight"),
            (b + "ffn_gate_exps.weight", (E, F, X), "weight"),
            (b + "ffn_up_exps.weight", (E, F, X), "weight"),
            (b + "ffn_gate_inp_shexp.weight", (E,), "router"),
            (b + "ffn_gate_shexp.weight", (E, Fs), "weight"),
            (b + "ffn_up_shexp.weight", (E, Fs), "weight"),
            (b + "ffn_down_shexp.weight", (Fs, E), "weight"),
        ]
    elif hp.arch == "qwen3moe":
        X, F = hp.n_expert, hp.n_ff_exp
        out += [
            (b + "attn_q.weight", (E, hd * hp.n_head), "weight"),
            (b + "attn_k.weight", (E, hd * hp.n_head_kv), "weight"),
            (b + "attn_v.weight", (E, hd * hp.n_head_kv), "weight"),
            (b + "attn_output.weight", (hd * hp.n_head, E), "weight"),
            (b + "attn_k_norm.weight", (hd,), "norm"),
            (b + "attn_q_norm.weight", (hd,), "norm"),
            (b + "ffn_norm.weight", (E,), "norm"),
            (b + "ffn_gate_inp.weight", (E, X), "router"),
            (b + "ffn_gate_exps.weight", (E, F, X), "weight"),
            (b + "ffn_down_exps.weight", (F, E, X), "weight"),
            (b + "ffn_up_exps.weight", (E, F, X), "weight"),
        ]
    else:  # pragma: no cover
        raise ValueError(hp.arch)
    return out


def _quantizable(name: str, ne: Sequence[int]) -> bool:
    """llama-quant.cpp tensor_allows_quantization (the rules that apply to these archs)."""
    return (len(ne) >= 2 and name.endswith("weight") and "_norm.weight" not in name
            and "ffn_gate_inp.weight" not in name and "ssm_conv1d" not in name)


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _category(name: str) -> str:
    """llama-quant.cpp tensor_get_category."""
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"),
                     ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"),
                     ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                     ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def _assign_types(specs: list[TensorSpec], hp: HParams, mix: str) -> None:
    """Pick each tensor's type the way `llama-quantize <mix>` would from a BF16 source."""
    base = {"q4_k_m": Q4_K, "q4_k": Q4_K, "q8_0": Q8_0}[mix]
    n_attention_wv = sum(1 for t in specs if _category(t.name) == "attn_v")
    i_attention_wv = 0
    for t in specs:
        if not _quantizable(t.name, t.ne):
            t.ggml_type = F32   # norms, biases, routers, conv kernels: F32 in Qwen GGUFs
            continue
        cat = _category(t.name)
        new = base
        if cat == "output":
            new = Q8_0 if (base == Q8_0 or t.ne[0] % 256) else Q6_K
        elif mix == "q4_k_m":
            # llama_tensor_get_type_impl, the branches that apply to LLAMA_FTYPE_MOSTLY_Q4_K_M
            if cat == "attn_v":
                if _use_more_bits(i_attention_wv, n_attention_wv):
                    new = Q6_K
                if hp.n_expert == 8:
                    new = Q8_0
                i_attention_wv += 1
            elif cat == "attn_k" and hp.n_expert == 8:
                new = Q8_0
            elif cat == "ffn_down":
                i_layer = int(t.name.split(".")[1])
                if _use_more_bits(i_layer, hp.n_layer):
                    new = Q6_K
            elif cat == "attn_output" and hp.n_expert == 8:
                new = Q5_K
        # tensor_type_fallback: rows that are not a whole number of blocks
        blck = GGML_TYPES[new][1]
        if t.ne[0] % blck:
            new = _FALLBACK.get(new, new)
            if t.ne[0] % GGML_TYPES[new][1]:
                new = F16
        t.ggml_type = new


def tensor_table(arch: str = "qwen35moe", size: str = "tiny", mix: str = "q4_k_m") -> list[TensorSpec]:
    """Every tensor of the model in file order, with type, byte size and data offset."""
    _check_choice("mix", mix, MIXES)
    hp = hparams(arch, size)
    E, V = hp.n_embd, hp.n_vocab
    raw: list[tuple[str, tuple[int, ...], str]] = [("token_embd.weight", (E, V), "weight")]
    for il in range(hp.n_layer):
        raw += _layer_tensors(hp, il)
    raw += [("output_norm.weight", (E,), "norm"), ("output.weight", (E, V), "weight")]
    specs = [TensorSpec(name, tuple(ne), init=init, fan_in=ne[0]) for name, ne, init in raw]
    _assign_types(specs, hp, mix)
    offset = 0
    for t in specs:
        t.nbytes = tensor_nbytes(t.ne, t.ggml_type)
        t.offset = offset
        offset += _pad(t.nbytes)
    return specs


def model_nbytes(arch: str = "qwen35moe", size: str = "full", mix: str = "q4_k_m") -> int:
    """Sum of tensor sizes (what llama.cpp's llama_model_size() reports)."""
    return sum(t.nbytes for t in tensor_table(arch, size, mix))


def _pad(n: int, align: int = GGUF_ALIGNMENT) -> int:
    return (n + align - 1) // align * align


# --------------------------------------------------------------------------------------
# tokenizer (gpt2-style byte-level BPE, Qwen pre-tokenizer)
# --------------------------------------------------------------------------------------


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table (index = byte value)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs, strict=True))
    return [chr(table[b]) for b in range(256)]


_MERGES = [  # enough to make BPE merging run; each result becomes a token
    ("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"),
    ("Ġ", "s"), ("r", "e"), ("a", "t"), ("e", "n"), ("Ġ", "w"), ("o", "r"), ("i", "s"),
    ("Ġ", "i"), ("Ġ", "o"), ("Ġ", "c"), ("a", "n"), ("e", "s"), ("Ġa", "n"), ("Ġ", "b"),
    ("in", "g"), ("Ġ", "f"), ("Ġ", "p"), ("o", "u"), ("Ġ", "m"), ("e", "d"), ("Ġo", "f"),
    ("Ġt", "o"), ("Ġ", "Ġ"), ("Ċ", "Ċ"),
]


def _vocab(n_vocab: int) -> tuple[list[str], list[int], list[str], dict[str, int]]:
    """Tokens, token types, merges and special-token ids for a vocabulary of ``n_vocab``.

    256 byte tokens, the merge results, Qwen's special tokens, then filler word tokens
    (``Ġw<N>``, type normal, so random output detokenizes to readable `` w123 w45``) up to
    exactly ``n_vocab``.
    """
    tokens = _bytes_to_unicode()
    types = [1] * 256
    for a, b in _MERGES:
        if a not in tokens or b not in tokens:   # _MERGES lists a merge before the ones making its parts
            raise RuntimeError(f"synthetic vocabulary: merge {a!r} + {b!r} has a part that is not a token yet")
        tokens.append(a + b)
        types.append(1)
    special = {}
    for text, ttype in SPECIAL_TOKENS:
        special[text] = len(tokens)
        tokens.append(text)
        types.append(ttype)
    if n_vocab < len(tokens):
        raise ValueError(f"n_vocab {n_vocab} < {len(tokens)} base tokens")
    n_fill = n_vocab - len(tokens)
    tokens += [f"Ġw{i}" for i in range(n_fill)]
    types += [1] * n_fill
    if not len(set(tokens)) == len(tokens) == n_vocab:
        raise RuntimeError(f"synthetic vocabulary: {len(tokens)} tokens, {len(set(tokens))} distinct, "
                           f"for n_vocab {n_vocab}")
    merges = [f"{a} {b}" for a, b in _MERGES]
    return tokens, types, merges, special


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------

_FTYPE = {"q4_k_m": 15, "q4_k": 14, "q8_0": 7}  # llama_ftype: MOSTLY_Q4_K_M, MOSTLY_Q4_K_S, MOSTLY_Q8_0


def _gguf_header(path: Path, hp: HParams, specs: list[TensorSpec], mix: str, weights: str,
                 seed: int, chat_template: str) -> int:
    """Write header, metadata and tensor infos to ``path``; return the data section offset."""
    import gguf

    w = gguf.GGUFWriter(str(path), hp.arch)
    w.add_type("model")
    w.add_name(hp.name)
    w.add_file_type(_FTYPE[mix])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(hp.n_ctx_train)
    w.add_embedding_length(hp.n_embd)
    w.add_block_count(hp.n_layer)
    if hp.n_ff:
        w.add_feed_forward_length(hp.n_ff)
    w.add_head_count(hp.n_head)
    w.add_head_count_kv(hp.n_head_kv)
    w.add_key_length(hp.head_dim)
    w.add_value_length(hp.head_dim)
    w.add_rope_freq_base(hp.rope_theta)
    w.add_layer_norm_rms_eps(hp.rms_eps)
    w.add_expert_count(hp.n_expert)
    w.add_expert_used_count(hp.n_expert_used)
    w.add_expert_feed_forward_length(hp.n_ff_exp)
    if hp.n_ff_shexp:
        w.add_expert_shared_feed_forward_length(hp.n_ff_shexp)
    if hp.n_rot:
        w.add_rope_dimension_count(hp.n_rot)
    if hp.rope_sections:
        w.add_rope_dimension_sections(list(hp.rope_sections))
    if hp.full_attention_interval:
        w.add_ssm_conv_kernel(hp.ssm_d_conv)
        w.add_ssm_state_size(hp.ssm_d_state)
        w.add_ssm_group_count(hp.ssm_n_group)
        w.add_ssm_time_step_rank(hp.ssm_dt_rank)
        w.add_ssm_inner_size(hp.ssm_d_inner)
        w.add_full_attention_interval(hp.full_attention_interval)

    tokens, types, merges, special = _vocab(hp.n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen35" if hp.arch == "qwen35moe" else "qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(special["<|im_end|>"])
    w.add_pad_token_id(special["<|endoftext|>"])
    w.add_bos_token_id(special["<|endoftext|>"])
    w.add_add_bos_token(False)
    w.add_chat_template(chat_template)

    w.add_uint32("qwenkit.synthetic.version", GENERATOR_VERSION)
    w.add_string("qwenkit.synthetic.weights", weights)
    w.add_string("qwenkit.synthetic.mix", mix)
    w.add_uint32("qwenkit.synthetic.seed", seed)

    for t in specs:
        # GGUFWriter wants numpy order (outermost first); a non-uint8 dtype with raw_dtype
        # keeps the element shape as given
        w.add_tensor_info(t.name, tuple(reversed(t.ne)), np.dtype(np.float32), t.nbytes,
                          raw_dtype=gguf.GGMLQuantizationType(t.ggml_type))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    if w.fout is None:
        raise RuntimeError("gguf.GGUFWriter closed its file before the tensor data could be written")
    f = w.fout[0]
    end = f.tell()
    data_start = _pad(end, w.data_alignment)
    f.write(b"\0" * (data_start - end))
    w.close()
    return data_start


def _sigma(t: TensorSpec) -> float:
    return 1.0 / float(np.sqrt(t.fan_in))


def _small_tensor(t: TensorSpec, hp: HParams, rng: np.random.Generator) -> np.ndarray:
    """Random data (uint8) for F32/F16 tensors with a special meaning, and small weights."""
    n = int(np.prod(t.ne))
    if t.init == "norm":
        x = 1.0 + rng.normal(0.0, 0.02, n)
    elif t.init == "ssm_a":          # -exp(A_log), A_log ~ U(0, log 16): decays in (0, 1)
        x = -np.exp(rng.uniform(0.0, np.log(16.0), n))
    elif t.init == "ssm_dt":         # inverse softplus of dt ~ logU(1e-3, 1e-1), as Mamba inits
        dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), n))
        x = dt + np.log(-np.expm1(-dt))
    elif t.init == "conv":
        x = rng.normal(0.0, 0.5, n)
    else:                            # "router" and plain weights
        x = rng.normal(0.0, _sigma(t), n)
    if t.ggml_type == F32:
        return x.astype("<f4").view(np.uint8)
    if t.ggml_type == F16:
        return x.astype("<f2").view(np.uint8)
    blck = GGML_TYPES[t.ggml_type][1]
    return random_blocks(t.ggml_type, n // blck, rng, _sigma(t))


class _Pools:
    """Random quantized blocks, generated once per (type, sigma) and reused for big tensors.

    Each pool holds a block count with no small factors, and each tensor starts at a random
    block of it, so rows and experts that reuse the pool still differ from one another.
    """

    TARGET_BYTES = 48 << 20

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.pools: dict[tuple[int, float], memoryview] = {}

    def get(self, ggml_type: int, sigma: float) -> memoryview:
        key = (ggml_type, round(sigma, 6))
        if key not in self.pools:
            bsize = GGML_TYPES[ggml_type][2]
            n = self.TARGET_BYTES // bsize | 1
            while any(n % p == 0 for p in (3, 5, 7, 11, 13)):
                n += 2
            self.pools[key] = random_blocks(ggml_type, n, self.rng, sigma).data   # flat uint8: a byte view
        return self.pools[key]


def _write_random_data(f, specs: list[TensorSpec], hp: HParams, seed: int, bar) -> None:
    rng = np.random.default_rng(seed)
    pools = _Pools(rng)
    chunk = 32 << 20
    pos = 0
    for t in specs:
        if pos != t.offset:
            raise RuntimeError(f"synthetic model: {t.name} would start at byte {pos}, its table says {t.offset}")
        if t.nbytes <= (4 << 20) or t.ggml_type not in QUANTIZED:
            data = _small_tensor(t, hp, rng)
            if data.nbytes != t.nbytes:
                raise RuntimeError(f"synthetic model: {t.name} has {data.nbytes} bytes, its table says {t.nbytes}")
            f.write(data.data)
            if bar is not None:
                bar.update(t.nbytes)
        else:
            pool = pools.get(t.ggml_type, _sigma(t))
            bsize = GGML_TYPES[t.ggml_type][2]
            p = int(rng.integers(0, len(pool) // bsize)) * bsize
            left = t.nbytes
            while left:
                n = min(left, len(pool) - p, chunk)
                f.write(pool[p:p + n])
                p = (p + n) % len(pool)
                left -= n
                if bar is not None:
                    bar.update(n)
        pad = _pad(t.nbytes) - t.nbytes
        if pad:
            f.write(b"\0" * pad)
        pos += _pad(t.nbytes)


def write_model(path, arch: str = "qwen35moe", size: str = "tiny", weights: str = "random",
                mix: str = "q4_k_m", seed: int = 0, chat_template: str | None = None,
                progress: bool = True) -> Path:
    """Write a synthetic GGUF to ``path`` and return it as a Path.

    arch: "qwen35moe" (Qwen3.5-35B-A3B) or "qwen3moe" (Qwen3-30B-A3B).
    size: "tiny" (a few MB, same structure), "small" (~160 MB, same structure, CPU-benchmark
      sized) or "full" (the real header and tensor table).
    weights: "random" (random quantized blocks, finite small scales) or "sparse" (the data
      section is a hole: full file size, almost no disk, all weights zero).
    mix: "q4_k_m" (llama-quantize Q4_K_M rules), "q4_k" (every quantized weight Q4_K,
      output Q6_K) or "q8_0".
    chat_template: the GGUF's tokenizer.chat_template; None = THINKING_CHAT_TEMPLATE.
    progress: a tqdm bar while tensor data is written.

    The file appears atomically (written next to ``path``, then renamed).
    """
    _check_choice("weights", weights, WEIGHTS)
    hp = hparams(arch, size)
    specs = tensor_table(arch, size, mix)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        data_start = _gguf_header(tmp, hp, specs, mix, weights, seed,
                                  DEFAULT_CHAT_TEMPLATE if chat_template is None else chat_template)
        total = data_start + specs[-1].offset + _pad(specs[-1].nbytes)
        with open(tmp, "r+b") as f:
            f.seek(data_start)
            if weights == "sparse":
                f.truncate(total)
            else:
                bar = None
                if progress:
                    from tqdm.auto import tqdm
                    bar = tqdm(total=total - data_start, unit="B", unit_scale=True, unit_divisor=1024,
                               desc=f"{arch} {size} {mix}", leave=False)
                try:
                    _write_random_data(f, specs, hp, seed, bar)
                finally:
                    if bar is not None:
                        bar.close()
            end = f.seek(0, os.SEEK_END)
            if end != total:
                raise RuntimeError(f"synthetic model: wrote {end} bytes, the tensor table adds up to {total}")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def cached_model(arch: str = "qwen35moe", size: str = "tiny", chat_template: str | None = None) -> Path:
    """Path of the cached random model of ``arch`` and ``size`` (in CACHED_SIZES), written on
    first use.

    Cached under ``qwenkit.models.cache_dir()/synthetic/``; the name carries the size, the
    generator version (and a hash of a non-default chat template), so a new version rewrites it.
    """
    from qwenkit.models import cache_dir

    _check_choice("arch", arch, ARCHS)
    _check_choice("size", size, CACHED_SIZES)
    tag = ""
    if chat_template is not None and chat_template != DEFAULT_CHAT_TEMPLATE:
        tag = "-" + hashlib.sha256(chat_template.encode()).hexdigest()[:10]
    path = cache_dir() / "synthetic" / f"{arch}-{size}-v{GENERATOR_VERSION}{tag}.gguf"
    if not path.is_file():
        write_model(path, arch=arch, size=size, weights="random", chat_template=chat_template,
                    progress=False)
    return path


def tiny_model(arch: str = "qwen35moe", chat_template: str | None = None) -> Path:
    """Path of the cached tiny random model of ``arch`` (cached_model(arch, "tiny"))."""
    return cached_model(arch, "tiny", chat_template)


def small_model(arch: str = "qwen35moe", chat_template: str | None = None) -> Path:
    """Path of the cached small random model of ``arch`` (~160 MB, written in a few seconds)."""
    return cached_model(arch, "small", chat_template)


def summary(arch: str = "qwen35moe", size: str = "full", mix: str = "q4_k_m") -> str:
    """A few lines: tensor count, bytes by type, total."""
    specs = tensor_table(arch, size, mix)
    by_type: dict[str, int] = {}
    for t in specs:
        by_type[t.type_name] = by_type.get(t.type_name, 0) + t.nbytes
    total = sum(by_type.values())

    def fmt(n: int) -> str:
        return format_bytes(n, ("MiB", "GiB"))

    lines = [f"{arch} {size} {mix}: {len(specs)} tensors, {fmt(total)} ({total / 1e9:.3f} GB) of weights"]
    for name, n in sorted(by_type.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {name:5s} {fmt(n):>12s}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m qwenkit.synthetic",
        description="Write a random-weight GGUF with a real architecture's exact tensors.")
    p.add_argument("--arch", choices=ARCHS, default="qwen35moe")
    p.add_argument("--size", choices=SIZES, default="tiny")
    p.add_argument("--weights", choices=WEIGHTS, default="random",
                   help="random: random quantized blocks; sparse: a hole (no disk, zero weights)")
    p.add_argument("--mix", choices=MIXES, default="q4_k_m")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", type=Path, default=None,
                   help="output path (default: <cache>/synthetic/<arch>-<size>-<weights>-<mix>.gguf)")
    p.add_argument("--dry-run", action="store_true", help="print the tensor size summary only")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    print(summary(a.arch, a.size, a.mix))
    if a.dry_run:
        return 0
    out = a.out
    if out is None:
        from qwenkit.models import cache_dir
        out = cache_dir() / "synthetic" / f"{a.arch}-{a.size}-{a.weights}-{a.mix}.gguf"
    path = write_model(out, arch=a.arch, size=a.size, weights=a.weights, mix=a.mix, seed=a.seed,
                       progress=not a.no_progress)
    st = path.stat()
    print(f"wrote {path}: {st.st_size / 2**20:,.1f} MiB, {st.st_blocks * 512 / 2**20:,.1f} MiB on disk")
    return 0


if __name__ == "__main__":
    sys.exit(main())
