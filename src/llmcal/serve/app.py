"""The HTTP layer: ``create_app(answerer, ...)`` -> a FastAPI app.

=========================  ==============================================================
``POST /v1/chat/completions``  OpenAI's chat.completion, plus a ``confidence`` object
``POST /v1/ask``               ``{question, choices?}`` -> ``{answer, confidence, ...}``
``GET /health``                model, calibration, queue; no key needed
``GET /``                      the web page (``page.html``, self-contained)
=========================  ==============================================================

Errors use OpenAI's shape, ``{"error": {"message", "type", "code"}}``: 400 for what the
model cannot do with a well-formed request, 502 when an upstream server fails.
Limits, in the order they are checked: the API key (401; ``Authorization: Bearer KEY`` or
``X-API-Key: KEY``, compared in constant time), the body size (413 from
``Content-Length`` before the body is read), the body's shape (422, pydantic), the prompt's
length in characters (413), and the queue: the model runs on one worker thread; a request
that would make more than ``max_queue`` wait behind the running one is answered 503 with
``Retry-After`` (seconds, from the recent service time) instead of piling up.
Every model response carries ``Server-Timing: model;dur=..., confidence;dur=...``.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, Union

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmcal.backends.openai.retry import APIError
from llmcal.serve.answerer import MAX_OPTIONS, Query, Reply

PAGE = Path(__file__).with_name("page.html")
MAX_NEW_TOKENS = 512
MAX_SAMPLES = 16


# ------------------------------------------------------------------ request bodies
class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str = "text"
    text: str = ""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[ContentPart], None] = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if p.type == "text")


class _Common(BaseModel):
    """What both endpoints accept besides the question."""

    model_config = ConfigDict(extra="ignore")  # OpenAI clients send top_p, user, ... : accepted, unused
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    seed: int = 0
    samples: int = Field(0, ge=0, le=MAX_SAMPLES,
                         description="llmcal: free form only, this many extra sampled answers become the "
                                     "alternatives (distinct answers with their frequency)")
    confidence: bool = Field(True, description="llmcal: false = the plain answer, no confidence object")


class ChatRequest(_Common):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    n: int = Field(1, ge=1, le=1)
    stream: Literal[False] = False
    options: list[str] | None = Field(None, min_length=2, max_length=MAX_OPTIONS,
                                      description="llmcal: multiple choice; the question is the last user "
                                                  "message and the answer is one of these")


class AskRequest(_Common):
    question: str = Field(min_length=1)
    choices: list[str] | None = Field(None, min_length=2, max_length=MAX_OPTIONS)


# ------------------------------------------------------------------ errors
def _error(status: int, message: str, type_: str, code: str | None = None,
           headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """OpenAI's error shape: ``{"error": {"message", "type", "code"}}``."""
    return JSONResponse({"error": {"message": message, "type": type_, "code": code}, **extra},
                        status_code=status, headers=headers)


class _BodyLimit:
    """ASGI middleware: a body that grows past ``limit`` bytes while it is read is refused with 413
    (the ``Content-Length`` check cannot see chunked bodies)."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = int(limit)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b"")) if message["type"] == "http.request" else 0
            if seen > self.limit:
                raise HTTPException(413, f"request body over the limit of {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


class _Refused(Exception):
    def __init__(self, response: JSONResponse) -> None:
        self.response = response


# ------------------------------------------------------------------ the worker
class ModelQueue:
    """One worker thread for the model; at most ``max_queue`` requests wait behind the running one."""

    def __init__(self, max_queue: int) -> None:
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.max_queue = int(max_queue)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmcal-model")
        self.in_flight = 0  # running + waiting; touched only on the event loop
        self.served = 0
        self.rejected = 0
        self.avg_s = 0.5  # recent service time (exponential average), for Retry-After

    def retry_after(self) -> int:
        return max(1, math.ceil(self.avg_s * self.in_flight))

    async def run(self, fn, *args):
        if self.in_flight > self.max_queue:  # one running and max_queue waiting already
            self.rejected += 1
            raise _Refused(_error(503, f"the server is busy ({self.in_flight - 1} requests waiting, the limit is "
                                       f"{self.max_queue}); retry later", "server_busy", "queue_full",
                                  headers={"Retry-After": str(self.retry_after())}))
        self.in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            t0 = time.perf_counter()
            out = await loop.run_in_executor(self.executor, fn, *args)
            self.avg_s = 0.8 * self.avg_s + 0.2 * (time.perf_counter() - t0)
            self.served += 1
            return out
        finally:
            self.in_flight -= 1


# ------------------------------------------------------------------ the app
def create_app(answerer, api_key: str | None = None, max_prompt_chars: int = 8000, max_queue: int = 8,
               max_body_bytes: int | None = None) -> FastAPI:
    """The FastAPI app around ``answerer`` (anything with ``answer(Query) -> Reply``, ``model_name``,
    ``describe()``).  ``api_key``: required on ``/v1/*`` when set.  ``max_prompt_chars``: the
    question (all messages) and options together.  ``max_queue``: requests allowed to wait."""
    queue = ModelQueue(max_queue)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        queue.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="llmcal", description="A language model with calibrated, presentable confidence.",
                  version="1", lifespan=lifespan)
    key = api_key.encode() if api_key else None
    max_body = max_body_bytes or (16 * max_prompt_chars + 65536)  # JSON escapes can take 6 bytes a character
    app.add_middleware(_BodyLimit, limit=max_body)
    app.state.queue = queue
    app.state.answerer = answerer

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.url.path.startswith("/v1/"):
            if key is not None:
                auth = request.headers.get("authorization", "")
                given = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
                if not hmac.compare_digest(given.encode(), key):
                    return _error(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                                  "invalid_request_error", "invalid_api_key",
                                  headers={"WWW-Authenticate": "Bearer"})
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > max_body:
                return _error(413, f"request body of {length} bytes is over the limit of {max_body}",
                              "invalid_request_error", "body_too_large")
        return await call_next(request)

    @app.exception_handler(_Refused)
    async def refused(_request: Request, exc: _Refused):
        return exc.response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        code = {401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        return _error(exc.status_code, str(exc.detail), "invalid_request_error", code.get(exc.status_code),
                      headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return _error(422, f"{where or 'body'}: {first.get('msg', 'invalid request')}", "invalid_request_error",
                      "invalid_body", detail=_jsonable(errors))

    def check_size(texts: list[str]) -> None:
        n = sum(len(t) for t in texts)
        if n > max_prompt_chars:
            raise _Refused(_error(413, f"the prompt has {n} characters; the limit is {max_prompt_chars}",
                                  "invalid_request_error", "prompt_too_long"))

    async def run(q: Query) -> tuple[Reply, dict[str, str]]:
        try:
            reply = await queue.run(answerer.answer, q)
        except ValueError as err:  # what the model cannot do with this request
            raise _Refused(_error(400, str(err), "invalid_request_error", "unsupported")) from None
        except APIError as err:  # the upstream server failed (after its retries)
            raise _Refused(_error(502, f"the upstream server failed: {err}", "upstream_error", "bad_gateway")) from None
        timing = ", ".join(f"{k};dur={v}" for k, v in reply.timing_ms.items())
        return reply, ({"Server-Timing": timing} if timing else {})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": answerer.model_name, "auth": key is not None,
                "queue": {"in_flight": queue.in_flight, "max_queue": queue.max_queue, "served": queue.served,
                          "rejected": queue.rejected},
                "limits": {"max_prompt_chars": max_prompt_chars, "max_tokens": MAX_NEW_TOKENS,
                           "max_options": MAX_OPTIONS, "max_samples": MAX_SAMPLES},
                "calibration": answerer.describe()}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        texts = [m.text() for m in body.messages]
        check_size(texts + list(body.options or []))
        users = [t for m, t in zip(body.messages, texts) if m.role == "user"]
        if not users or not users[-1].strip():
            return _error(422, "messages: need a user message with text", "invalid_request_error", "invalid_body")
        q = Query(question=users[-1], options=body.options,
                  messages=[{"role": m.role, "content": t} for m, t in zip(body.messages, texts)],
                  max_tokens=body.max_completion_tokens or body.max_tokens or 64, temperature=body.temperature,
                  samples=body.samples, seed=body.seed, confidence=body.confidence)
        reply, headers = await run(q)
        out: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": answerer.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.content()},
                         "logprobs": None, "finish_reason": reply.finish_reason}],
            "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                      "total_tokens": reply.prompt_tokens + reply.completion_tokens},
        }
        conf = reply.confidence_dict()
        if conf is not None:
            out["confidence"] = conf
        return JSONResponse(out, headers=headers)

    @app.post("/v1/ask")
    async def ask(body: AskRequest):
        check_size([body.question] + list(body.choices or []))
        q = Query(question=body.question, options=body.choices, max_tokens=body.max_tokens or 64,
                  temperature=body.temperature, samples=body.samples, seed=body.seed, confidence=body.confidence)
        reply, headers = await run(q)
        out = {"question": body.question, "choices": body.choices, "answer": reply.content(),
               "model_answer": reply.model_answer, "model": answerer.model_name,
               "confidence": reply.confidence_dict()}
        return JSONResponse(out, headers=headers)

    return app


def _jsonable(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """pydantic's error list without the input (which may be huge) or ``ctx`` (which may hold exceptions)."""
    return [{"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in errors]
