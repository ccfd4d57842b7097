"""The kit's OpenAI-compatible HTTP app over the scheduler.

Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health,
POST /extras/tokenize, /extras/tokenize/count, /extras/detokenize; /v1/embeddings answers 501.

The app owns the HTTP contract: OpenAI's error object (4xx for client mistakes, never a 500
for a bad body), streaming (SSE, `data: [DONE]`), usage, cancellation when the client goes
away (streamed or not: the slot is freed at the scheduler's next step), a body limit (413
before the body is read whole), and 503 with Retry-After when the queue is full. /health and
/v1/models read counters only, so they answer while every slot generates.

    state = AppState(alias="qwen3.5-35b")
    app = create_app(state)          # answers 503 until state.attach(model, scheduler)
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from qwenkit.serving import tools as tools_mod
from qwenkit.serving.mailbox import Mailbox
from qwenkit.serving.model import ServedModel
from qwenkit.serving.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Completion,
    CompletionChunk,
    CompletionRequest,
    CountResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    Health,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
    Unsupported,
    error_body,
)
from qwenkit.serving.scheduler import Request, Result, Scheduler, SchedulerError
from qwenkit.serving.structured import SchemaError, response_format_grammar
from qwenkit.serving.tools import ToolStream
from qwenkit.units import MiB

__all__ = ["APIError", "AppState", "BodyLimit", "MAX_BODY_BYTES", "create_app"]

MAX_BODY_BYTES = 8 * MiB


class AppState:
    """What the routes need; filled once the model has loaded."""

    def __init__(self, alias: str, *, stream_flush_ms: float = 0.0, max_body: int = MAX_BODY_BYTES,
                 max_tokens_cap: int | None = None, api_key_required: bool | None = None):
        self.alias = alias
        # every answer stops after this many tokens (a bounded fuzz run against a real model)
        self.max_tokens_cap = max_tokens_cap
        # True: the OpenAPI document says every route needs the Bearer key; None: it may
        self.api_key_required = api_key_required
        self.model: ServedModel | None = None
        self.scheduler: Scheduler | None = None     # attach() sets both, close() clears both
        self.model_id: str | None = None
        self.stream_flush_s = max(0.0, float(stream_flush_ms)) / 1000.0
        self.max_body = int(max_body)
        self.started = int(time.time())

    def attach(self, model: ServedModel, scheduler: Scheduler) -> None:
        self.model_id = Path(model.cfg.model).stem
        self.model = model
        self.scheduler = scheduler

    @property
    def ready(self) -> bool:
        return self.scheduler is not None

    def close(self) -> None:
        """Stop the scheduler, then free the model (once the HTTP server has stopped)."""
        model, scheduler = self.model, self.scheduler
        self.model = self.scheduler = None
        if scheduler is not None:
            scheduler.close()
        if model is not None:
            model.close()


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.headers = status, message, code, param, headers


def _error(status: int, message: str, code: str | None = None, param: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, status, code, param), status_code=status, headers=headers)


def _from_scheduler(e: SchedulerError) -> APIError:
    headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
    return APIError(e.status, e.problem, e.code, headers=headers)  # OpenAI's error object has no fix


# ---- body limit (pure ASGI: 413 before the body is read whole) ---------------------------------
class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    if int(v) > self.max_bytes:
                        return await self._too_large(send)
                except ValueError:
                    pass
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body = msg.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                return await self._too_large(send)
            chunks.append(body)
            more = msg.get("more_body", False)
        data = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, send):
        body = json.dumps(error_body(f"the request body is larger than {self.max_bytes // MiB} MiB",
                                     413, "request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


# ---- responses ---------------------------------------------------------------------------------
def _usage(results: list[Result]) -> dict[str, Any]:
    """The prompt counted once (n choices share it), the completions of every choice."""
    first = results[0]
    done = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": first.prompt_tokens, "completion_tokens": done,
            "total_tokens": first.prompt_tokens + done,
            "prompt_tokens_details": {"cached_tokens": first.cached_tokens}}


def _finish(res: Result) -> str:
    return res.finish_reason if res.finish_reason in ("stop", "length") else "stop"


def _token_entry(model, tok: int, lp: float) -> dict[str, Any]:
    b = model.piece(tok)
    return {"token": b.decode("utf-8", "replace"), "logprob": lp, "bytes": list(b)}


def _chat_logprobs(model, infos: list[dict]) -> dict[str, Any]:
    """OpenAI chat form: one entry per generated token with its top alternatives."""
    return {"content": [dict(_token_entry(model, i["token"], i["logprob"]),
                             top_logprobs=[_token_entry(model, t, lp) for t, lp in i["top"]]) for i in infos]}


def _legacy_logprobs(model, infos: list[dict]) -> dict[str, Any]:
    """The legacy /v1/completions form (tokens, token_logprobs, top_logprobs, text_offset)."""
    toks = [model.piece(i["token"]).decode("utf-8", "replace") for i in infos]
    offsets, at = [], 0
    for t in toks:
        offsets.append(at)
        at += len(t)
    return {"tokens": toks, "token_logprobs": [i["logprob"] for i in infos],
            "top_logprobs": [{model.piece(t).decode("utf-8", "replace"): lp for t, lp in i["top"]} for i in infos],
            "text_offset": offsets}


class _Job:
    """One request's way from the scheduler thread to this event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int = 1):
        self.mailbox = Mailbox(loop)
        self.n = n

    def sink_for(self, i: int):
        """The sink of choice i: events as they are for one choice, (i, event) for several."""
        post = self.mailbox.post
        if self.n == 1:
            return lambda event: post(event, urgent=event[0] != "text")
        return lambda event: post((i, event), urgent=event[0] != "text")


_ERR = {"model": ErrorResponse}
# typed as FastAPI's `responses` parameter, which the routes unpack these into
_GUARD: dict[int | str, dict[str, Any]] = {
    401: dict(_ERR, description="missing or wrong Bearer key (when the server has one)"),
    403: dict(_ERR, description="a Host other than localhost, or a foreign Origin")}
_BUSY = {503: dict(_ERR, description="the model is still loading, or the queue is full (Retry-After)")}
_BODY = {400: dict(_ERR, description="a client mistake: malformed JSON, a missing or wrong field"),
         413: dict(_ERR, description="the body is larger than the server's limit")}


def _responses(model, *, stream: bool = False, body: bool = True, busy: bool = True) -> dict:
    ok: dict[str, Any] = {"model": model, "description": "the answer"}
    if stream:
        ok["content"] = {"text/event-stream": {"schema": {"type": "string"},
                                               "description": "server-sent events (`stream: true`)"}}
    out: dict[Any, Any] = {200: ok, **_GUARD}
    if body:
        out.update(_BODY)
    if busy:
        out.update(_BUSY)
    if stream:
        out[500] = dict(_ERR, description="the model failed while generating (see the server's log)")
    return out


async def _until_disconnect(request: HTTPRequest) -> None:
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            return


def _sse_event(chunk: str) -> dict:
    """One server-sent event: `data:` holds a chunk, an error object, or [DONE]."""
    ref = "#/components/schemas/"
    return {"type": "object", "required": ["data"], "properties": {
        "event": {"type": "string"}, "id": {"type": "string"}, "retry": {"type": "integer"},
        "data": {"anyOf": [{"const": "[DONE]"},
                           {"type": "string", "contentMediaType": "application/json",
                            "contentSchema": {"anyOf": [{"$ref": ref + chunk}, {"$ref": ref + "ErrorResponse"}]}}]}}}


def _document(app: FastAPI, state: AppState) -> None:
    """The OpenAPI document: the Bearer scheme, and no 422 (validation errors are 400 here)."""
    from fastapi.openapi.utils import get_openapi

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        doc.setdefault("components", {}).setdefault("securitySchemes", {})["bearerAuth"] = {
            "type": "http", "scheme": "bearer",
            "description": "Authorization: Bearer <key>. Needed on every route when the server was started "
                           "with a key (always when it listens beyond loopback); a loopback server without a "
                           "key takes any key or none."}
        doc["security"] = [{"bearerAuth": []}] if state.api_key_required else [{"bearerAuth": []}, {}]
        schemas = doc["components"].setdefault("schemas", {})
        for m in (ChatCompletionChunk, CompletionChunk, ErrorResponse):
            js = m.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(js.pop("$defs", {}))
            schemas[m.__name__] = js
        streams = {"/v1/chat/completions": "ChatCompletionChunk", "/v1/completions": "CompletionChunk"}
        for route, path in doc.get("paths", {}).items():
            for op in path.values():
                op.get("responses", {}).pop("422", None)
                sse = op.get("responses", {}).get("200", {}).get("content", {}).get("text/event-stream")
                if sse is not None and route in streams:
                    sse["schema"] = _sse_event(streams[route])
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to replace the document


def create_app(state: AppState) -> FastAPI:
    app = FastAPI(title="qwenkit server", version="1", docs_url="/docs", redoc_url=None,
                  description="OpenAI-compatible routes over one llama.cpp model (qwenkit.serving). Errors are "
                              "OpenAI's error object; a body the server cannot read is 400, never 422.")
    app.state.qwenkit = state
    _document(app, state)

    @app.exception_handler(APIError)
    async def _api_error(_req, e: APIError):
        return _error(e.status, e.message, e.code, e.param, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {}
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        if first.get("type") == "json_invalid":
            return _error(400, "the request body is not valid JSON", "invalid_json")
        msg = first.get("msg", "invalid request")
        return _error(400, f"{loc}: {msg}" if loc else msg, "invalid_value", loc or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req, e: StarletteHTTPException):
        return _error(e.status_code, str(e.detail), None)

    @app.exception_handler(Exception)
    async def _internal(_req, e: Exception):
        import traceback
        traceback.print_exception(e)
        return _error(500, "internal server error (the server's log has the details)", "internal_error")

    def need_ready() -> tuple[ServedModel, Scheduler]:
        model, sched = state.model, state.scheduler
        if model is None or sched is None:
            raise APIError(503, "the model is still loading", "model_loading", headers={"Retry-After": "5"})
        return model, sched

    # ---- status ----
    @app.get("/health", responses={200: {"model": Health}, 503: {"model": Health, "description": "loading"},
                                   **_GUARD})
    async def health():
        model, sched = state.model, state.scheduler
        if model is None or sched is None:
            return JSONResponse({"status": "loading", "model": state.alias}, status_code=503,
                                headers={"Retry-After": "5"})
        if sched.failed is not None:  # nothing will be served: say so, for probes and routers
            return JSONResponse({"status": "error", "model": state.alias,
                                 "error": f"the model failed: {type(sched.failed).__name__}",
                                 "fix": "restart the server; its log says why"}, status_code=500)
        return {"status": "ok", "model": state.alias, "model_id": state.model_id,
                "n_ctx": model.n_ctx_slot, **sched.stats()}

    @app.get("/v1/models", responses=_responses(ModelList, body=False))
    async def models():
        need_ready()
        ids = [state.alias] + ([state.model_id] if state.model_id and state.model_id != state.alias else [])
        return {"object": "list", "data": [{"id": i, "object": "model", "created": state.started,
                                            "owned_by": "qwenkit"} for i in ids]}

    @app.post("/v1/embeddings", status_code=501,
              responses={501: dict(_ERR, description="this server does not serve embeddings"), **_GUARD,
                         413: _BODY[413]})
    async def embeddings():
        # x-should-retry: the openai client would retry a 5xx; this one will not change
        raise APIError(501, "this server generates text; it does not serve embeddings", "not_implemented",
                       headers={"x-should-retry": "false"})

    # ---- tokenizer (the summarizer counts with the model's own) ----
    @app.post("/extras/tokenize", responses=_responses(TokenizeResponse))
    async def tokenize(body: TokenizeRequest):
        model, _ = need_ready()
        return {"tokens": await run_in_threadpool(model.tokenize, body.input, add_special=False)}

    @app.post("/extras/tokenize/count", responses=_responses(CountResponse))
    async def tokenize_count(body: TokenizeRequest):
        model, _ = need_ready()
        toks = await run_in_threadpool(model.tokenize, body.input, add_special=False)
        return {"count": len(toks)}

    @app.post("/extras/detokenize", responses=_responses(DetokenizeResponse))
    async def detokenize(body: DetokenizeRequest):
        model, _ = need_ready()
        if any(t < 0 or t >= model.n_vocab for t in body.tokens):
            raise APIError(400, f"token ids must be in 0..{model.n_vocab - 1}", "invalid_value", "tokens")
        return {"text": await run_in_threadpool(model.detokenize, body.tokens)}

    # ---- generation ----
    def unsupported(body, fields: dict[str, str]) -> None:
        for name, why in fields.items():
            v = getattr(body, name, None)
            if v not in (None, False, 0, {}, []):
                raise APIError(400, f"{name} is not supported by this server yet ({why})", "unsupported_parameter",
                               name)

    async def run(request: HTTPRequest, body, prompt: list[int], stops: list[str], limit: int | None, kind: str,
                  grammar: str | None = None, tool_fmt: str | None = None, funcs: list[dict] | None = None,
                  marks: Sequence[int] = ()):
        model, sched = need_ready()
        try:
            sampling = body.sampling()
        except Unsupported as e:
            raise APIError(400, str(e), "unsupported_parameter", e.param) from None
        except ValueError as e:
            raise APIError(400, str(e), "invalid_value", "logit_bias") from None
        bad = [t for t in sampling.logit_bias if not 0 <= t < model.n_vocab]
        if bad:
            raise APIError(400, f"logit_bias token id {bad[0]} is not in 0..{model.n_vocab - 1}", "invalid_value",
                           "logit_bias")
        if grammar is not None:
            if sampling.grammar:
                raise APIError(400, "grammar cannot be combined with response_format or a required tool call",
                               "invalid_value", "grammar")
            sampling = dataclasses.replace(sampling, grammar=grammar)
        if sampling.grammar:
            from qwenkit.serving.sampling import check_grammar
            try:
                await run_in_threadpool(check_grammar, model.vocab, sampling.grammar)
            except ValueError as e:
                raise APIError(400, str(e), "invalid_grammar", "grammar") from None
        room = model.n_ctx_slot - len(prompt)
        max_tokens = room if limit is None else min(limit, max(room, 1))
        if state.max_tokens_cap:
            max_tokens = min(max_tokens, state.max_tokens_cap)
        try:
            n_lp = body.n_logprobs()
        except ValueError as e:
            raise APIError(400, str(e), "invalid_value", "logprobs") from None
        n = body.n
        loop = asyncio.get_running_loop()
        job = _Job(loop, n)
        reqs = []
        for i in range(n):
            sp = sampling if i == 0 or sampling.seed is None else dataclasses.replace(sampling, seed=sampling.seed + i)
            # chats come back with one more message: their prompts get checkpoints and parking
            reqs.append(Request(prompt, max_tokens, sp, stops, job.sink_for(i), top_logprobs=n_lp,
                                conversation=kind == "chat" and i == 0, marks=marks))
        try:
            sched.submit_all(reqs)
        except SchedulerError as e:
            raise _from_scheduler(e) from None
        g = _Gen(model, kind, ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex, int(time.time()),
                 body.model or state.alias, n, tool_fmt, funcs)
        if body.stream:
            return StreamingResponse(_stream(reqs, job, sched, g, body.include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _whole(request, reqs, job, sched, g)

    async def _whole(request, reqs, job, sched, g: "_Gen"):
        n = len(reqs)
        texts: list[list[str]] = [[] for _ in range(n)]
        lps: list[list[dict]] = [[] for _ in range(n)]
        ends: list = [None] * n
        watcher = asyncio.ensure_future(_until_disconnect(request))
        try:
            while any(e is None for e in ends):
                getter = asyncio.ensure_future(job.mailbox.collect())
                done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    for r in reqs:
                        sched.cancel(r)   # the client went away: free the slots
                    return JSONResponse(error_body("client disconnected", 499), status_code=499)
                for item in getter.result():
                    i, ev = item if n > 1 else (0, item)
                    if ev[0] == "text":
                        texts[i].append(ev[1])
                    elif ev[0] == "logprobs":
                        lps[i].append(ev[1])
                    else:
                        ends[i] = ev
                        if ev[0] == "error":
                            for r in reqs:
                                sched.cancel(r)
                            raise _from_scheduler(ev[1])
        finally:
            watcher.cancel()
        results: list[Result] = [e[1] for e in ends]
        choices = []
        for i, res in enumerate(results):
            text = "".join(texts[i])
            lp = lps[i] if reqs[i].top_logprobs else None
            if g.kind == "chat":
                msg: dict[str, Any] = {"role": "assistant", "content": text}
                finish = _finish(res)
                if g.tool_fmt:
                    ts = ToolStream(g.tool_fmt, g.funcs)
                    content, calls = [], []
                    for ev in ts.feed(text) + ts.close():
                        if ev[0] == "content":
                            content.append(ev[1])
                        elif ev[0] == "call":
                            calls.append({"id": _call_id(), "type": "function",
                                          "function": {"name": ev[2], "arguments": ""}})
                        else:
                            calls[ev[1]]["function"]["arguments"] += ev[2]
                    if calls:
                        msg = {"role": "assistant", "content": "".join(content).strip() or None, "tool_calls": calls}
                        if finish == "stop":
                            finish = "tool_calls"
                choices.append({"index": i, "message": msg, "finish_reason": finish,
                                "logprobs": _chat_logprobs(g.model, lp) if lp is not None else None})
            else:
                choices.append({"index": i, "text": text, "finish_reason": _finish(res),
                                "logprobs": _legacy_logprobs(g.model, lp) if lp is not None else None})
        return {"id": g.cid, "object": "chat.completion" if g.kind == "chat" else "text_completion",
                "created": g.created, "model": g.name, "choices": choices, "usage": _usage(results)}

    async def _stream(reqs, job, sched, g: "_Gen", include_usage: bool):
        n = len(reqs)
        kind = g.kind
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        head = json.dumps({"id": g.cid, "object": obj, "created": g.created, "model": g.name})[:-1]
        pending_lp: list[list[dict]] = [[] for _ in range(n)]
        parsers = [ToolStream(g.tool_fmt, g.funcs) for _ in range(n)] if g.tool_fmt else None
        called = [0] * n
        results: list = [None] * n

        def chunk(i: int, delta_or_text: Any, finish: str | None) -> str:
            lp = None
            if pending_lp[i]:  # the tokens generated since the last chunk
                lp = (_chat_logprobs(g.model, pending_lp[i]) if kind == "chat"
                      else _legacy_logprobs(g.model, pending_lp[i]))
                pending_lp[i] = []
            if kind == "chat":
                choice = {"index": i, "delta": delta_or_text, "finish_reason": finish, "logprobs": lp}
            else:
                choice = {"index": i, "text": delta_or_text, "finish_reason": finish, "logprobs": lp}
            return head + ', "choices": [' + json.dumps(choice, ensure_ascii=False) + "]}"

        def tool_chunks(i: int, events: list[tuple], out: list[str]) -> None:
            for ev in events:
                if ev[0] == "content":
                    if ev[1] and not (called[i] and not ev[1].strip()):
                        out.append(chunk(i, {"content": ev[1]}, None))
                elif ev[0] == "call":
                    called[i] += 1
                    out.append(chunk(i, {"tool_calls": [{"index": ev[1], "id": _call_id(), "type": "function",
                                                         "function": {"name": ev[2], "arguments": ""}}]}, None))
                elif ev[2]:
                    out.append(chunk(i, {"tool_calls": [{"index": ev[1], "function": {"arguments": ev[2]}}]}, None))

        finished = False
        try:
            if kind == "chat":
                yield "".join("data: " + chunk(i, {"role": "assistant", "content": ""}, None) + "\n\n"
                              for i in range(n))
            while True:
                items = await job.mailbox.collect()
                out: list[str] = []
                for item in items:
                    i, ev = item if n > 1 else (0, item)
                    if ev[0] == "text":
                        if parsers is not None:
                            tool_chunks(i, parsers[i].feed(ev[1]), out)
                        else:
                            out.append(chunk(i, {"content": ev[1]} if kind == "chat" else ev[1], None))
                    elif ev[0] == "logprobs":
                        pending_lp[i].append(ev[1])
                    elif ev[0] == "end":
                        res: Result = ev[1]
                        results[i] = res
                        finish = _finish(res)
                        if parsers is not None:
                            tool_chunks(i, parsers[i].close(), out)
                            if called[i] and finish == "stop":
                                finish = "tool_calls"
                        out.append(chunk(i, {} if kind == "chat" else "", finish))
                        if all(r is not None for r in results):
                            if include_usage:
                                out.append(head + ', "choices": [], "usage": ' + json.dumps(_usage(results)) + "}")
                            out.append("[DONE]")
                            finished = True
                    else:
                        e: SchedulerError = ev[1]
                        out.append(json.dumps(error_body(e.problem, e.status, e.code)))
                        finished = True
                        break
                if out:
                    yield "".join("data: " + o + "\n\n" for o in out)
                if finished:
                    return
                if state.stream_flush_s:
                    await job.mailbox.pause(state.stream_flush_s)
        finally:
            if not finished or any(r is None for r in results):
                for r in reqs:
                    sched.cancel(r)   # client gone (or the server stops): free the slots

    @app.post("/v1/chat/completions", responses=_responses(ChatCompletion, stream=True))
    async def chat(request: HTTPRequest, body: ChatRequest):
        model, _ = need_ready()
        messages = [m.for_template() for m in body.messages]
        kwargs = dict(body.chat_template_kwargs or {})
        grammar, tool_fmt, funcs = None, None, None
        try:
            funcs = tools_mod.functions(body.tools)
            mode, allowed = tools_mod.chosen(body.tool_choice, funcs)
        except tools_mod.ToolError as e:
            raise APIError(400, str(e), "invalid_value", e.param) from None
        try:
            if mode == "required":
                grammar = tools_mod.call_grammar(tools_mod.detect_format(model.chat_template), allowed)
            rf = response_format_grammar(body.response_format)
        except SchemaError as e:
            raise APIError(400, str(e), "unsupported_schema" if e.keyword else "invalid_value",
                           "tools" if mode == "required" else "response_format") from None
        if rf is not None:
            if grammar is not None:
                raise APIError(400, "response_format cannot be combined with a required tool call",
                               "invalid_value", "response_format")
            grammar = rf
        if grammar is not None:
            # a constrained answer starts at once: no reasoning block first (unless asked for)
            kwargs.setdefault("enable_thinking", False)
        render_tools = None
        if mode != "none":
            tool_fmt = tools_mod.detect_format(model.chat_template)
            native = await run_in_threadpool(_template_renders_tools, model)
            try:
                messages = tools_mod.history(messages, tool_fmt, native)
            except tools_mod.ToolError as e:
                raise APIError(400, str(e), "invalid_value", e.param) from None
            if native:
                render_tools = [{"type": "function", "function": f} for f in funcs]
            else:
                tool_fmt = tools_mod.HERMES
                # a required call lists only what may be called (the grammar allows nothing else)
                text = tools_mod.system_text(allowed if mode == "required" else funcs)
                if messages and messages[0].get("role") == "system":
                    messages[0] = dict(messages[0], content=f"{messages[0].get('content') or ''}\n\n{text}")
                else:
                    messages.insert(0, {"role": "system", "content": text})
            if mode == "required" and not native:
                grammar = tools_mod.call_grammar(tool_fmt, allowed)
        try:
            prompt = await run_in_threadpool(model.chat_prompt, messages, kwargs, render_tools,
                                             body.tool_choice if render_tools else None)
        except ValueError as e:  # the template's raise_exception(): the messages' fault (roles, order)
            raise APIError(400, f"the model's chat template refused these messages: {e}", "invalid_messages",
                           "messages") from None
        # anything else (a template that breaks jinja2's sandbox: SecurityError) is the model's
        # fault: the generic 500, the details in the log only (tests/test_faults_files.py)
        tokens = await run_in_threadpool(model.chat_tokens, prompt)
        marks = await run_in_threadpool(model.turn_starts, messages, tokens, kwargs, render_tools,
                                        body.tool_choice if render_tools else None) if model.recurrent else []
        return await run(request, body, tokens, body.stops() + prompt.stop, body.limit(), "chat",
                         grammar=grammar, tool_fmt=tool_fmt, funcs=funcs, marks=marks)

    @app.post("/v1/completions", responses=_responses(Completion, stream=True))
    async def completions(request: HTTPRequest, body: CompletionRequest):
        model, _ = need_ready()
        unsupported(body, {"echo": "not implemented", "suffix": "not implemented"})
        p = body.prompt
        if isinstance(p, list) and p and isinstance(p[0], str):
            p = p[0]
        if isinstance(p, str):
            tokens = await run_in_threadpool(model.completion_tokens, p)
        else:
            tokens = [t for t in p if isinstance(t, int) and 0 <= t < model.n_vocab]
            if len(tokens) != len(p):
                raise APIError(400, f"prompt token ids must be in 0..{model.n_vocab - 1}", "invalid_value", "prompt")
        return await run(request, body, tokens, body.stops(), body.max_tokens, "completion")

    return app


class _Gen:
    """What the response writers need about one generation request."""

    def __init__(self, model, kind, cid, created, name, n, tool_fmt, funcs):
        self.model, self.kind, self.cid, self.created, self.name, self.n = model, kind, cid, created, name, n
        self.tool_fmt, self.funcs = tool_fmt, funcs


def _call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


_PROBE = "qwenkit_probe_function_7f3a"


def _template_renders_tools(model) -> bool:
    """Whether the GGUF's chat template writes the `tools` it is given into the prompt."""
    cached = getattr(model, "_qwenkit_renders_tools", None)
    if cached is None:
        try:
            p = model.chat_prompt([{"role": "user", "content": "hi"}], {},
                                  [{"type": "function", "function": {"name": _PROBE, "parameters": {
                                      "type": "object", "properties": {}}}}], None)
            cached = _PROBE in p.text
        except Exception:  # noqa: BLE001
            cached = False
        model._qwenkit_renders_tools = cached
    return cached
