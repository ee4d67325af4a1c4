"""What OpenAI-compatible servers send back, read into one shape.

Token log-probabilities arrive in two layouts:

* chat style (OpenAI chat, vLLM chat, Ollama, llama-cpp-python chat, and
  llama.cpp's server on *both* endpoints): ``logprobs.content[] = {token,
  logprob, bytes, top_logprobs: [{token, logprob}], id?}`` (``id`` from
  llama.cpp's server only);
* legacy completions (OpenAI, vLLM, llama-cpp-python ``/completions``):
  ``logprobs = {tokens, token_logprobs, top_logprobs: [{token: logprob} |
  null], text_offset}``.

:func:`parse_logprobs` turns either into a list of :class:`TokenLogprob`;
the rest of the backend reads only that.  Servers send no entropies:
:func:`topk_entropy` computes one from the top-k alternatives, renormalized.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from llmcal.backends.openai.retry import ServerError

GREEDY_TOL = 1e-6  # a token within this of its top-k's best counts as the argmax


@dataclass
class TokenLogprob:
    """One token of a response's ``logprobs``, whatever shape the server used."""

    token: str
    logprob: float | None
    top: list[tuple[str, float]] = field(default_factory=list)
    offset: int | None = None  # character offset in the returned text (legacy completions)
    token_id: int | None = None  # llama.cpp's server sends it


def _token_text(entry: dict) -> str:
    raw = entry.get("bytes")
    if isinstance(raw, list) and raw and all(isinstance(b, int) for b in raw):
        return bytes(raw).decode("utf-8", errors="replace")
    return str(entry.get("token", ""))


def _as_float(v) -> float | None:
    return None if v is None else float(v)


def parse_logprobs(logprobs: dict | None) -> list[TokenLogprob]:
    """Token log-probabilities from a choice's ``logprobs`` in either shape (module docstring)."""
    if not logprobs:
        return []
    if "content" in logprobs:
        out = []
        for e in logprobs.get("content") or []:
            top = [(_token_text(a), float(a["logprob"])) for a in e.get("top_logprobs") or []
                   if a.get("logprob") is not None]
            out.append(TokenLogprob(_token_text(e), _as_float(e.get("logprob")), top,
                                    token_id=e.get("id")))
        offset = 0
        for t in out:  # chat shapes carry no offsets: the tokens concatenate to the text
            t.offset = offset
            offset += len(t.token)
        return out
    tokens = list(logprobs.get("tokens") or [])
    values = list(logprobs.get("token_logprobs") or [None] * len(tokens))
    tops = list(logprobs.get("top_logprobs") or [None] * len(tokens))
    offsets = logprobs.get("text_offset")
    if offsets is None:
        offsets, acc = [], 0
        for t in tokens:
            offsets.append(acc)
            acc += len(t)
    return [
        TokenLogprob(str(t), _as_float(v),
                     sorted(((str(k), float(x)) for k, x in (top or {}).items()), key=lambda kv: -kv[1]),
                     offset=int(o))
        for t, v, top, o in zip(tokens, values, tops, offsets)
    ]


def continuation_tokens(tokens: list[TokenLogprob], ctx_chars: int, end_chars: int) -> list[TokenLogprob]:
    """The echoed tokens that belong to the continuation ``text[ctx_chars:end_chars]``.

    A token counts when its span reaches past the context and starts before
    the end (a token straddling the boundary is the continuation's, as in
    lm-eval's split); tokens generated after the prompt are left out.
    """
    out = []
    for i, t in enumerate(tokens):
        start = int(t.offset or 0)
        end = int(tokens[i + 1].offset) if i + 1 < len(tokens) else start + len(t.token)
        if end > ctx_chars and start < end_chars and (end > start or start >= ctx_chars):
            out.append(t)
    return out


def is_top(t: TokenLogprob) -> bool:
    """Whether the token was the most likely one (greedy), as far as its top-k shows."""
    if t.logprob is None:
        return False
    return not t.top or t.logprob >= max(v for _, v in t.top) - GREEDY_TOL


def topk_entropy(top: list[tuple[str, float]]) -> float:
    """Entropy (nats) of the top-k alternatives, renormalized: what an API's logprobs allow."""
    if not top:
        return float("nan")
    lp = np.array([v for _, v in top], dtype=np.float64)  # (k,)
    p = np.exp(lp - lp.max())
    p /= p.sum()
    return float(-(p * np.log(np.maximum(p, 1e-300))).sum())


def choices(data: dict, url: str) -> list[dict]:
    """The response's ``choices`` in index order (a response without any is a server error)."""
    out = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
    if not out:
        raise ServerError(url, 200, f"no choices in the answer: {str(data)[:300]}")
    return out


def first_logprobs(data: dict, url: str) -> list[TokenLogprob]:
    """The parsed token log-probabilities of the first choice."""
    return parse_logprobs(choices(data, url)[0].get("logprobs"))
