"""The HTTP side of the openai backend: one server, a bounded number of requests in flight.

:class:`Client` knows the server (``base_url``, the served ``model``, the API
key's environment variable) and how to talk to it: an ``httpx.AsyncClient``
per :meth:`Client.session`, at most ``concurrency`` requests in flight (an
``asyncio.Semaphore``), a ``timeout`` per request (wall-clock, the whole answer), and
:func:`~llmcal.backends.openai.retry.post_json`'s retries.  The API key is
read from the environment variable named by ``api_key_env`` (default
``OPENAI_API_KEY``), never from the command line.

The pipeline is synchronous; :func:`run_sync` runs a session's coroutine to
completion from synchronous code (in a thread when an event loop is already
running, as under a web server).
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Callable, Coroutine

from llmcal.backends.openai.retry import RetryPolicy, ServerError, ServerUnavailable, post_json


def run_sync(make: Callable[[], Coroutine]):
    """Run a coroutine to completion from synchronous code (in a thread when a loop is running)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = asyncio.run(make())
        except BaseException as err:  # re-raised in the caller's thread
            box["error"] = err

    th = threading.Thread(target=target)
    th.start()
    th.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def gather(coros: list[Coroutine]) -> list:
    """``asyncio.gather`` that cancels the rest when one fails (so a dead server stops the run at once)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class _WallClock:
    """An ``httpx.AsyncClient`` whose POSTs each end within ``seconds`` of wall-clock time however
    slowly the server drips its answer (httpx's timeouts are per read): a late one is an
    ``httpx.ReadTimeout``, retried like any other timeout."""

    def __init__(self, http, seconds: float) -> None:
        self._http, self._seconds = http, float(seconds)

    def __getattr__(self, name: str):
        return getattr(self._http, name)

    async def post(self, url, **kwargs):
        import httpx

        try:
            return await asyncio.wait_for(self._http.post(url, **kwargs), self._seconds)
        except asyncio.TimeoutError:
            raise httpx.ReadTimeout(f"no complete answer within {self._seconds:g} s (the timeout is for the "
                                    "whole request, not per read)") from None


class Client:
    """One OpenAI-compatible server: its URLs, the served model, and bounded, retried POSTs.

    ``base_url`` ends in ``/v1`` (``root_url`` is the server's root, where
    ``/tokenize`` lives); ``transport`` and ``sleep`` replace httpx's
    transport and ``asyncio.sleep`` in tests.
    """

    def __init__(self, base_url: str, model: str = "", api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, timeout: float = 60.0, retry: RetryPolicy | None = None,
                 transport=None, sleep=None) -> None:
        if int(concurrency) < 1:
            raise ValueError(f"concurrency: must be >= 1, got {concurrency}")
        self.base_url = str(base_url).rstrip("/")
        self.root_url = self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url
        self.model = str(model or "")
        self.api_key_env = str(api_key_env or "")
        self.concurrency = int(concurrency)
        self.timeout = float(timeout)
        self.retry = retry or RetryPolicy()
        self._transport = transport
        self._sleep = sleep or asyncio.sleep
        self._sem: asyncio.Semaphore | None = None
        self.requests_sent = 0

    def url(self, path: str) -> str:
        """``base_url`` + ``path`` (``"/completions"``, ``"/chat/completions"``)."""
        return f"{self.base_url}{path}"

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _http(self):
        import httpx

        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        return httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), limits=limits,
                                 headers=self._headers(), transport=self._transport)

    async def post(self, http, url: str, payload: dict) -> dict:
        """POST ``payload`` within the concurrency bound, with retries; the JSON answer."""
        assert self._sem is not None, "post() runs inside session()"
        async with self._sem:
            self.requests_sent += 1
            return await post_json(http, url, payload, self.retry, sleep=self._sleep)

    async def completion(self, http, payload: dict) -> dict:
        """``POST /completions`` for the served model."""
        return await self.post(http, self.url("/completions"), {"model": self.model, **payload})

    def session(self, body: Callable[[Any], Coroutine]):
        """Run ``body(http)`` in a fresh event loop with the concurrency bound; its result."""

        async def go():
            self._sem = asyncio.Semaphore(self.concurrency)
            async with self._http() as http:
                return await body(_WallClock(http, self.timeout))

        return run_sync(go)

    def list_models(self) -> list[str]:
        """The served model names (``GET /v1/models``)."""
        import httpx

        url = self.url("/models")

        async def go():
            async with self._http() as http:
                try:
                    r = await http.get(url)
                except httpx.HTTPError as err:
                    raise ServerUnavailable(url, 1, f"{type(err).__name__}: {err}") from err
                if r.status_code >= 400:
                    raise ServerError(url, r.status_code, r.text)
                return [str(m["id"]) for m in r.json().get("data", [])]

        names = run_sync(go)
        if not names:
            raise ServerError(url, 200, "the server lists no models; pass model=NAME")
        return names
