"""The HTTP side of `arbitrage serve`: OpenAI-compatible routes on FastAPI, as vLLM's server is built.

- POST /v1/completions, POST /v1/chat/completions: one problem per request through the shared engine; fields
  max_tokens, temperature, top_p, seed, stop, stream, stream_options.include_usage, and the extra fields
  policy, threshold, max_steps (and decide_after) per request. Streaming sends one chunk per accepted step,
  then a chunk with the finish reason (and, if asked, one with the usage). `usage` adds the step accounting
  (draft_tokens, target_tokens, discarded_draft_tokens, steps, escalated_steps) to OpenAI's fields.
  Each streamed step's chunk carries an extra field `arbitrage` (who wrote the step, whether it was escalated,
  its scores, the discarded draft proposal, tokens, seconds, speculation); the finish chunk's says the latency.
- GET /v1/models (with the policies this server can run and their threshold ranges), GET /health (503 while a
  backend is down), GET /metrics (Prometheus).
- GET /: a page (static/, no build step, works offline) that streams an answer step by step, coloured by author.
Bad input gets a 400 naming the field (404 for an unknown model); a client that disconnects cancels its work.
"""

import asyncio
import json
import math
import os
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..registry import registry
from .requests import RequestError, parse_request
from .service import FINISH, Service

DISCONNECT_POLL_S = 0.25
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")  # the page's HTML, JS and CSS


def create_app(service: Service) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(
        title="arbitrage",
        description="Step-level speculative reasoning behind an OpenAI-compatible API",
        lifespan=lifespan,
    )
    app.state.service = service

    def error(exc: RequestError, endpoint: str) -> JSONResponse:
        service.metrics.requests.labels(endpoint, str(exc.status)).inc()
        return JSONResponse(exc.body(), status_code=exc.status)

    def internal(exc: BaseException, endpoint: str) -> JSONResponse:
        """Any failure no check caught: a JSON 500 in OpenAI's layout, counted, the server still serving."""
        return error(
            RequestError(f"internal error: {type(exc).__name__}: {_short(exc)}", None, 500, "server_error"), endpoint
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code, "invalid_request_error")
        message = {
            404: f"no route {request.url.path}",
            405: f"{request.method} is not allowed on {request.url.path}",
        }.get(exc.status_code, str(exc.detail))
        return error(RequestError(message, None, exc.status_code, kind), "other")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return error(RequestError(f"invalid request: {_short(exc)}"), "other")

    @app.exception_handler(Exception)
    async def any_error(request: Request, exc: Exception):
        return internal(exc, "other")

    @app.get("/v1/models")
    async def models():
        default = service.default_policy
        return {
            "object": "list",
            "data": [
                {
                    "id": service.served_name,
                    "object": "model",
                    "created": int(service.started),
                    "owned_by": "arbitrage",
                    "policy": default.describe(),
                    "default_policy": {"name": default.name, "threshold": default.threshold},
                    "policies": _servable_policies(service),
                }
            ],
        }

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page():
        return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")

    @app.get("/health")
    async def health():
        status = await asyncio.get_running_loop().run_in_executor(None, service.health)
        down = [role for role, s in status.items() if s == "down"]
        body = {
            "status": "ok" if not down else "unavailable",
            "backends": status,
            "in_flight": service.engine.in_flight,
        }
        return JSONResponse(body, status_code=503 if down else 200)

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        service.metrics.in_flight.set(service.engine.in_flight)
        return PlainTextResponse(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def complete(request: Request, chat: bool):
        endpoint = "chat" if chat else "completions"
        try:
            return await answer(request, chat, endpoint)
        except Exception as exc:
            return internal(exc, endpoint)

    async def answer(request: Request, chat: bool, endpoint: str):
        try:
            raw = await _read_body(request, service.max_body_bytes)
            body = json.loads(raw or b"null")
        except RequestError as exc:
            return error(exc, endpoint)
        except RecursionError:
            return error(RequestError("the request body nests too deeply"), endpoint)
        except ValueError as exc:
            return error(RequestError(f"the request body is not valid JSON ({_short(exc)})"), endpoint)
        try:
            req = parse_request(
                body,
                chat,
                service.served_name,
                registry().policies,
                registry().thresholded(),
                registry().policy_options(),
            )
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue = asyncio.Queue()
            ticket, prompt = service.submit(req, loop, queue)
        except RequestError as exc:
            return error(exc, endpoint)
        rid = ("chatcmpl-" if chat else "cmpl-") + ticket.problem.id
        created = int(time.time())
        if req.stream:  # counted when the stream ends: 200, 500 (a backend failed) or 499 (the client left)
            return StreamingResponse(
                _stream(request, service, ticket, queue, req, prompt, rid, created, chat, endpoint),
                media_type="text/event-stream",
            )
        result = await _wait(request, ticket, queue)
        if result is None:  # the client went away; its work was cancelled
            service.metrics.requests.labels(endpoint, "499").inc()
            return JSONResponse({"error": {"message": "client disconnected", "type": "cancelled"}}, status_code=499)
        if isinstance(result, BaseException):
            service.metrics.requests.labels(endpoint, "500").inc()
            return JSONResponse(
                {
                    "error": {
                        "message": f"a backend failed: {_short(result)}",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                },
                status_code=500,
            )
        service.metrics.requests.labels(endpoint, "200").inc()
        finish = FINISH[result.finish]
        usage = service.usage(prompt, result).to_json()
        if chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": result.solution},
                "finish_reason": finish,
                "logprobs": None,
            }
            return {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": service.served_name,
                "choices": [choice],
                "usage": usage,
            }
        choice = {"index": 0, "text": result.solution, "finish_reason": finish, "logprobs": None}
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": service.served_name,
            "choices": [choice],
            "usage": usage,
        }

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await complete(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await complete(request, chat=True)

    return app


async def _next(request: Request, ticket, queue: asyncio.Queue):
    """The next engine event for this request; None when the client disconnected first (its problem is then
    cancelled)."""
    while True:
        try:
            return await asyncio.wait_for(queue.get(), timeout=DISCONNECT_POLL_S)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                ticket.cancel()
                return None
            if ticket.done and ticket.error is not None:
                return ("error", ticket.error)


async def _wait(request: Request, ticket, queue: asyncio.Queue):
    while True:
        event = await _next(request, ticket, queue)
        if event is None:
            return None
        if event[0] in ("done", "error"):  # the result, or the exception that ended it
            return event[1]


def _sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


async def _stream(
    request: Request,
    service: Service,
    ticket,
    queue: asyncio.Queue,
    req,
    prompt: str,
    rid: str,
    created: int,
    chat: bool,
    endpoint: str,
):
    name = service.served_name
    sep = service.config.separator
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, finish: str | None, first: bool = False) -> dict:
        if chat:
            delta = {} if text is None else ({"role": "assistant", "content": text} if first else {"content": text})
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        return {"id": rid, "object": obj, "created": created, "model": name, "choices": [choice]}

    first, status = True, "499"
    try:
        while True:
            event = await _next(request, ticket, queue)
            if event is None:
                return
            kind = event[0]
            if kind == "step":
                step = event[2]
                yield _sse(dict(chunk(step.context_text(sep), None, first), arbitrage=_step_details(event[1])))
                first = False
            elif kind == "done":
                result = event[1]
                yield _sse(
                    dict(
                        chunk(None if chat else "", FINISH[result.finish]),
                        arbitrage={
                            "finish": result.finish,
                            "latency_s": round(result.latency_s, 6),
                            "seconds": {k: round(v, 6) for k, v in result.seconds.items() if v},
                        },
                    )
                )
                if req.include_usage:
                    yield _sse(
                        {
                            "id": rid,
                            "object": obj,
                            "created": created,
                            "model": name,
                            "choices": [],
                            "usage": service.usage(prompt, result).to_json(),
                        }
                    )
                yield "data: [DONE]\n\n"
                status = "200"
                return
            else:
                status = "500"
                yield _sse(
                    {
                        "error": {
                            "message": f"a backend failed: {_short(event[1])}",
                            "type": "server_error",
                            "param": None,
                            "code": None,
                        }
                    }
                )
                return
    finally:  # the client closed the stream (or the server is shutting down): stop this problem's work
        service.metrics.requests.labels(endpoint, status).inc()
        if not ticket.done:
            ticket.cancel()


def _servable_policies(service: Service) -> list[dict]:
    """The registered policies whose models this server loaded, with their threshold ranges and defaults."""
    out = []
    for name, cls in registry().policies.items():
        if any(getattr(service.models, role, None) is None for role in cls.needs):
            continue
        lo_hi = cls.threshold_range
        out.append(
            {
                "name": name,
                "summary": cls.summary,
                "threshold_range": list(lo_hi) if lo_hi else None,
                "default_threshold": cls.default_threshold,
            }
        )
    return out


def _scalar(v):
    """A score as JSON can carry it: a finite number (or a string / bool / None); lists and NaN are dropped."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)) and math.isfinite(v):
        return v
    return None


def _step_details(record) -> dict:
    """What a streamed step's chunk says beside its text (records.StepRecord): who wrote it, whether the policy
    escalated, the scores it decided on, the proposals not kept, its tokens, seconds and speculation counts."""

    def proposal(p):
        return None if p is None else {"text": p.text, "stop": p.stop, "n_tokens": p.n_tokens}

    return {
        "index": record.index,
        "author": record.author,
        "escalated": bool(record.escalated),
        "stop": record.stop,
        "n_tokens": record.n_tokens,
        "scores": {k: _scalar(v) for k, v in record.scores.items() if not isinstance(v, (list, dict))},
        "draft": proposal(record.draft) if record.author != "draft" else None,
        "target": proposal(record.target) if record.author != "target" else None,
        "discarded_draft_tokens": record.discarded_draft_tokens,
        "seconds": dict(record.seconds),
        "speculation": record.speculation,
    }


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with a 413 past `limit` bytes (by its Content-Length before reading, else while
    reading), so a huge request costs no memory."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"the request body is {declared} bytes; this server takes at most {limit}", None, 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"the request body is over {limit} bytes, the most this server takes", None, 413)
        chunks.append(chunk)
    return b"".join(chunks)
