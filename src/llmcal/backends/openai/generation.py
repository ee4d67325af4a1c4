"""Free-form answers with per-token evidence from ``/chat/completions`` or ``/completions``.

Returns the same :class:`~llmcal.core.requests.Generation` as the HF backend.
On the chat endpoint (``logprobs: true, top_logprobs: k``) a prompt is the
user message, or a whole conversation the server templates; on
``/completions`` (``generate_endpoint=completions``) it is the prompt text as
is.  Sample ``s`` of a prompt uses seed ``seed + s``, one request per sample
(llama-cpp-python ignores ``n``).  Entropies come from the top-k
alternatives, renormalized (:func:`~llmcal.backends.openai.wire.topk_entropy`);
token ids only where the server sends them (llama.cpp's server).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from llmcal.backends.base import DEFAULT_STOP, check_generate_args
from llmcal.backends.openai.client import Client, gather
from llmcal.backends.openai.wire import TokenLogprob, choices, parse_logprobs, topk_entropy
from llmcal.core.requests import Generation

GENERATE_ENDPOINTS = ("chat", "completions")
# Sent with generation requests unless neutral_sampling=false: llama-cpp-python's server
# defaults to repeat_penalty=1.1 and min_p=0.05, which change even greedy answers; these
# values switch both off (vLLM and Ollama ignore or accept them; api.openai.com rejects them).
NEUTRAL_SAMPLING = {"repeat_penalty": 1.0, "min_p": 0.0}


def generation_from_choice(text: str, tokens: list[TokenLogprob], finish_reason: str | None,
                           stop: Sequence[str], top_k: int) -> Generation:
    """A :class:`Generation` from a response's text and token logprobs.

    The text is cut at the first stop string (servers that ignore ``stop``),
    and the tokens at the text's end: tokens that begin at or after it (a stop
    token the server reported) are dropped, so the evidence describes exactly
    the returned text.  An empty answer keeps the one token that ended it.
    """
    finish = "length" if finish_reason == "length" else "stop"
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    if cut >= 0:
        text, finish = text[:cut], "stop"
    # offsets of chat-style tokens start at 0; legacy completions (no echo) count from the prompt's end
    base = int(tokens[0].offset or 0) if tokens else 0
    kept = [t for t in tokens if t.logprob is not None and int(t.offset or 0) - base < len(text)]
    if not kept and tokens and tokens[0].logprob is not None:
        kept = tokens[:1]
    tops = [t.top[: max(int(top_k), 0)] for t in kept] if top_k > 0 else []
    return Generation(
        text=text.strip(),
        token_ids=[int(t.token_id) for t in kept if t.token_id is not None] if text else [],
        token_logprobs=np.array([float(t.logprob) for t in kept], dtype=np.float64),
        entropies=np.array([topk_entropy(t.top) for t in kept], dtype=np.float64),
        top_logprobs=tops,
        finish_reason=finish,
    )


class Generator:
    """Generates through one endpoint (``chat`` or ``completions``) of a :class:`Client`'s server."""

    def __init__(self, client: Client, endpoint: str = "chat", neutral_sampling: bool = True) -> None:
        if endpoint not in GENERATE_ENDPOINTS:
            raise ValueError(f"generate_endpoint: chat or completions, got {endpoint!r}")
        self.client = client
        self.endpoint = endpoint
        self.neutral_sampling = bool(neutral_sampling)

    @property
    def takes_messages(self) -> bool:
        """Whether prompts may be whole conversations (lists of messages): on the chat endpoint."""
        return self.endpoint == "chat"

    def generate(self, prompts: Sequence[str | list[dict]], *, max_new_tokens: int = 64, temperature: float = 0.0,
                 n: int = 1, seed: int = 0, top_k: int = 5,
                 stop: Sequence[str] | None = DEFAULT_STOP) -> list[list[Generation]]:
        """``n`` answers per prompt, greedy when ``temperature`` is 0, in prompt order."""
        check_generate_args(temperature, n)
        if not prompts:
            return []
        for i, p in enumerate(prompts):
            if not isinstance(p, str) and not self.takes_messages:
                raise ValueError(f"prompt {i}: a conversation (list of messages) needs generate_endpoint=chat")
        stop = tuple(s for s in (stop or ()) if s)

        async def body(http):
            jobs = [self.one(http, p, max_new_tokens, temperature, seed + s, top_k, stop)
                    for p in prompts for s in range(n)]
            flat = await gather(jobs)
            return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]

        return self.client.session(body)

    async def one(self, http, prompt: str | list[dict], max_new_tokens: int, temperature: float, seed: int,
                  top_k: int, stop: tuple[str, ...]) -> Generation:
        """One answer to one prompt (one request)."""
        c = self.client
        payload: dict[str, Any] = {"model": c.model, "max_tokens": int(max_new_tokens),
                                   "temperature": float(temperature), "top_p": 1.0, "seed": int(seed)}
        if stop:
            payload["stop"] = list(stop)
        if self.neutral_sampling:
            payload.update(NEUTRAL_SAMPLING)
        if self.endpoint == "chat":
            url = c.url("/chat/completions")
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            payload.update(messages=messages, logprobs=True, top_logprobs=int(top_k))
        else:
            url = c.url("/completions")
            payload.update(prompt=prompt, logprobs=max(int(top_k), 1))
        choice = choices(await c.post(http, url, payload), url)[0]
        text = (choice.get("message") or {}).get("content") if self.endpoint == "chat" else choice.get("text")
        return generation_from_choice(str(text or ""), parse_logprobs(choice.get("logprobs")),
                                      choice.get("finish_reason"), stop, top_k)
