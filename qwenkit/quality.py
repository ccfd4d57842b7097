"""What a KV-cache type costs in quality: perplexity and KL divergence against the f16 cache,
computed the way llama.cpp's `llama-perplexity` does (tools/perplexity/perplexity.cpp).

Method (the tool's default mode, and its --kl-divergence mode):
- tokenize the whole text once (BOS added when the model adds one, special tokens not parsed);
- cut it into n_chunk = len(tokens) // n_ctx chunks of n_ctx tokens; for each chunk clear the
  KV cache, replace the chunk's first token by BOS (when the model adds one), decode it in one
  pass and score only the second half: the logits at positions n_ctx/2 .. n_ctx-2 predict
  the tokens at n_ctx/2+1 .. n_ctx-1 (n_ctx - 1 - n_ctx/2 tokens per chunk), so every scored
  token has at least n_ctx/2 tokens of context;
- perplexity = exp(mean negative log-likelihood); its uncertainty as the tool prints it;
- KL divergence per scored token = sum_v p_base(v) (log p_base(v) - log p(v)) with the f16
  cache as base; reported as mean +- uncertainty, 99th percentile and maximum, plus how often
  the top token is the same. Here the base distribution stays in float64 (the tool stores it
  as 16-bit log-probs and skips p_base < e^-16; the differences are below the 4th digit).

One model load, one llama.cpp context per KV type (the same weights), each chunk decoded by
every context in turn, so the comparison needs no stored logits file.

    from qwenkit import quality
    rows = quality.kv_quality(model_path, kv=[("f16","f16"), ("q8_0","q8_0"), ("q4_0","q4_0"), ("q8_0","f16")])
    print(quality.table(rows))
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from qwenkit.config import KV_TYPES, RunConfig, kv_type_name
from qwenkit.errors import QualityError

__all__ = ["DEFAULT_KV", "KVContext", "KVQuality", "QualityError", "bundled_text", "evaluate", "kv_quality", "table",
           "tokenize_text"]

DEFAULT_KV = (("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q8_0", "f16"))


def bundled_text(which: str = "en+ja") -> str:
    """The kit's bundled sample documents (qwenkit.data): "en", "ja" or "en+ja"."""
    from qwenkit.data import sample_text
    return "\n\n".join(sample_text(lang) for lang in which.split("+"))


# ---- one llama.cpp context on a loaded model ---------------------------------------------------
class KVContext:
    """A llama_context with its own KV types on an already loaded model (no second weight load)."""

    def __init__(self, model, n_ctx: int, type_k: str = "f16", type_v: str = "f16",
                 flash_attn: bool = True, n_threads: int = 1, n_ubatch: int = 512):
        from qwenkit.llama_api import C as lc
        self.lc = lc
        p = lc.llama_context_default_params()
        p.n_ctx = n_ctx
        p.n_batch = n_ctx
        p.n_ubatch = min(n_ubatch, n_ctx)
        p.n_seq_max = 1
        p.n_threads = p.n_threads_batch = n_threads
        p.type_k, p.type_v = KV_TYPES[kv_type_name(type_k)], KV_TYPES[kv_type_name(type_v)]
        p.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        p.no_perf = True
        self.ctx = lc.llama_init_from_model(model, p)
        if not self.ctx:
            raise QualityError(f"llama.cpp could not create a context with KV {type_k}/{type_v}",
                               "a quantized V cache needs flash attention; check memory")
        self.n_ctx = n_ctx
        self.type_k, self.type_v = kv_type_name(type_k), kv_type_name(type_v)
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
        self.batch = lc.llama_batch_init(n_ctx, 0, 1)

    def chunk_logits(self, tokens: Sequence[int], first: int) -> np.ndarray:
        """Decode one chunk from an empty cache; float32 logits of positions first..n-1."""
        lc, b = self.lc, self.batch
        n = len(tokens)
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        for i, t in enumerate(tokens):
            b.token[i] = int(t)
            b.pos[i] = i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = 1 if i >= first else 0
        b.n_tokens = n
        rc = lc.llama_decode(self.ctx, b)
        if rc != 0:
            raise QualityError(f"llama_decode returned {rc} (KV {self.type_k}/{self.type_v})",
                               "not enough memory for this n_ctx: use a smaller n_ctx, or run with verbose=True "
                               "to see llama.cpp's reason")
        ptr = lc.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n - first, self.n_vocab)).copy()

    def close(self) -> None:
        if self.ctx:
            self.lc.llama_batch_free(self.batch)
            self.lc.llama_free(self.ctx)
            self.ctx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
    return x


# ---- results ---------------------------------------------------------------------------------------
@dataclass
class KVQuality:
    type_k: str
    type_v: str
    n_ctx: int
    n_chunks: int
    n_scored: int
    ppl: float
    ppl_unc: float
    ln_ppl_ratio: float            # mean(nll - nll_base): ln(PPL / PPL_base)
    kld_mean: float
    kld_unc: float
    kld_p99: float
    kld_max: float
    same_top: float                # fraction of scored tokens whose top token equals the base's
    kv_bytes_per_token: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.type_k}/{self.type_v}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["label"] = self.label
        return d


def _mean_unc(x: np.ndarray) -> tuple[float, float]:
    # llama.cpp: f = sum/count; df = sqrt((sum2/count - f^2) / (count - 1)) when count > 10
    n = len(x)
    if n == 0:
        return float("nan"), float("nan")
    f = float(x.mean())
    var = float((x * x).mean() - f * f)
    return f, (math.sqrt(var / (n - 1)) if var > 0 and n > 10 else 0.0)


def tokenize_text(llm, text: str) -> list[int]:
    """common_tokenize(ctx, text, add_special=true, parse_special=false), as the tool does."""
    from qwenkit.llama_api import C, vocab
    add_bos = bool(C.llama_vocab_get_add_bos(vocab(llm)))
    return llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)


def evaluate(llm, kv: Sequence[tuple[str, str]] = DEFAULT_KV, text: str | None = None,
             n_ctx: int = 512, n_chunks: int | None = None, base: tuple[str, str] = ("f16", "f16"),
             flash_attn: bool = True, n_threads: int | None = None, progress: bool = False,
             model_path: str | None = None) -> list[KVQuality]:
    """PPL and KL divergence vs `base` for each KV pair, on a loaded Llama's model."""
    from qwenkit.llama_api import C as lc
    from qwenkit.llama_api import vocab as vocab_of
    text = bundled_text() if text is None else text
    tokens = tokenize_text(llm, text)
    if len(tokens) < 2 * n_ctx:
        raise QualityError(f"the text has {len(tokens)} tokens; perplexity with n_ctx={n_ctx} needs at "
                           f"least {2 * n_ctx}", "use a longer text or a smaller n_ctx")
    n_chunk = len(tokens) // n_ctx if n_chunks is None else min(n_chunks, len(tokens) // n_ctx)
    first = n_ctx // 2
    vocab = vocab_of(llm)
    bos = lc.llama_vocab_bos(vocab) if lc.llama_vocab_get_add_bos(vocab) else None
    threads = n_threads or llm.n_threads
    pairs = [(kv_type_name(k), kv_type_name(v)) for k, v in kv]
    base = (kv_type_name(base[0]), kv_type_name(base[1]))
    ctxs = {}
    try:
        for pair in [base] + [p for p in pairs if p != base]:
            ctxs[pair] = KVContext(llm.model, n_ctx, *pair, flash_attn=flash_attn, n_threads=threads)
        nll: dict[tuple[str, str], list[np.ndarray]] = {p: [] for p in ctxs}
        kld: dict[tuple[str, str], list[np.ndarray]] = {p: [] for p in ctxs}
        same: dict[tuple[str, str], list[np.ndarray]] = {p: [] for p in ctxs}
        it: Iterable[int] = range(n_chunk)
        if progress:
            from tqdm.auto import tqdm
            it = tqdm(it, desc="perplexity chunks")
        for c in it:
            chunk = list(tokens[c * n_ctx:(c + 1) * n_ctx])
            if bos is not None:
                chunk[0] = bos
            targets = np.asarray(chunk[first + 1:], dtype=np.int64)
            base_lp = _log_softmax(ctxs[base].chunk_logits(chunk, first)[:-1])
            base_top = base_lp.argmax(axis=1)
            base_p = np.exp(base_lp)
            rows = np.arange(len(targets))
            for p, kctx in ctxs.items():
                lp = base_lp if p == base else _log_softmax(kctx.chunk_logits(chunk, first)[:-1])
                nll[p].append(-lp[rows, targets])
                kld[p].append((base_p * (base_lp - lp)).sum(axis=1) if p != base else np.zeros(len(rows)))
                same[p].append(lp.argmax(axis=1) == base_top)
    finally:
        for k in ctxs.values():
            k.close()
    info = None
    if model_path:
        try:
            from qwenkit.gguf_info import read_model_info
            info = read_model_info(model_path)
        except Exception:  # noqa: BLE001 - memory column is optional
            info = None
    out = []
    nll_base = np.concatenate(nll[base])
    for p in [base] + [q for q in pairs if q != base]:
        if p not in ctxs:
            continue
        x = np.concatenate(nll[p])
        m, u = _mean_unc(x)
        ppl = math.exp(m)
        kl = np.maximum(np.concatenate(kld[p]), 0.0)
        km, ku = _mean_unc(kl)
        kvb = None
        if info is not None:
            try:
                kvb = float(info.kv_bytes_per_token(*p))
            except Exception:  # noqa: BLE001
                kvb = None
        out.append(KVQuality(p[0], p[1], n_ctx, n_chunk, len(x), ppl, ppl * u, float((x - nll_base).mean()),
                             km, ku, float(np.percentile(kl, 99)), float(kl.max()),
                             float(np.concatenate(same[p]).mean()), kvb))
    want = set(pairs)
    return [r for r in out if (r.type_k, r.type_v) in want]


def kv_quality(model: str | RunConfig, kv: Sequence[tuple[str, str]] = DEFAULT_KV, text: str | None = None,
               n_ctx: int = 512, n_chunks: int | None = None, progress: bool = False, **cfg_kw: Any) -> list[KVQuality]:
    """evaluate() for a model path or RunConfig (loaded here with a small context, closed after)."""
    from qwenkit.engine import load
    cfg = model if isinstance(model, RunConfig) else RunConfig(model=str(model), **cfg_kw)
    llm = load(cfg.replace(n_ctx=max(256, min(cfg.n_ctx, 512))))
    try:
        return evaluate(llm, kv, text, n_ctx=n_ctx, n_chunks=n_chunks, flash_attn=cfg.flash_attn,
                        n_threads=cfg.n_threads, progress=progress, model_path=cfg.model)
    finally:
        llm.close()


def table(rows: Sequence[KVQuality], speed: dict[str, dict[str, float]] | None = None) -> str:
    """Markdown: KV pair, KV bytes/token and saving vs f16, PPL, ln ratio, KLD, same-top, and
    (with `speed`: label -> {"tg_d0": ratio, "tg_dN": ratio, ...}) decode speed vs f16."""
    from qwenkit.bench import markdown_table as _md
    base = next((r for r in rows if (r.type_k, r.type_v) == ("f16", "f16")), None)
    skeys = sorted({k for v in (speed or {}).values() for k in v})
    head = ["KV K/V", "bytes/token", "saved vs f16", "PPL", "ln(PPL/PPL_f16)", "mean KLD", "KLD p99",
            "same top", *skeys]
    out = []
    for r in rows:
        saved = ""
        if r.kv_bytes_per_token and base and base.kv_bytes_per_token:
            saved = f"{1 - r.kv_bytes_per_token / base.kv_bytes_per_token:.0%}"
        out.append([r.label, f"{r.kv_bytes_per_token:,.0f}" if r.kv_bytes_per_token else "", saved,
                    f"{r.ppl:.4f} ± {r.ppl_unc:.4f}", f"{r.ln_ppl_ratio:+.5f}",
                    f"{r.kld_mean:.6f} ± {r.kld_unc:.6f}", f"{r.kld_p99:.5f}", f"{r.same_top:.2%}",
                    *[_fmt_speed((speed or {}).get(r.label, {}).get(k)) for k in skeys]])
    return _md(head, out)


def _fmt_speed(v) -> str:
    if v is None:
        return ""
    return f"{v:.3f}" if isinstance(v, float) else str(v)
