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
import math
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


class BadBody(ValueError):
    """A 2xx answer whose body is not what an OpenAI-compatible server sends (retried like a 5xx)."""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_body(data: Any, max_depth: int = 64) -> None:
    """Refuse a body llmcal must never store: not a JSON object, a NaN or +inf anywhere, a
    log-probability that is not a number (``"logprob": "-0.5"``), or nesting deeper than
    ``max_depth``.  ``-inf`` is a log-probability (of an impossible token) and passes."""
    if not isinstance(data, dict):
        raise BadBody(f"the answer is a JSON {type(data).__name__}, not an object")
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        v, path, depth = stack.pop()
        if depth > max_depth:
            raise BadBody(f"the answer nests deeper than {max_depth} levels at {path}")
        if isinstance(v, float) and (math.isnan(v) or v == math.inf):
            raise BadBody(f"non-finite number {v!r} at {path or 'the top'}")
        if isinstance(v, dict):
            for k, x in v.items():
                where = f"{path}.{k}" if path else str(k)
                if k == "logprob" and x is not None and not _is_number(x):
                    raise BadBody(f"{where}: {x!r} is not a number")
                if k == "token_logprobs" and isinstance(x, list) and any(e is not None and not _is_number(e)
                                                                         for e in x):
                    raise BadBody(f"{where}: holds a log-probability that is not a number")
                if k == "top_logprobs" and isinstance(x, list):
                    for e in x:
                        if isinstance(e, dict) and "logprob" not in e and not all(_is_number(y) for y in e.values()):
                            raise BadBody(f"{where}: holds a log-probability that is not a number")
                stack.append((x, where, depth + 1))
        elif isinstance(v, list):
            stack.extend((x, f"{path}[{i}]", depth + 1) for i, x in enumerate(v))


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

    Raises :class:`ServerError` at once on a non-retryable status,
    :class:`ServerUnavailable` when every attempt failed (a 2xx body that is not
    JSON, not an object or holds a NaN counts as a failed attempt: :func:`check_body`).
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
                # a body that is not JSON, not an object, or holds NaN is a fault of that answer:
                # retried like a 5xx, never passed on (so never stored)
                try:
                    data = resp.json()
                    check_body(data)
                    return data
                except RecursionError:
                    last = f"HTTP {resp.status_code} with a body nested too deeply to read"
                except ValueError as err:
                    kind = "bad answer" if isinstance(err, BadBody) else "not JSON"
                    last = f"HTTP {resp.status_code} {kind} ({err}): {resp.text[:_BODY_CHARS]}"
            elif resp.status_code not in RETRYABLE_STATUS:
                raise ServerError(url, resp.status_code, resp.text)
            else:
                last = f"HTTP {resp.status_code}: {resp.text[:_BODY_CHARS]}"
                wait_at_least = min(policy.max_retry_after,
                                    retry_after_seconds(resp.headers.get("retry-after")) or 0.0)
        if attempt < policy.max_retries:
            await sleep(max(wait_at_least, policy.backoff(attempt, rng)))
    raise ServerUnavailable(url, policy.max_retries + 1, last)
