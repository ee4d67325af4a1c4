"""POST JSON to an HTTP API with timeouts, bounded retries and clear errors.

A remote model server fails in two ways that need different answers:

* *transient* -- a refused or dropped connection, a timeout, ``429 Too Many
  Requests``, ``408``/``425`` or any ``5xx``: wait and try again, with
  exponential backoff and full jitter (AWS architecture blog, "Exponential
  backoff and jitter", 2015: the delay is uniform in ``[0, min(cap, base *
  2**attempt)]``, so clients that failed together do not retry together), and
  never sooner than the server's ``Retry-After`` when it sends one;
* *permanent* -- any other ``4xx`` (a wrong model name, a bad parameter, a
  missing API key): retrying cannot help, so it raises at once.

Either way the error names the URL and, for an HTTP answer, the status and
the start of the body, so a user can tell a typo in ``base_url`` from an
overloaded server.  After the last retry :class:`ServerUnavailable` is raised;
callers (``pipeline/measure.py``) let it propagate so that finished work is
kept and a later run resumes.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_BODY_CHARS = 500  # how much of an error body goes into the message


class APIError(ConnectionError):
    """A model server failed us (a ``ConnectionError``, so the CLI reports it in one line)."""


class ServerError(APIError):
    """The server answered with a status that retrying cannot fix (most 4xx)."""

    def __init__(self, url: str, status: int, body: str) -> None:
        self.url, self.status, self.body = url, status, body
        super().__init__(f"{url}: HTTP {status}: {body[:_BODY_CHARS]}")


class ServerUnavailable(APIError):
    """The server could not be reached, or kept failing, through every retry."""

    def __init__(self, url: str, attempts: int, last: str) -> None:
        self.url, self.attempts, self.last = url, attempts, last
        super().__init__(f"{url}: no answer after {attempts} attempt(s); last error: {last}")


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait and how often to retry.

    ``max_retries`` retries follow the first attempt; the n-th waits a random
    time in ``[0, min(max_delay, base_delay * 2**n)]``, or ``Retry-After``
    (capped at ``max_retry_after``) when the server asks for longer.
    """

    max_retries: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 120.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.max_delay, self.base_delay * (2.0 ** attempt)))


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` header: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


async def post_json(
    client,
    url: str,
    payload: dict[str, Any],
    policy: RetryPolicy = RetryPolicy(),
    *,
    headers: dict[str, str] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> dict[str, Any]:
    """POST ``payload`` as JSON with ``client`` (an ``httpx.AsyncClient``); return the JSON answer.

    Raises :class:`ServerError` at once on a non-retryable status (or a body
    that is not JSON), :class:`ServerUnavailable` when every attempt failed.
    """
    import httpx

    rng = rng or random.Random()
    last = "nothing tried"
    for attempt in range(policy.max_retries + 1):
        wait_at_least = 0.0
        try:
            resp = await client.post(url, json=payload, headers=headers)
        except (httpx.TransportError, httpx.TimeoutException) as err:  # refused, reset, timed out
            last = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        else:
            if resp.status_code < 400:
                try:
                    return resp.json()
                except ValueError as err:
                    raise ServerError(url, resp.status_code, f"not JSON ({err}): {resp.text}") from None
            if resp.status_code not in RETRYABLE_STATUS:
                raise ServerError(url, resp.status_code, resp.text)
            last = f"HTTP {resp.status_code}: {resp.text[:_BODY_CHARS]}"
            wait_at_least = min(policy.max_retry_after,
                                retry_after_seconds(resp.headers.get("retry-after")) or 0.0)
        if attempt < policy.max_retries:
            await sleep(max(wait_at_least, policy.backoff(attempt, rng)))
    raise ServerUnavailable(url, policy.max_retries + 1, last)
