"""A chat in the notebook's own process that keeps its prompt cache between turns.

    from qwenkit.serving.chat import ChatSession
    chat = ChatSession(cfg, system="You are a helpful assistant.")
    a = chat.ask("What is GGUF?")          # a.text, a.ttft_s, a.prompt_tokens, a.cached_tokens
    b = chat.ask("And why quantize it?")   # turn 2 prefills only what is new
    chat.close()

The same scheduler as the server (one slot): on a hybrid model (Qwen3.5) the recurrent state
is checkpointed a few tokens before the end of each prompt, so the next turn restores it and
prefills only the new message.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from qwenkit.config import RunConfig

__all__ = ["Answer", "ChatSession"]


@dataclass
class Answer:
    text: str
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    ttft_s: float | None
    total_s: float

    def __str__(self) -> str:
        return self.text


class ChatSession:
    def __init__(self, cfg: RunConfig, system: str | None = None, *, max_tokens: int = 256,
                 temperature: float = 0.0, template_kwargs: dict[str, Any] | None = None,
                 cache_bytes: int | None = None, reuse: bool = True):
        from qwenkit.serving import Scheduler, ServedModel
        self.model = ServedModel(cfg, 1, unified_kv=False, verbose=False)
        self.scheduler = Scheduler(self.model, cache_bytes=cache_bytes, reuse=reuse)
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        self.max_tokens, self.temperature = max_tokens, temperature
        self.template_kwargs = template_kwargs or {}
        self.answers: list[Answer] = []

    def ask(self, text: str, max_tokens: int | None = None) -> Answer:
        from qwenkit.serving import Request, SamplingParams
        self.messages.append({"role": "user", "content": text})
        p = self.model.chat_prompt(self.messages, self.template_kwargs)
        tokens = self.model.chat_tokens(p)
        done = threading.Event()
        parts: list[str] = []
        box: dict[str, Any] = {}

        def sink(ev):
            if ev[0] == "text":
                parts.append(ev[1])
            elif ev[0] in ("end", "error"):
                box[ev[0]] = ev[1]
                done.set()

        room = self.model.n_ctx_slot - len(tokens)
        self.scheduler.submit(Request(tokens, max(1, min(max_tokens or self.max_tokens, room)),
                                      SamplingParams(temperature=self.temperature), p.stop, sink,
                                      marks=self.model.turn_starts(self.messages, tokens, self.template_kwargs)))
        done.wait()
        if "error" in box:
            self.messages.pop()
            raise box["error"]
        r = box["end"]
        ans = Answer("".join(parts), r.finish_reason, r.prompt_tokens, r.cached_tokens, r.completion_tokens,
                     r.ttft_s, r.total_s)
        self.messages.append({"role": "assistant", "content": ans.text})
        self.answers.append(ans)
        return ans

    def close(self) -> None:
        self.scheduler.close()
        self.model.close()

    def __enter__(self) -> "ChatSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
