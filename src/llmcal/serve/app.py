"""The HTTP layer: ``create_app(answerer, ...)`` -> a FastAPI app.

=========================  ==============================================================
``POST /v1/chat/completions``  OpenAI's chat.completion (or, with ``stream``, its SSE chunks),
                               plus a ``confidence`` object; ``n``, ``logprobs``
``GET /v1/models``             the one model served, as OpenAI lists models
``POST /v1/ask``               ``{question, choices?}`` -> ``{id, answer, confidence, ...}``
``POST /admin/reload``         re-read the run's calibration and serve it (hot reload; also SIGHUP)
``GET /health``                model, calibration, queue; no key needed (no paths, no URLs)
``GET /``                      the web page (``page.html``, self-contained)
=========================  ==============================================================

OpenAI compatibility: the model's answer is always the message ``content``; whether the policy
abstains is in the ``confidence`` object (``abstained``), so a client that ignores it still gets
the answer.  ``policy: "refuse"`` (per request, or the server's default) replaces the content of
an abstained answer with the safe refusal.  ``confidence_threshold`` sets one request's abstain
threshold.  After every answer ``on_answer`` gets an :class:`~llmcal.serve.events.AnswerEvent`
(one per choice), and ``extra_routers`` (the answer log's feedback and dashboard) are mounted.

Errors use OpenAI's shape, ``{"error": {"message", "type", "code"}}``: 400 for what the
model cannot do with a well-formed request, 502 when an upstream server fails or answers
something llmcal cannot use (naming the upstream), 504 past the request deadline.
Limits, in the order they are checked: the ``Host`` header (400 unless in
``allowed_hosts``, when given: DNS rebinding), the API key (401; ``Authorization: Bearer
KEY`` or ``X-API-Key: KEY``, compared in constant time), the body size (413 from
``Content-Length`` before the body is read), the body's shape (422, pydantic), the prompt's
length in characters (413), and the queue: the model runs on one worker thread; a request
that would make more than ``max_queue`` wait behind the running one is answered 503 with
``Retry-After`` (seconds, from the recent service time) instead of piling up.

Nothing can wedge the worker for long (:class:`ModelQueue`): every request has a deadline
(``request_timeout`` seconds from its arrival, waiting included: 504 after it, and a request
whose deadline passed while it waited never runs), and a request whose client has gone away
(``request.is_disconnected()``, checked while it waits and again just before the model
starts) leaves the queue without running.  A model call already running cannot be
interrupted; it finishes in the background and holds the worker until then, so the queue
stays honest about the work in hand.

Every response carries security headers (:data:`SECURITY_HEADERS`: a Content-Security-Policy
that allows only the page's own inline script and style and same-origin requests,
``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
no-referrer``); every model response carries ``Server-Timing: model;dur=...,
confidence;dur=...``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import math
import re
import signal
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmcal.backends.openai.retry import APIError
from llmcal.serve.answerer import MAX_OPTIONS, DeadlineExceeded, Query, Reply
from llmcal.serve.events import AnswerEvent

log = logging.getLogger("llmcal.serve")

PAGE = Path(__file__).with_name("page.html")
MAX_NEW_TOKENS = 512
MAX_SAMPLES = 16
#: Most choices one chat completion may ask for (``n``).
MAX_CHOICES = 8
#: Most alternatives per token with ``logprobs`` (OpenAI's limit).
MAX_TOP_LOGPROBS = 20
#: What an abstained answer's content is: ``answer`` = the model's answer (OpenAI-compatible; the
#: confidence object says it abstained), ``refuse`` = the safe refusal.
POLICIES = ("answer", "refuse")
#: ``seed`` is a 32-bit unsigned number less the samples that follow it (sample ``s`` uses ``seed + s``).
MAX_SEED = 2**32 - 1 - (MAX_SAMPLES + 1)
#: Seconds a request may take from its arrival (waiting for the worker included) before it is answered 504.
REQUEST_TIMEOUT = 60.0
#: Host names a loopback server answers to (``allowed_hosts``; anything else is refused: DNS rebinding).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

_CSP = ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# FastAPI's /docs and /redoc load their assets from a CDN
_DOCS_CSP = ("default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
             "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; img-src 'self' data: https:; "
             "connect-src 'self'; worker-src blob:; base-uri 'none'; frame-ancestors 'none'")
#: Sent with every response (``/docs`` and ``/redoc`` get a CSP that allows FastAPI's CDN).
SECURITY_HEADERS = {
    "content-security-policy": _CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
}


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty or only spaces")
    return text


NonBlank = Annotated[str, AfterValidator(_not_blank)]


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
    seed: int = Field(0, ge=0, le=MAX_SEED)
    samples: int = Field(0, ge=0, le=MAX_SAMPLES,
                         description="llmcal: free form only, this many extra sampled answers become the "
                                     "alternatives (distinct answers with their frequency)")
    confidence: bool = Field(True, description="llmcal: false = the plain answer, no confidence object")
    confidence_threshold: float | None = Field(None, ge=0.0, le=1.0,
                                               description="llmcal: abstain below this (default: the server's)")
    policy: Literal["answer", "refuse"] | None = Field(
        None, description="llmcal: what an abstained answer's content is: the model's answer (answer) or the "
                          "safe refusal (refuse); default: the server's --policy")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatRequest(_Common):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    options: list[NonBlank] | None = Field(None, min_length=2, max_length=MAX_OPTIONS,
                                      description="llmcal: multiple choice; the question is the last user "
                                                  "message and the answer is one of these")


class AskRequest(_Common):
    question: NonBlank = Field(min_length=1)
    choices: list[NonBlank] | None = Field(None, min_length=2, max_length=MAX_OPTIONS)


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


def _host_name(host: str) -> str:
    """``"127.0.0.1:8000"`` -> ``"127.0.0.1"``, ``"[::1]:8000"`` -> ``"::1"``, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class _Guard:
    """ASGI middleware (pure, so that ``request.is_disconnected()`` sees the real connection):
    the security headers on every response, the ``Host`` check, and on ``/v1/*`` and ``/admin/*`` the
    API key and the ``Content-Length`` limit, all before the body is read."""

    def __init__(self, app, key: bytes | None, max_body: int, allowed_hosts: tuple[str, ...] | None) -> None:
        self.app = app
        self.key = key
        self.max_body = int(max_body)
        self.allowed_hosts = allowed_hosts

    def authorized(self, headers: Headers) -> bool:
        """A request that carries the key (always True when the server has none)."""
        if self.key is None:
            return True
        auth = headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self.key)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        csp = _DOCS_CSP if path in ("/docs", "/redoc") else _CSP

        async def secured(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = csp if name == "content-security-policy" else value
            await send(message)

        headers = Headers(scope=scope)
        refusal = None
        if self.allowed_hosts is not None and "*" not in self.allowed_hosts:
            host = _host_name(headers.get("host", ""))
            if host not in self.allowed_hosts:
                refusal = _error(400, f"Host {host or '(none)'!r} is not served here (allowed: "
                                      f"{', '.join(self.allowed_hosts)}; llmcal serve --allowed_hosts)",
                                 "invalid_request_error", "host_not_allowed")
        if refusal is None and path.startswith(("/v1/", "/admin/")):
            if not self.authorized(headers):
                refusal = _error(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                                 "invalid_request_error", "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            else:
                length = headers.get("content-length")
                if length is not None and length.isdigit() and int(length) > self.max_body:
                    refusal = _error(413, f"request body of {length} bytes is over the limit of {self.max_body}",
                                     "invalid_request_error", "body_too_large")
        if refusal is not None:
            return await refusal(scope, receive, secured)
        await self.app(scope, receive, secured)


class _Refused(Exception):
    def __init__(self, response: JSONResponse) -> None:
        self.response = response


# ------------------------------------------------------------------ the worker
class _Gone(Exception):
    """The client went away before its answer was ready."""


class _Late(Exception):
    """The request's deadline passed (``running``: while the model was working on it)."""

    def __init__(self, running: bool) -> None:
        self.running = running


class _Job:
    __slots__ = ("turn", "holds")

    def __init__(self) -> None:
        self.turn = asyncio.Event()  # set when this job may use the worker
        self.holds = False  # it holds the worker (until released)


class ModelQueue:
    """One worker thread for the model; at most ``max_queue`` requests wait behind the running one.

    The waiting line is FIFO and lives on the event loop: a request leaves it when its deadline
    passes (504) or its client disconnects, without ever reaching the model; both are checked
    again at the moment its turn comes, before the model starts.  ``poll_s``: how often a waiting
    or running request looks at its deadline and its connection.
    """

    def __init__(self, max_queue: int, poll_s: float = 0.05) -> None:
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        if not poll_s > 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s}")
        self.max_queue = int(max_queue)
        self.poll_s = float(poll_s)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmcal-model")
        self._waiting: deque[_Job] = deque()  # touched only on the event loop
        self._busy = False
        self.served = 0
        self.rejected = 0
        self.timed_out = 0
        self.abandoned = 0  # clients that left: dropped before the model ran, or the answer discarded
        self.avg_s = 0.5  # recent service time (exponential average), for Retry-After

    @property
    def in_flight(self) -> int:
        """Running (or finishing for a client that left) + waiting."""
        return len(self._waiting) + int(self._busy)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def retry_after(self) -> int:
        return max(1, math.ceil(self.avg_s * max(self.in_flight, 1)))

    def stats(self) -> dict[str, int]:
        return {"in_flight": self.in_flight, "max_queue": self.max_queue, "served": self.served,
                "rejected": self.rejected, "timed_out": self.timed_out, "abandoned": self.abandoned}

    def _next(self) -> None:
        while not self._busy and self._waiting:
            job = self._waiting.popleft()
            self._busy = job.holds = True
            job.turn.set()

    def _release(self, job: _Job) -> None:
        if job.holds:
            job.holds = False
            self._busy = False
            self._next()

    def _leave(self, job: _Job) -> None:
        if job in self._waiting:
            self._waiting.remove(job)
        self._release(job)

    @staticmethod
    def _late(deadline: float | None) -> bool:
        return deadline is not None and time.monotonic() >= deadline

    def _timeout(self, deadline: float | None) -> float:
        return self.poll_s if deadline is None else max(0.0, min(self.poll_s, deadline - time.monotonic()))

    async def run(self, fn, *args, deadline: float | None = None,
                  gone: Callable[[], Awaitable[bool]] | None = None):
        """``fn(*args)`` on the worker; :class:`_Late` after ``deadline`` (``time.monotonic()``),
        :class:`_Gone` when ``gone()`` says the client left, 503 (:class:`_Refused`) when full."""
        if self.in_flight > self.max_queue:  # one running and max_queue waiting already
            self.rejected += 1
            raise _Refused(_error(503, f"the server is busy ({self.in_flight - 1} requests waiting, the limit is "
                                       f"{self.max_queue}); retry later", "server_busy", "queue_full",
                                  headers={"Retry-After": str(self.retry_after())}))
        job = _Job()
        self._waiting.append(job)
        self._next()
        turn = asyncio.ensure_future(job.turn.wait())
        try:
            while not job.turn.is_set():
                await asyncio.wait({turn}, timeout=self._timeout(deadline))
                if job.turn.is_set():
                    break
                if self._late(deadline):
                    raise _Late(running=False)
                if gone is not None and await gone():
                    raise _Gone()
            # our turn: look once more before the model starts
            if self._late(deadline):
                raise _Late(running=False)
            if gone is not None and await gone():
                raise _Gone()
        except BaseException as err:
            turn.cancel()
            self._leave(job)
            if isinstance(err, _Late):
                self.timed_out += 1
            elif isinstance(err, _Gone):
                self.abandoned += 1
            raise
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        fut = loop.run_in_executor(self.executor, fn, *args)

        def finished(f: asyncio.Future) -> None:
            self.avg_s = 0.8 * self.avg_s + 0.2 * (time.perf_counter() - t0)
            if not f.cancelled():
                f.exception()  # retrieved: a request that left must not log "never retrieved"
            self._release(job)

        fut.add_done_callback(finished)  # before anyone awaits it: released before the caller resumes
        while True:
            done, _ = await asyncio.wait({fut}, timeout=self._timeout(deadline))
            if done:
                out = fut.result()
                self.served += 1
                return out
            if self._late(deadline):
                self.timed_out += 1
                raise _Late(running=True)
            if gone is not None and await gone():
                self.abandoned += 1
                raise _Gone()


def _public(text: Any) -> Any:
    """``text`` without URLs or folder paths (for callers without the key): ``"m (via http://h/v1)"`` ->
    ``"m"``, ``"/models/qwen"`` -> ``"qwen"``, ``"org/name"`` -> ``"name"``."""
    if not isinstance(text, str):
        return text
    text = re.sub(r"\s*\(via [^)]*\)", "", text)
    text = re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://\S*", "<url>", text)
    # any word with a slash in it is a path (or an org/name id): its last part only
    return re.sub(r"[^\s/\\]*[/\\]\S*", lambda m: re.split(r"[/\\]", m.group(0).rstrip("/\\"))[-1] or "<path>",
                  text)


def _scrub(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _scrub(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_scrub(v) for v in obj]
    return _public(obj)


# ------------------------------------------------------------------ the app
def create_app(answerer, api_key: str | None = None, max_prompt_chars: int = 8000, max_queue: int = 8,
               max_body_bytes: int | None = None, request_timeout: float | None = REQUEST_TIMEOUT,
               allowed_hosts: Iterable[str] | None = None, poll_s: float = 0.05, policy: str = "answer",
               on_answer: Callable[[AnswerEvent], None] | None = None, extra_routers: Iterable[Any] = (),
               reload_on_sighup: bool = False) -> FastAPI:
    """The FastAPI app around ``answerer`` (anything with ``answer(Query) -> Reply``, ``model_name``,
    ``describe()``, ``thresholds``, and ``reload() -> version`` for ``/admin/reload``).  ``api_key``:
    required on ``/v1/*`` and ``/admin/*`` when given (an empty one is refused).
    ``max_prompt_chars``: the question (all messages) and options together.  ``max_queue``: requests
    allowed to wait.  ``request_timeout``: seconds from arrival to answer (504 after; None = no
    deadline).  ``allowed_hosts``: the ``Host`` names served (None or ``"*"``: any).  ``policy``: the
    default for requests that name none (:data:`POLICIES`).  ``on_answer``: called with one
    :class:`AnswerEvent` per answer (its failure is logged, never the client's).  ``extra_routers``:
    FastAPI ``APIRouter``s to include.  ``reload_on_sighup``: SIGHUP = ``POST /admin/reload``."""
    if api_key is not None and not str(api_key).strip():
        raise ValueError("the API key is empty: give a key, or none to serve without one")
    if request_timeout is not None and not request_timeout > 0:
        raise ValueError(f"request_timeout must be > 0 seconds (or None), got {request_timeout}")
    if policy not in POLICIES:
        raise ValueError(f"policy: {policy!r} is not one of {', '.join(POLICIES)}")
    queue = ModelQueue(max_queue, poll_s=poll_s)
    started = int(time.time())

    async def reload_calibration() -> dict[str, str]:
        """``answerer.reload()`` off the event loop and off the model worker: answers keep flowing."""
        before = answerer.describe().get("calibration_version")
        version = await asyncio.to_thread(answerer.reload)
        log.info("llmcal serve: calibration reloaded: %s -> %s", before, version)
        return {"calibration_version": version, "previous": before}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task] = set()
        hup = getattr(signal, "SIGHUP", None)
        if reload_on_sighup and hup is not None:
            def on_hup() -> None:
                async def go() -> None:
                    try:
                        await reload_calibration()
                    except Exception as err:  # noqa: BLE001 - a failed reload keeps the old calibration
                        log.error("llmcal serve: SIGHUP reload failed, the old calibration stays: %s", err)
                task = loop.create_task(go())
                reloads.add(task)  # held until done (the loop keeps only a weak reference)
                task.add_done_callback(reloads.discard)

            loop.add_signal_handler(hup, on_hup)
        try:
            yield
        finally:
            if reload_on_sighup and hup is not None:
                loop.remove_signal_handler(hup)
            queue.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="llmcal", description="A language model with calibrated, presentable confidence.",
                  version="1", lifespan=lifespan)
    key = api_key.encode() if api_key else None
    max_body = max_body_bytes or (16 * max_prompt_chars + 65536)  # JSON escapes can take 6 bytes a character
    hosts = None if allowed_hosts is None else tuple(_host_name(h) if h != "*" else h for h in allowed_hosts)
    app.add_middleware(_BodyLimit, limit=max_body)
    app.add_middleware(_Guard, key=key, max_body=max_body, allowed_hosts=hosts)  # outermost
    guard = _Guard(None, key, max_body, hosts)  # for authorized()
    app.state.queue = queue
    app.state.answerer = answerer
    for router in extra_routers:
        app.include_router(router)

    @app.exception_handler(_Refused)
    async def refused(_request: Request, exc: _Refused):
        return exc.response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        code = {401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):  # FastAPI: e.g. JSON nested too deep
            return _error(422, "body: not JSON that can be read (nested too deeply?)", "invalid_request_error",
                          "invalid_body")
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

    def deadline() -> float | None:
        return None if request_timeout is None else time.monotonic() + request_timeout

    def late(running: bool) -> _Refused:
        what = ("the model was still working on it; its answer is dropped" if running
                else "it was still waiting for the model, and was dropped without running")
        return _Refused(_error(504, f"the request did not finish within {request_timeout:g} s (the server's "
                                    f"request timeout; {what}); retry later or ask for less", "timeout",
                               "request_timeout", headers={"Retry-After": str(queue.retry_after())}))

    def answer_all(queries: list[Query]) -> list[Reply]:
        """On the model worker: one reply per query; a deterministic request (multiple choice, or greedy)
        gets the same answer for every choice, so the model runs once."""
        first = answerer.answer(queries[0])
        if queries[0].options is not None or queries[0].temperature == 0:
            return [first] * len(queries)
        return [first] + [answerer.answer(q) for q in queries[1:]]

    async def run(q: Query, request: Request, n: int = 1) -> tuple[list[Reply], dict[str, str]]:
        """``n`` answers to ``q`` (choice ``i`` samples with seed ``seed + 17 i``) through the queue."""
        queries = [q] + [dataclasses.replace(q, seed=(q.seed + i * (MAX_SAMPLES + 1)) % (MAX_SEED + 1))
                         for i in range(1, n)]
        try:
            replies = await queue.run(answer_all, queries, deadline=q.deadline, gone=request.is_disconnected)
        except (_Late, _Gone) as err:
            q.cancelled.set()  # a model call still running makes no further ones for this request
            if isinstance(err, _Gone):
                raise _Refused(_error(499, "the client closed the connection", "client_closed",
                                      "client_closed")) from None
            raise late(err.running) from None
        except DeadlineExceeded:
            raise late(True) from None
        except APIError as err:  # the upstream server failed (after its retries), or answered nonsense
            raise _Refused(_error(502, f"the upstream server failed: {err}", "upstream_error", "bad_gateway")) from None
        except ValueError as err:  # what the model cannot do with this request
            raise _Refused(_error(400, str(err), "invalid_request_error", "unsupported")) from None
        except _Refused:
            raise
        except Exception as err:  # noqa: BLE001 - a bug or a model failure: a clear 500, never a traceback
            log.exception("llmcal serve: the model failed on a request")
            raise _Refused(_error(500, f"the model failed on this request ({type(err).__name__}); see the server "
                                       "log", "server_error", "internal_error")) from None
        timing = ", ".join(f"{k};dur={v}" for k, v in replies[0].timing_ms.items())
        return replies, ({"Server-Timing": timing} if timing else {})

    def public_name() -> str:
        return _public(answerer.model_name)

    def confidence_of(reply: Reply, event_id: str) -> dict[str, Any] | None:
        conf = reply.confidence_dict()
        return None if conf is None else {"id": event_id, **conf}

    def tell(q: Query, reply: Reply, event_id: str, t0: float) -> None:
        """``on_answer`` with this answer's event; a listener's failure is logged, never the client's."""
        if on_answer is None:
            return
        d = reply.decision
        thresholds = reply.thresholds or q.thresholds_for(answerer.thresholds)
        try:
            on_answer(AnswerEvent(
                id=event_id, created=time.time(), question=q.question, answer=reply.model_answer,
                confidence=None if d is None else float(d.score), level="" if d is None else d.level,
                abstained=reply.abstained, threshold=float(thresholds.abstain), signals=reply.signals,
                calibration_version=reply.calibration_version, model_fingerprint=reply.model_fingerprint,
                latency_ms=round(1000.0 * (time.perf_counter() - t0), 3), run=reply.run))
        except Exception:  # noqa: BLE001 - the answer log must never fail an answer
            log.exception("llmcal serve: on_answer failed for %s (the client got its answer)", event_id)

    def query(body: _Common, question: str, options: list[str] | None, max_tokens: int, **extra: Any) -> Query:
        return Query(question=question, options=options, max_tokens=max_tokens, temperature=body.temperature,
                     samples=body.samples, seed=body.seed, confidence=body.confidence, deadline=deadline(),
                     threshold=body.confidence_threshold, **extra)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    async def health(request: Request):
        """Open to all, without folder paths or upstream URLs; those only with the key (when one is set)."""
        full = key is not None and guard.authorized(request.headers)
        calibration = answerer.describe()
        return {"status": "ok", "model": answerer.model_name if full else public_name(), "auth": key is not None,
                "policy": policy, "queue": queue.stats(),
                "limits": {"max_prompt_chars": max_prompt_chars, "max_tokens": MAX_NEW_TOKENS,
                           "max_options": MAX_OPTIONS, "max_samples": MAX_SAMPLES, "max_choices": MAX_CHOICES,
                           "request_timeout_s": request_timeout},
                "calibration": calibration if full else _scrub(calibration)}

    @app.get("/v1/models")
    async def models():
        """OpenAI's model list: the one model served."""
        return {"object": "list", "data": [{"id": public_name(), "object": "model", "created": started,
                                            "owned_by": "llmcal"}]}

    @app.post("/admin/reload")
    async def reload():
        """Re-read the run folder's calibration and serve it from the next answer on (no request is dropped)."""
        try:
            return await reload_calibration()
        except (ValueError, OSError) as err:
            return _error(400, f"reload failed, the old calibration stays in use: {err}", "invalid_request_error",
                          "reload_failed")

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        t0 = time.perf_counter()
        texts = [m.text() for m in body.messages]
        check_size(texts + list(body.options or []))
        users = [t for m, t in zip(body.messages, texts) if m.role == "user"]
        if not users or not users[-1].strip():
            return _error(422, "messages: need a user message with text", "invalid_request_error", "invalid_body")
        if body.top_logprobs and not body.logprobs:
            return _error(422, "top_logprobs: needs logprobs: true", "invalid_request_error", "invalid_body")
        q = query(body, users[-1], body.options, body.max_completion_tokens or body.max_tokens or 64,
                  messages=[{"role": m.role, "content": t} for m, t in zip(body.messages, texts)],
                  logprobs=body.logprobs, top_logprobs=body.top_logprobs or 0)
        replies, headers = await run(q, request, body.n)
        refuse = (body.policy or policy) == "refuse"
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        ids = [cid] + [f"{cid}-{i}" for i in range(1, len(replies))]
        created = int(time.time())
        choices = []
        for i, (reply, event_id) in enumerate(zip(replies, ids)):
            choice: dict[str, Any] = {
                "index": i, "message": {"role": "assistant", "content": reply.content(refuse)},
                "logprobs": None if reply.logprobs is None else {"content": reply.logprobs, "refusal": None},
                "finish_reason": reply.finish_reason}
            conf = confidence_of(reply, event_id)
            if conf is not None:
                choice["confidence"] = conf
            choices.append(choice)
        prompt_tokens = replies[0].prompt_tokens
        completion_tokens = sum(r.completion_tokens for r in replies)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        head = {"id": cid, "created": created, "model": public_name()}
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            response = _stream(head, choices, usage if include_usage else None, headers)
        else:
            out: dict[str, Any] = {**head, "object": "chat.completion", "choices": choices, "usage": usage}
            if "confidence" in choices[0]:
                out["confidence"] = choices[0]["confidence"]  # choice 0's, where n = 1 clients look
            response = _respond(out, headers)
        if response.status_code == 200:
            for reply, event_id in zip(replies, ids):
                tell(q, reply, event_id, t0)
        return response

    @app.post("/v1/ask")
    async def ask(body: AskRequest, request: Request):
        t0 = time.perf_counter()
        check_size([body.question] + list(body.choices or []))
        q = query(body, body.question, body.choices, body.max_tokens or 64)
        (reply,), headers = await run(q, request)
        event_id = f"chatcmpl-{uuid.uuid4().hex}"
        out = {"id": event_id, "question": body.question, "choices": body.choices,
               "answer": reply.content((body.policy or policy) == "refuse"), "model_answer": reply.model_answer,
               "model": public_name(), "confidence": confidence_of(reply, event_id)}
        response = _respond(out, headers)
        if response.status_code == 200:
            tell(q, reply, event_id, t0)
        return response

    return app


def _stream(head: dict[str, Any], choices: list[dict[str, Any]], usage: dict[str, int] | None,
            headers: dict[str, str]) -> StreamingResponse | JSONResponse:
    """The answer as OpenAI's ``chat.completion.chunk`` server-sent events: for each choice its role, its
    content (with its ``logprobs``) and a last chunk with the ``finish_reason`` and the ``confidence``
    object (there and at the chunk's top level); then the usage (``stream_options.include_usage``) and
    ``data: [DONE]``.  The answer is complete before the first chunk (its confidence needs all of it),
    so an error is still an ordinary JSON error, and a chunk that cannot be encoded is a 500 before
    anything is sent."""
    def chunk(choice: dict[str, Any] | None, **extra: Any) -> str:
        body = {**head, "object": "chat.completion.chunk", "choices": [] if choice is None else [choice], **extra}
        return f"data: {json.dumps(body, allow_nan=False)}\n\n"

    try:
        events = []
        for c in choices:
            i = c["index"]
            events.append(chunk({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                 "finish_reason": None}))
            events.append(chunk({"index": i, "delta": {"content": c["message"]["content"]}, "logprobs": c["logprobs"],
                                 "finish_reason": None}))
            last = {"index": i, "delta": {}, "logprobs": None, "finish_reason": c["finish_reason"]}
            conf = {"confidence": c["confidence"]} if "confidence" in c else {}
            events.append(chunk({**last, **conf}, **conf))
        if usage is not None:
            events.append(chunk(None, usage=usage))
    except (TypeError, ValueError) as err:
        log.error("llmcal serve: a streamed answer could not be encoded: %s", err)
        return _error(500, f"the answer could not be encoded as JSON ({err})", "server_error", "internal_error")
    events.append("data: [DONE]\n\n")

    async def send():
        for event in events:
            yield event

    return StreamingResponse(send(), media_type="text/event-stream",
                             headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _respond(out: dict[str, Any], headers: dict[str, str]) -> JSONResponse:
    """``out`` as JSON; a value JSON cannot carry (NaN from a broken calibrator) is a clear 500."""
    try:
        return JSONResponse(out, headers=headers)
    except (TypeError, ValueError) as err:
        log.error("llmcal serve: a response could not be encoded: %s", err)
        return _error(500, f"the answer could not be encoded as JSON ({err})", "server_error", "internal_error")


def _jsonable(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """pydantic's error list without the input (which may be huge) or ``ctx`` (which may hold exceptions)."""
    return [{"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in errors]
