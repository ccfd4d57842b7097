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
import json
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from qwenkit.fastgen import _Mailbox
from qwenkit.serving.protocol import (ChatRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest,
                                      error_body)
from qwenkit.serving.scheduler import Request, Result, SchedulerError

MAX_BODY_BYTES = 8 * 1024 * 1024


class AppState:
    """What the routes need; filled once the model has loaded."""

    def __init__(self, alias: str, *, stream_flush_ms: float = 0.0, max_body: int = MAX_BODY_BYTES):
        self.alias = alias
        self.model = None
        self.scheduler = None
        self.model_id: str | None = None
        self.stream_flush_s = max(0.0, float(stream_flush_ms)) / 1000.0
        self.max_body = int(max_body)
        self.started = int(time.time())

    def attach(self, model, scheduler) -> None:
        self.model_id = Path(model.cfg.model).stem
        self.model = model
        self.scheduler = scheduler

    @property
    def ready(self) -> bool:
        return self.scheduler is not None


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
    return APIError(e.status, str(e), e.code, headers=headers)


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
        body = json.dumps(error_body(f"the request body is larger than {self.max_bytes // (1024 * 1024)} MiB",
                                     413, "request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


# ---- responses ---------------------------------------------------------------------------------
def _usage(res: Result) -> dict[str, Any]:
    return {"prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
            "total_tokens": res.prompt_tokens + res.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": res.cached_tokens}}


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

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.mailbox = _Mailbox(loop)

    def sink(self, event: tuple) -> None:   # on the scheduler thread
        self.mailbox.post(event, urgent=event[0] != "text")


async def _until_disconnect(request: HTTPRequest) -> None:
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            return


def create_app(state: AppState) -> FastAPI:
    app = FastAPI(title="qwenkit server", version="1", docs_url="/docs", redoc_url=None)
    app.state.qwenkit = state

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

    def need_ready():
        if not state.ready:
            raise APIError(503, "the model is still loading", "model_loading", headers={"Retry-After": "5"})
        return state.model, state.scheduler

    # ---- status ----
    @app.get("/health")
    async def health():
        if not state.ready:
            return JSONResponse({"status": "loading", "model": state.alias}, status_code=503,
                                headers={"Retry-After": "5"})
        return {"status": "ok", "model": state.alias, "model_id": state.model_id,
                "n_ctx": state.model.n_ctx_slot, **state.scheduler.stats()}

    @app.get("/v1/models")
    async def models():
        need_ready()
        ids = [state.alias] + ([state.model_id] if state.model_id and state.model_id != state.alias else [])
        return {"object": "list", "data": [{"id": i, "object": "model", "created": state.started,
                                            "owned_by": "qwenkit"} for i in ids]}

    @app.post("/v1/embeddings")
    async def embeddings():
        raise APIError(501, "this server generates text; it does not serve embeddings", "not_implemented")

    # ---- tokenizer (the summarizer counts with the model's own) ----
    @app.post("/extras/tokenize")
    async def tokenize(body: TokenizeRequest):
        model, _ = need_ready()
        return {"tokens": await run_in_threadpool(model.tokenize, body.input, add_special=False)}

    @app.post("/extras/tokenize/count")
    async def tokenize_count(body: TokenizeRequest):
        model, _ = need_ready()
        toks = await run_in_threadpool(model.tokenize, body.input, add_special=False)
        return {"count": len(toks)}

    @app.post("/extras/detokenize")
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
                raise APIError(400, f"{name} is not supported by this server yet ({why})", "unsupported_parameter", name)

    async def run(request: HTTPRequest, body, prompt: list[int], stops: list[str], limit: int | None, kind: str):
        model, sched = need_ready()
        try:
            sampling = body.sampling()
        except ValueError as e:
            raise APIError(400, str(e), "invalid_value", "logit_bias") from None
        if sampling.grammar:
            from qwenkit.serving.sampling import check_grammar
            try:
                await run_in_threadpool(check_grammar, model.vocab, sampling.grammar)
            except ValueError as e:
                raise APIError(400, str(e), "invalid_grammar", "grammar") from None
        room = model.n_ctx_slot - len(prompt)
        max_tokens = room if limit is None else min(limit, max(room, 1))
        try:
            n_lp = body.n_logprobs()
        except ValueError as e:
            raise APIError(400, str(e), "invalid_value", "logprobs") from None
        loop = asyncio.get_running_loop()
        job = _Job(loop)
        req = Request(prompt, max_tokens, sampling, stops, job.sink, top_logprobs=n_lp)
        try:
            sched.submit(req)
        except SchedulerError as e:
            raise _from_scheduler(e) from None
        cid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        name = body.model or state.alias
        if body.stream:
            return StreamingResponse(_stream(req, job, sched, cid, created, name, kind, body.include_usage, model),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _whole(request, req, job, sched, cid, created, name, kind, model)

    async def _whole(request, req, job, sched, cid, created, name, kind, model):
        texts: list[str] = []
        lps: list[dict] = []
        watcher = asyncio.ensure_future(_until_disconnect(request))
        end = None
        try:
            while end is None:
                getter = asyncio.ensure_future(job.mailbox.collect())
                done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    sched.cancel(req)   # the client went away: free the slot
                    return JSONResponse(error_body("client disconnected", 499), status_code=499)
                for ev in getter.result():
                    if ev[0] == "text":
                        texts.append(ev[1])
                    elif ev[0] == "logprobs":
                        lps.append(ev[1])
                    else:
                        end = ev
        finally:
            watcher.cancel()
        if end[0] == "error":
            raise _from_scheduler(end[1])
        res: Result = end[1]
        text = "".join(texts)
        if kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "finish_reason": _finish(res), "logprobs": _chat_logprobs(model, lps) if req.top_logprobs else None}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": _finish(res),
                      "logprobs": _legacy_logprobs(model, lps) if req.top_logprobs else None}
            obj = "text_completion"
        return {"id": cid, "object": obj, "created": created, "model": name, "choices": [choice],
                "usage": _usage(res)}

    async def _stream(req, job, sched, cid, created, name, kind, include_usage, model):
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        pending_lp: list[dict] = []

        def chunk(text: str | None, finish: str | None, first: bool = False) -> str:
            lp = None
            if pending_lp and not first:  # the tokens generated since the last chunk
                lp = _chat_logprobs(model, pending_lp) if kind == "chat" else _legacy_logprobs(model, pending_lp)
                pending_lp.clear()
            if kind == "chat":
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else (
                    {"content": text} if text is not None else {})
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": lp}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": lp}
            return "data: " + json.dumps({"id": cid, "object": obj, "created": created, "model": name,
                                          "choices": [choice]}, ensure_ascii=False) + "\n\n"

        finished = False
        try:
            if kind == "chat":
                yield chunk(None, None, first=True)
            while True:
                items = await job.mailbox.collect()
                out = []
                for ev in items:
                    if ev[0] == "text":
                        out.append(chunk(ev[1], None))
                    elif ev[0] == "logprobs":
                        pending_lp.append(ev[1])
                    elif ev[0] == "end":
                        res: Result = ev[1]
                        out.append(chunk(None if kind == "chat" else "", _finish(res)))
                        if include_usage:
                            out.append("data: " + json.dumps({"id": cid, "object": obj, "created": created,
                                                              "model": name, "choices": [],
                                                              "usage": _usage(res)}) + "\n\n")
                        out.append("data: [DONE]\n\n")
                        finished = True
                    else:
                        e: SchedulerError = ev[1]
                        out.append("data: " + json.dumps(error_body(str(e), e.status, e.code)) + "\n\n")
                        finished = True
                if out:
                    yield "".join(out)
                if finished:
                    return
                if state.stream_flush_s:
                    await job.mailbox.pause(state.stream_flush_s)
        finally:
            if not finished:
                sched.cancel(req)   # client gone (or the server stops): free the slot

    @app.post("/v1/chat/completions")
    async def chat(request: HTTPRequest, body: ChatRequest):
        model, _ = need_ready()
        unsupported(body, {"response_format": "structured output comes with the conformance work"})
        messages = [m.for_template() for m in body.messages]
        try:
            prompt = await run_in_threadpool(model.chat_prompt, messages, body.chat_template_kwargs,
                                             body.tools, body.tool_choice)
        except ValueError as e:  # the template's raise_exception(): the messages' fault (roles, order)
            raise APIError(400, f"the model's chat template refused these messages: {e}", "invalid_messages",
                           "messages") from None
        # anything else (a template that breaks jinja2's sandbox: SecurityError) is the model's
        # fault: the generic 500, the details in the log only
        tokens = await run_in_threadpool(model.chat_tokens, prompt)
        return await run(request, body, tokens, body.stops() + prompt.stop, body.limit(), "chat")

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest, body: CompletionRequest):
        model, _ = need_ready()
        unsupported(body, {"echo": "not implemented", "suffix": "not implemented"})
        p = body.prompt
        if isinstance(p, list) and p and isinstance(p[0], str):
            p = p[0]
        if isinstance(p, str):
            tokens = await run_in_threadpool(model.completion_tokens, p)
        else:
            if any(not isinstance(t, int) or t < 0 or t >= model.n_vocab for t in p):
                raise APIError(400, f"prompt token ids must be in 0..{model.n_vocab - 1}", "invalid_value", "prompt")
            tokens = list(p)
        return await run(request, body, tokens, body.stops(), body.max_tokens, "completion")

    return app
