"""The OpenAI request bodies the server accepts, and OpenAI's error object.

Validation happens here, before anything reaches the scheduler, so a client mistake is a
400 with a message that names the field, never a 500 (which the openai client retries)."""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from qwenkit.serving.sampling import SamplingParams

MAX_STOP = 4


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    # unknown fields are accepted and ignored (clients send many: user, metadata, store, ...)
    model_config = ConfigDict(extra="allow")

    model: Optional[str] = None
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    top_k: int = Field(default=40, ge=0)
    min_p: float = Field(default=0.05, ge=0.0, le=1.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repeat_penalty: float = Field(default=1.0, gt=0.0, le=10.0)
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    logit_bias: Optional[dict[str, float]] = None
    n: int = Field(default=1, ge=1, le=1, description="one choice per request on this server")
    logprobs: Any = None
    grammar: Optional[str] = Field(default=None, max_length=65536, description="GBNF grammar (llama.cpp)")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        return v

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]

    def sampling(self) -> SamplingParams:
        bias = {}
        for k, v in (self.logit_bias or {}).items():
            try:
                bias[int(k)] = float(v)
            except ValueError:
                raise ValueError(f"logit_bias key {k!r} is not a token id") from None
        return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                              min_p=self.min_p, presence_penalty=self.presence_penalty,
                              frequency_penalty=self.frequency_penalty, repeat_penalty=self.repeat_penalty,
                              seed=self.seed, logit_bias=bias, grammar=self.grammar or None)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Optional[Union[str, list[dict[str, Any]]]] = None

    def for_template(self) -> dict[str, Any]:
        d = self.model_dump(exclude_none=True)
        if isinstance(self.content, list):  # content parts: the text parts, joined
            d["content"] = "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        elif self.content is None:
            d["content"] = ""
        if d["role"] == "developer":
            d["role"] = "system"
        return d


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    chat_template_kwargs: Optional[dict[str, Any]] = None
    response_format: Optional[dict[str, Any]] = None
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Any = None
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)

    def n_logprobs(self) -> int:
        """How many alternatives per token to report (0: no log-probabilities)."""
        if not self.logprobs:
            return 0
        return max(1, self.top_logprobs or 0)

    def limit(self) -> Optional[int]:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int]]
    max_tokens: Optional[int] = Field(default=16, ge=1)   # OpenAI's legacy default
    echo: bool = False
    suffix: Optional[str] = None

    def n_logprobs(self) -> int:
        if self.logprobs in (None, False):
            return 0
        if not isinstance(self.logprobs, int) or not 0 <= self.logprobs <= 5:
            raise ValueError("logprobs must be an integer from 0 to 5")
        return max(1, self.logprobs)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        if isinstance(v, list):
            if not v:
                raise ValueError("the prompt is empty")
            if all(isinstance(x, str) for x in v) and len(v) != 1:
                raise ValueError("send one prompt per request (a list of one string)")
        if isinstance(v, str) and not v:
            raise ValueError("the prompt is empty")
        return v


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    input: str
    model: Optional[str] = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    tokens: list[int]
    model: Optional[str] = None


def error_body(message: str, status: int, code: str | None = None, param: str | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
