"""The served model: one llama.cpp model and one context with N sequences, through
llama-cpp-python's low-level API.

`llama_cpp.Llama` always creates its context with one sequence (n_seq_max=1), so the server
loads the model itself: `llama_model_load_from_file` with the expert placement of
`RunConfig.n_cpu_moe` (tensor buffer overrides), then `llama_init_from_model` with
`n_seq_max = slots`, `n_ctx = slots x per-slot n_ctx`, and either one KV pool shared by all
sequences (`unified_kv`, llama-server's --kv-unified) or one region per sequence.

The tokenizer and the GGUF's chat template come from llama-cpp-python's pieces
(`llama_tokenize`, `llama_token_to_piece`, `llama_chat_format.Jinja2ChatFormatter`), all
reached through qwenkit.llama_api.
"""
from __future__ import annotations

import contextlib
import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from jinja2 import TemplateError

from qwenkit.config import RunConfig
from qwenkit.errors import ModelLoadError
from qwenkit.serving.prompt_cache import common_prefix

__all__ = ["ChatPrompt", "ServedModel"]


def _lc():
    from qwenkit.llama_api import C
    return C


_TURN_MARK = "QWENKIT-TURN-MARK-5e1f"   # plain ASCII: templates pass it through unchanged


@dataclass
class ChatPrompt:
    text: str
    stop: list[str]


class ServedModel:
    """Owns the llama_model, the llama_context and the chat template. Not thread-safe for
    decoding (the scheduler's one thread decodes); tokenizing is read-only and may run on
    any thread."""

    def __init__(self, cfg: RunConfig, slots: int, *, unified_kv: bool = True, verbose: bool = True):
        from qwenkit.engine import apply_expert_overrides, context_params
        from qwenkit.llamalog import capture_log, model_load_error

        lc = _lc()
        if not Path(cfg.model).is_file():
            raise ModelLoadError(f"model file {cfg.model} does not exist",
                                 "check the path, or download the model first (notebook 02)")
        if slots < 1:
            raise ModelLoadError(f"slots={slots} must be at least 1", "use --parallel 1 or more")
        self.cfg = cfg
        self.slots = int(slots)
        self._verbose = verbose
        lc.llama_backend_init()
        mp = lc.llama_model_default_params()
        mp.n_gpu_layers = 0x7FFFFFFF if cfg.n_gpu_layers == -1 else cfg.n_gpu_layers
        # llama_model_params has no use_mmap field (a `mp.use_mmap = ...` was silently ignored):
        # AUTO, llama.cpp's default, maps the file where every device supports it; NONE reads it
        mp.load_mode = lc.LLAMA_LOAD_MODE_AUTO if cfg.use_mmap else lc.LLAMA_LOAD_MODE_NONE
        self._overrides = apply_expert_overrides(mp, cfg.n_cpu_moe)  # must outlive the model
        cp = context_params(cfg)
        cp.n_ctx = cfg.n_ctx * self.slots
        cp.n_seq_max = self.slots
        cp.kv_unified = bool(unified_kv)
        # room for one token of every generating sequence next to a prompt chunk
        cp.n_batch = max(cp.n_batch, self.slots)
        cp.n_ubatch = min(cp.n_batch, max(cp.n_ubatch, self.slots))
        self.model = self.ctx = None
        with capture_log(echo=verbose) as log:
            self.model = lc.llama_model_load_from_file(cfg.model.encode(), mp)
            if self.model:
                self.ctx = lc.llama_init_from_model(self.model, cp)
        self.load_log = log
        if not self.model:
            raise model_load_error(log, ValueError(f"Failed to load model from file: {cfg.model}"), cfg.model)
        if not self.ctx:
            lc.llama_model_free(self.model)
            self.model = None
            raise model_load_error(log, ValueError("Failed to create llama_context"), cfg.model)
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.mem = lc.llama_get_memory(self.ctx)
        self.n_vocab = int(lc.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_total = int(lc.llama_n_ctx(self.ctx))
        self.n_ctx_slot = self.n_ctx_total // self.slots
        self.n_batch = int(lc.llama_n_batch(self.ctx))
        self.recurrent = bool(lc.llama_model_is_recurrent(self.model) or lc.llama_model_is_hybrid(self.model))
        self.n_ctx_train = int(lc.llama_model_n_ctx_train(self.model))
        self.bos = int(lc.llama_vocab_bos(self.vocab))
        self.eos = int(lc.llama_vocab_eos(self.vocab))
        self.add_bos = bool(lc.llama_vocab_get_add_bos(self.vocab))
        self._formatter: Callable[..., Any] | None = None   # the chat template's renderer, made on first use
        self.chat_template = self.meta("tokenizer.chat_template")

    # ---- metadata and text ----
    def meta(self, key: str) -> str | None:
        lc = _lc()
        size = 1 << 16
        while True:
            buf = ctypes.create_string_buffer(size)
            n = lc.llama_model_meta_val_str(self.model, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", "replace")
            size = n + 1

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        lc = _lc()
        data = text.encode("utf-8")
        n_max = len(data) + 8
        arr = (lc.llama_token * n_max)()
        n = lc.llama_tokenize(self.vocab, data, len(data), arr, n_max, add_special, parse_special)
        if n < 0:
            n_max = -n
            arr = (lc.llama_token * n_max)()
            n = lc.llama_tokenize(self.vocab, data, len(data), arr, n_max, add_special, parse_special)
        return list(arr[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        lc = _lc()
        buf = ctypes.create_string_buffer(256)
        n = lc.llama_token_to_piece(self.vocab, token, buf, 256, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        return bool(_lc().llama_vocab_is_eog(self.vocab, token))

    # ---- prompts ----
    def completion_tokens(self, prompt: str) -> list[int]:
        """A /v1/completions prompt: BOS as the vocabulary asks, special tokens parsed (as
        llama-cpp-python's create_completion does)."""
        return self.tokenize(prompt, add_special=True, parse_special=True)

    def chat_prompt(self, messages: list[dict], template_kwargs: dict[str, Any] | None = None,
                    tools: list | None = None, tool_choice: Any = None) -> ChatPrompt:
        """The GGUF's chat template rendered in jinja2's sandbox (llama-cpp-python's formatter)."""
        if not self.chat_template:
            raise ValueError("this model has no chat template: use /v1/completions")
        fmt = self._formatter
        if fmt is None:
            from qwenkit.llama_api import chat_formatter
            fmt = self._formatter = chat_formatter(
                template=self.chat_template,
                eos_token=self.piece(self.eos, special=True).decode("utf-8", "replace") if self.eos >= 0 else "",
                bos_token=self.piece(self.bos, special=True).decode("utf-8", "replace") if self.bos >= 0 else "")
        r = fmt(messages=messages, tools=tools, tool_choice=tool_choice, **(template_kwargs or {}))
        return ChatPrompt(text=r.prompt, stop=[s for s in (r.stop or []) if s] if isinstance(r.stop, list) else
                          ([r.stop] if r.stop else []))

    def chat_tokens(self, prompt: ChatPrompt) -> list[int]:
        # the template writes BOS itself where the model wants one (added_special)
        return self.tokenize(prompt.text, add_special=False, parse_special=True)

    def turn_starts(self, messages: list[dict], tokens: list[int], template_kwargs: dict[str, Any] | None = None,
                    tools: list | None = None, tool_choice: Any = None) -> list[int]:
        """Where the first and the last user message's text begins in `tokens` (this chat's
        prompt): where a later request is likely to part from this one (another chat after the
        same system prompt; an edited last message). Only a recurrent model needs them (its
        checkpoints); [] otherwise. Found by rendering the chat again with that message's text
        replaced by a marker: the tokens before the marker, as far as they match the prompt."""
        if not self.recurrent:
            return []
        users = [i for i, m in enumerate(messages) if m.get("role") == "user" and isinstance(m.get("content"), str)]
        out = []
        for i in sorted({users[0], users[-1]}) if users else []:
            marked = [dict(m, content=_TURN_MARK) if j == i else m for j, m in enumerate(messages)]
            try:
                text = self.chat_prompt(marked, template_kwargs, tools, tool_choice).text
            except (ValueError, TypeError, TemplateError):   # a template may refuse it: marks are optional
                text = ""
            head, found, _ = text.partition(_TURN_MARK)
            if found:
                n = common_prefix(self.tokenize(head, add_special=False, parse_special=True), tokens)
                if 0 < n < len(tokens):
                    out.append(n)
        return out

    # ---- life ----
    def close(self) -> None:
        from qwenkit.llamalog import capture_log
        lc = _lc()
        with capture_log(echo=getattr(self, "_verbose", True)):  # llama.cpp logs its buffers on free
            if self.ctx:
                lc.llama_free(self.ctx)
                self.ctx = None
            if self.model:
                lc.llama_model_free(self.model)
                self.model = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        with contextlib.suppress(Exception):
            self.close()
