"""The OpenAI request bodies the server accepts, and OpenAI's error object.

Validation happens here, before anything reaches the scheduler, so a client mistake is a
400 with a message that names the field, never a 500 (which the openai client retries)."""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from qwenkit.serving.sampling import SamplingParams

__all__ = [
    "AssistantMessage", "ChatChoice", "ChatChunkChoice", "ChatCompletion", "ChatCompletionChunk", "ChatMessage",
    "ChatRequest", "ChoiceLogprobs", "Completion", "CompletionChoice", "CompletionChunk", "CompletionChunkChoice",
    "CompletionRequest", "CountResponse", "DRY_BREAKERS", "Delta", "DetokenizeRequest", "DetokenizeResponse",
    "ErrorDetail", "ErrorResponse", "FunctionCall", "FunctionDelta", "Health", "LegacyLogprobs", "MAX_N", "MAX_STOP",
    "ModelCard", "ModelList", "PromptTokensDetails", "StreamOptions", "TokenLogprob", "TokenizeRequest",
    "TokenizeResponse", "ToolCall", "ToolCallDelta", "TopLogprob", "Unsupported", "Usage", "dry_supported",
    "error_body",
]

MAX_STOP = 4
MAX_N = 8
DRY_BREAKERS = ["\n", ":", "\"", "*"]   # llama.cpp's defaults


class Unsupported(ValueError):
    def __init__(self, param: str, why: str):
        super().__init__(f"{param} is not supported by this server ({why})")
        self.param = param


def dry_supported() -> bool:
    """SamplingParams carries the DRY settings (the scheduler's sampler adds llama.cpp's DRY stage)."""
    import dataclasses
    return "dry_multiplier" in {f.name for f in dataclasses.fields(SamplingParams)}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    # unknown fields are accepted and ignored (clients send many: user, metadata, store, ...)
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: Optional[str] = None
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    top_k: int = Field(default=40, ge=0, le=1 << 20)
    min_p: float = Field(default=0.05, ge=0.0, le=1.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repeat_penalty: float = Field(default=1.0, gt=0.0, le=10.0)
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    logit_bias: Optional[dict[str, float]] = None
    n: int = Field(default=1, ge=1, le=MAX_N, description="choices: n sequences sharing the prompt, each "
                   "with its own seed (seed + i when a seed is given)")
    logprobs: Any = None
    grammar: Optional[str] = Field(default=None, max_length=65536, description="GBNF grammar (llama.cpp)")
    # llama.cpp's DRY ("don't repeat yourself") sampler; 0 = off
    dry_multiplier: float = Field(default=0.0, ge=0.0, le=10.0)
    dry_base: float = Field(default=1.75, ge=1.0, le=10.0)
    dry_allowed_length: int = Field(default=2, ge=0, le=1000)
    dry_penalty_last_n: int = Field(default=-1, ge=-1, le=1 << 20)
    dry_sequence_breakers: Optional[list[str]] = Field(default=None, max_length=32)

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
            if not -100.0 <= bias[int(k)] <= 100.0:
                raise ValueError(f"logit_bias value for {k!r} must be from -100 to 100")
        if self.dry_multiplier > 0 and not dry_supported():
            raise Unsupported("dry_multiplier", "llama.cpp's DRY sampler is not wired into this server's "
                              "sampler chain yet")
        params = SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                                min_p=self.min_p, presence_penalty=self.presence_penalty,
                                frequency_penalty=self.frequency_penalty, repeat_penalty=self.repeat_penalty,
                                seed=self.seed, logit_bias=bias, grammar=self.grammar or None)
        if self.dry_multiplier <= 0:
            return params   # DRY off: its settings keep their defaults
        return dataclasses.replace(
            params, dry_multiplier=self.dry_multiplier, dry_base=self.dry_base,
            dry_allowed_length=self.dry_allowed_length, dry_penalty_last_n=self.dry_penalty_last_n,
            dry_sequence_breakers=tuple(self.dry_sequence_breakers if self.dry_sequence_breakers is not None
                                        else DRY_BREAKERS))

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
            d["content"] = "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
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
    tools: Optional[list[dict[str, Any]]] = Field(default=None, max_length=128)
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    parallel_tool_calls: Optional[bool] = None
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


# ---- response bodies (for the OpenAPI document; the app writes plain dicts) ---------------------
class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    """OpenAI's error object."""
    error: ErrorDetail


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: Optional[list[TokenLogprob]] = None


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="the arguments as a JSON object's text")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"]
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: Optional[ChoiceLogprobs] = None


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: Optional[PromptTokensDetails] = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class LegacyLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: Optional[LegacyLogprobs] = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: Literal["ok", "loading"]
    model: str


class TokenizeResponse(BaseModel):
    tokens: list[int]


class CountResponse(BaseModel):
    count: int


class DetokenizeResponse(BaseModel):
    text: str


class FunctionDelta(BaseModel):
    name: Optional[str] = None
    arguments: Optional[str] = None


class ToolCallDelta(BaseModel):
    index: int
    id: Optional[str] = None
    type: Optional[Literal["function"]] = None
    function: Optional[FunctionDelta] = None


class Delta(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None
    tool_calls: Optional[list[ToolCallDelta]] = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: Optional[Literal["stop", "length", "tool_calls"]] = None
    logprobs: Optional[ChoiceLogprobs] = None


class ChatCompletionChunk(BaseModel):
    """One `data:` event of a streamed chat completion (the last, with include_usage, has no choices)."""
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Optional[Usage] = None


class CompletionChunkChoice(BaseModel):
    index: int
    text: str
    finish_reason: Optional[Literal["stop", "length"]] = None
    logprobs: Optional[LegacyLogprobs] = None


class CompletionChunk(BaseModel):
    """One `data:` event of a streamed legacy completion."""
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: Optional[Usage] = None
