"""Any OpenAI-compatible server as a backend: vLLM, llama.cpp's server, llama-cpp-python, Ollama.

``--model openai --model_args base_url=http://127.0.0.1:8080/v1,model=NAME`` scores
the same :class:`~llmcal.backends.base.MCRequest` s as the transformers backend
and generates free-form answers with per-token evidence, over HTTP.  Scale-out is
the server's job: a multi-GPU vLLM deployment needs only another ``base_url``
and a higher ``concurrency``.

Multiple choice (lm-eval's ``loglikelihood``)
---------------------------------------------
Context and continuation are split like lm-eval's ``_encode_pair`` (trailing
context whitespace moves into the continuation).  Two ways to get
``log p(continuation | context)`` from a server:

* ``scoring=echo`` -- one legacy ``POST /completions`` per option with
  ``prompt = context + continuation, echo: true, logprobs: 1, max_tokens: 1``;
  the option's tokens are those whose ``text_offset`` span reaches past the
  end of the context, the generated token is ignored.  One request per
  option; right for vLLM (and OpenAI's old completion models).
* ``scoring=forced`` -- one ``POST /completions`` per option *token*: the
  prompt is the context plus the option's earlier tokens, ``max_tokens: 1``,
  and ``logit_bias: {token: 100}`` forces the next token to be the option's;
  the log-probability the server reports for a *generated* token comes from
  the unbiased logits.  Needs the token ids (the server's ``/tokenize`` or
  ``/extras/tokenize``, or ``tokenizer=`` naming a local HF tokenizer).
* ``scoring=auto`` (default) sends one probe: the next-token distribution after
  a prefix, asked for without echo, is compared with the echoed
  distributions at that position and the one before.  If echo lines up, echo
  is used; if it is one position late, or the server has no echo, forced.

Why echo cannot be trusted on llama-cpp-python (0.3.x)
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
``Llama._create_completion`` builds the echoed list as the prompt tokens
*without a leading BOS* and pairs token ``j`` with ``scores[j]``, the logits
computed *at* position ``j`` (which predict token ``j + 1``).  That is right
when the prompt starts with a BOS that was dropped (then token ``j`` of the
list sits at position ``j + 1``), and one position off otherwise.  The
embedded SmolLM2 GGUF has ``tokenizer.ggml.add_bos_token = false``, so every
echoed value is ``log p(next token = t_j | t_0..t_j)``: the chance that the
token *repeats*.  ' Paris' after 'Answer:' came back as log p(' Paris' after
'Answer: Paris') = -5.53 instead of -4.51, and ':' after 'Question' as log
p(':' after 'Question:') = -11.1 instead of -6.2.  The top-k lists are shifted
the same way.  Log-probabilities of *generated* tokens (``echo: false``, chat)
use ``scores[n_prompt - 1 + i]`` and are right, which is why the chat endpoint
looked sane and why ``forced`` scoring agrees with the HF backend.  A prompt
that starts with the BOS token (a chat-templated prompt starting with
``<|im_start|>``, id 1 here) lines up again; the probe decides per server.

Free-form answers
-----------------
:meth:`OpenAIBackend.generate` returns the same
:class:`~llmcal.backends.generation.Generation` as the HF backend, from
``/chat/completions`` (``logprobs: true, top_logprobs: k``; the prompt is the
user message) or ``/completions`` (``generate_endpoint=completions``; the
prompt as is).  The response shapes handled: OpenAI/vLLM/Ollama/llama-cpp-python
chat (``logprobs.content[] = {token, logprob, top_logprobs: [{token, logprob}]}``),
llama.cpp's server (the same, plus ``id``, also on ``/completions``), and legacy
completions (``tokens, token_logprobs, top_logprobs: [{token: logprob}],
text_offset``).  Servers do not send entropies: they are computed from the
top-k alternatives, renormalized (as ``serve/upstream.py`` does), and token ids
only where the server sends them (llama.cpp).

Transport
---------
``httpx.AsyncClient`` with at most ``concurrency`` requests in flight, a
``timeout`` per request, and :func:`~llmcal.backends.http_retry.post_json`'s
retries (exponential backoff with jitter on 429/5xx/connection errors,
``Retry-After`` respected).  The API key is read from the environment variable
named by ``api_key_env`` (default ``OPENAI_API_KEY``), never from the command
line.  When the server stays away, scoring raises
:class:`~llmcal.backends.http_retry.ServerUnavailable`; ``measure`` has kept
every finished chunk, and running the same command again resumes.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine, Sequence

import numpy as np

from llmcal.backends.base import MCRequest, MCScore
from llmcal.backends.generation import DEFAULT_STOP
from llmcal.backends.http_retry import RetryPolicy, ServerError, ServerUnavailable, post_json

OPENAI_KEYS = frozenset({
    "base_url", "model", "api_key_env", "concurrency", "timeout", "max_retries", "scoring",
    "tokenizer", "generate_endpoint", "neutral_sampling", "dtype",
})
# Sent with generation requests unless neutral_sampling=false: llama-cpp-python's server
# defaults to repeat_penalty=1.1 and min_p=0.05, which change even greedy answers; these
# values switch both off (vLLM and Ollama ignore or accept them; api.openai.com rejects them).
NEUTRAL_SAMPLING = {"repeat_penalty": 1.0, "min_p": 0.0}
SCORING_MODES = ("auto", "echo", "forced")
FORCE_BIAS = 100.0  # logit_bias that makes the option's token the argmax (OpenAI's maximum)
# A text whose tokens are easy to cut at a space: the alignment probe.
_PROBE_TEXT = "The capital of France is Paris, and the sky is blue"
_GREEDY_TOL = 1e-6


def parse_openai_args(text: str | None) -> dict[str, Any]:
    """``--model_args`` for ``--model openai``: ``base_url`` is required, the rest optional."""
    from llmcal.backends.model_args import parse_model_args

    margs = parse_model_args(text, known=OPENAI_KEYS)
    if not margs.get("base_url"):
        raise ValueError("--model openai needs --model_args base_url=http://HOST:PORT/v1[,model=NAME,...]")
    margs["dtype"] = "server"  # the server decides; kept so run names and identities stay uniform
    if str(margs.get("scoring", "auto")) not in SCORING_MODES:
        raise ValueError(f"--model_args scoring={margs['scoring']!r}: use one of {', '.join(SCORING_MODES)}")
    return margs


# ---------------------------------------------------------------- response shapes
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
    """Token log-probabilities from a choice's ``logprobs`` in either shape.

    * chat style (OpenAI chat, vLLM chat, Ollama, llama.cpp's server on both
      endpoints): ``{"content": [{"token", "logprob", "bytes", "top_logprobs":
      [{"token", "logprob"}], "id"?}]}``;
    * legacy completions (OpenAI, vLLM, llama-cpp-python): ``{"tokens": [...],
      "token_logprobs": [...], "top_logprobs": [{token: logprob} | null],
      "text_offset": [...]}``.
    """
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
    return not t.top or t.logprob >= max(v for _, v in t.top) - _GREEDY_TOL


def topk_entropy(top: list[tuple[str, float]]) -> float:
    """Entropy (nats) of the top-k alternatives, renormalized: what an API's logprobs allow."""
    if not top:
        return float("nan")
    lp = np.array([v for _, v in top], dtype=np.float64)  # (k,)
    p = np.exp(lp - lp.max())
    p /= p.sum()
    return float(-(p * np.log(np.maximum(p, 1e-300))).sum())


def _choices(data: dict, url: str) -> list[dict]:
    choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
    if not choices:
        raise ServerError(url, 200, f"no choices in the answer: {str(data)[:300]}")
    return choices


def _split(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's ``_encode_pair`` at the text level: trailing context spaces go to the continuation."""
    n = len(context) - len(context.rstrip())
    if n:
        return context[:-n], context[-n:] + continuation
    return context, continuation


def _run(make: Callable[[], Coroutine]):
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


# ---------------------------------------------------------------- tokenizers
class _LocalTokenizer:
    """A transformers tokenizer on this machine (``tokenizer=PATH``; ``embedded`` = the embedded model's)."""

    def __init__(self, spec: str) -> None:
        from transformers import AutoTokenizer

        if spec == "embedded":
            from llmcal.backends.model_args import EMBEDDED_GGUF, embedded_model_dir

            self.tok = AutoTokenizer.from_pretrained(str(embedded_model_dir()), gguf_file=EMBEDDED_GGUF)
        else:
            self.tok = AutoTokenizer.from_pretrained(spec)

    async def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False).input_ids)

    async def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, clean_up_tokenization_spaces=False)


class _ServerTokenizer:
    """The server's own tokenizer, through whichever endpoint it has.

    llama-cpp-python: ``/extras/tokenize`` and ``/extras/detokenize``; vLLM and
    llama.cpp's server: ``/tokenize`` and ``/detokenize`` at the root (their
    field names differ: both are sent).  A BOS the server adds by itself
    (seen as the tokens of the empty string) is dropped, as lm-eval scores
    without it.
    """

    def __init__(self, backend: "OpenAIBackend") -> None:
        self.b = backend
        self.style: str | None = None
        self.prefix: list[int] | None = None

    async def _tok(self, client, text: str) -> list[int]:
        styles = [self.style] if self.style else ["extras", "root"]
        last: Exception | None = None
        for style in styles:
            try:
                if style == "extras":
                    data = await self.b._post(client, f"{self.b.root_url}/extras/tokenize",
                                              {"input": text, "model": self.b.model})
                else:
                    data = await self.b._post(client, f"{self.b.root_url}/tokenize",
                                              {"model": self.b.model, "prompt": text, "content": text,
                                               "add_special_tokens": False, "add_special": False})
                ids = [int(t) for t in data["tokens"]]
            except (ServerError, KeyError, TypeError, ValueError) as err:
                last = err
                continue
            self.style = style
            return ids
        raise ServerError(self.b.base_url, getattr(last, "status", 0) or 0,
                          f"scoring=forced needs token ids, but the server has no tokenize endpoint "
                          f"(/extras/tokenize or /tokenize: {last}); pass tokenizer=PATH_OR_NAME")

    async def encode(self, text: str, client=None) -> list[int]:
        if self.prefix is None:
            self.prefix = await self._tok(client, "")
        ids = await self._tok(client, text)
        return ids[len(self.prefix):] if self.prefix and ids[: len(self.prefix)] == self.prefix else ids

    async def decode(self, ids: list[int], client=None) -> str:
        if self.style == "extras":
            data = await self.b._post(client, f"{self.b.root_url}/extras/detokenize",
                                      {"tokens": ids, "model": self.b.model})
            return str(data["text"])
        data = await self.b._post(client, f"{self.b.root_url}/detokenize", {"model": self.b.model, "tokens": ids})
        return str(data.get("prompt", data.get("content", "")))


# ---------------------------------------------------------------- the backend
class OpenAIBackend:
    """Score multiple choice and generate through an OpenAI-compatible server.

    ``base_url`` ends in ``/v1``; ``model`` is the served model's name (empty:
    the first of ``/v1/models``); ``api_key_env`` names the environment
    variable holding the key (default ``OPENAI_API_KEY``; unset = no key);
    ``concurrency`` bounds the requests in flight; ``timeout`` is per request
    (seconds); ``max_retries`` retries follow a failed request; ``scoring`` is
    ``auto``, ``echo`` or ``forced`` (module docstring); ``tokenizer`` names a
    local HF tokenizer (or ``embedded``) for ``forced`` scoring when the
    server cannot tokenize; ``generate_endpoint`` is ``chat`` or
    ``completions``; ``neutral_sampling`` sends :data:`NEUTRAL_SAMPLING` with
    generation requests.  ``transport`` and ``sleep`` are for tests.
    """

    name = "openai"
    n_layers = 0  # no hidden states over an API
    hidden_layers: tuple[int, ...] = ()

    def __init__(
        self,
        base_url: str,
        model: str = "",
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 5,
        scoring: str = "auto",
        tokenizer: str | None = None,
        generate_endpoint: str = "chat",
        neutral_sampling: bool = True,
        retry: RetryPolicy | None = None,
        transport=None,
        sleep=None,
    ) -> None:
        if scoring not in SCORING_MODES:
            raise ValueError(f"scoring: use one of {', '.join(SCORING_MODES)}, got {scoring!r}")
        if generate_endpoint not in ("chat", "completions"):
            raise ValueError(f"generate_endpoint: chat or completions, got {generate_endpoint!r}")
        if int(concurrency) < 1:
            raise ValueError(f"concurrency: must be >= 1, got {concurrency}")
        self.base_url = str(base_url).rstrip("/")
        self.root_url = self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url
        self.model = str(model or "")
        self.api_key_env = str(api_key_env or "")
        self.concurrency = int(concurrency)
        self.timeout = float(timeout)
        self.retry = retry or RetryPolicy(max_retries=int(max_retries))
        self.scoring = scoring
        self.resolved_scoring: str | None = None if scoring == "auto" else scoring
        self.probe_report: dict[str, Any] = {}
        self.tokenizer_spec = tokenizer
        self.generate_endpoint = generate_endpoint
        self.neutral_sampling = bool(neutral_sampling)
        self._transport = transport
        self._sleep = sleep or asyncio.sleep
        self._tok: _LocalTokenizer | _ServerTokenizer | None = None
        self._sem: asyncio.Semaphore | None = None
        self.requests_sent = 0
        self.model_name = ""

    @classmethod
    def load(cls, base_url: str, model: str = "", **kwargs) -> "OpenAIBackend":
        """Build from ``--model_args`` values; asks ``/v1/models`` for the name when none is given."""
        kwargs.pop("dtype", None)
        obj = cls(base_url, model, **kwargs)
        if not obj.model:
            obj.model = obj.list_models()[0]
        obj.model_name = f"{obj.model} (via {obj.base_url})"
        obj.resolve_scoring()  # fails here, before any item, when the server is wrong or down
        return obj

    def resolve_scoring(self) -> str:
        """``echo`` or ``forced``: the probe's verdict for ``scoring=auto`` (asked once)."""
        if self.resolved_scoring is None:

            async def body(client):
                return await self._probe(client)

            self.resolved_scoring = self._session(body)
        return self.resolved_scoring

    # ------------------------------------------------------------ http
    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _client(self):
        import httpx

        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        return httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), limits=limits,
                                 headers=self._headers(), transport=self._transport)

    async def _post(self, client, url: str, payload: dict) -> dict:
        assert self._sem is not None
        async with self._sem:
            self.requests_sent += 1
            return await post_json(client, url, payload, self.retry, sleep=self._sleep)

    def list_models(self) -> list[str]:
        """The served model names (``GET /v1/models``)."""
        import httpx

        async def go():
            async with self._client() as client:
                try:
                    r = await client.get(f"{self.base_url}/models")
                except httpx.HTTPError as err:
                    raise ServerUnavailable(f"{self.base_url}/models", 1, f"{type(err).__name__}: {err}") from err
                if r.status_code >= 400:
                    raise ServerError(f"{self.base_url}/models", r.status_code, r.text)
                return [str(m["id"]) for m in r.json().get("data", [])]

        names = _run(go)
        if not names:
            raise ServerError(f"{self.base_url}/models", 200, "the server lists no models; pass model=NAME")
        return names

    def _session(self, body: Callable[[Any], Coroutine]):
        """Run ``body(client)`` in a fresh event loop with the concurrency bound."""

        async def go():
            self._sem = asyncio.Semaphore(self.concurrency)
            async with self._client() as client:
                return await body(client)

        return _run(go)

    # ------------------------------------------------------------ info
    def describe(self) -> dict:
        import httpx

        return {
            "backend": "openai",
            "model": self.model,
            "base_url": self.base_url,
            "scoring": self.resolved_scoring or self.scoring,
            "probe": self.probe_report,
            "concurrency": self.concurrency,
            "timeout": self.timeout,
            "max_retries": self.retry.max_retries,
            "httpx": httpx.__version__,
        }

    @property
    def takes_messages(self) -> bool:
        """Whether ``generate`` takes whole conversations (lists of messages): on the chat endpoint."""
        return self.generate_endpoint == "chat"

    def fingerprint(self) -> str:
        """A short hash naming the served model (by name and URL: the weights are out of reach)."""
        import hashlib

        return hashlib.sha256(f"openai|{self.base_url}|{self.model}".encode()).hexdigest()[:16]

    def apply_chat_template(self, user_message: str) -> str:
        """Chat-templated prompt text: needs ``tokenizer=`` (the template lives with the server's model)."""
        if not self.tokenizer_spec:
            raise ValueError("--chat with --model openai needs --model_args tokenizer=PATH_OR_NAME (or "
                             "tokenizer=embedded): the chat template is applied here, then scored as text")
        tok = self._tokenizer()
        assert isinstance(tok, _LocalTokenizer)
        return tok.tok.apply_chat_template([{"role": "user", "content": user_message}], tokenize=False,
                                           add_generation_prompt=True)

    def _tokenizer(self):
        if self._tok is None:
            self._tok = _LocalTokenizer(self.tokenizer_spec) if self.tokenizer_spec else _ServerTokenizer(self)
        return self._tok

    async def _encode(self, client, text: str) -> list[int]:
        tok = self._tokenizer()
        return await (tok.encode(text, client) if isinstance(tok, _ServerTokenizer) else tok.encode(text))

    async def _decode(self, client, ids: list[int]) -> str:
        tok = self._tokenizer()
        return await (tok.decode(ids, client) if isinstance(tok, _ServerTokenizer) else tok.decode(ids))

    # ------------------------------------------------------------ scoring
    def score_mc(self, requests: Sequence[MCRequest],
                 progress: Callable[[int], None] | None = None) -> list[MCScore]:
        """Score every request; results come back in request order (hidden states: none)."""
        if not requests:
            return []

        async def body(client):
            if self.resolved_scoring is None:
                self.resolved_scoring = await self._probe(client)
            score = self._score_echo if self.resolved_scoring == "echo" else self._score_forced

            async def one(req: MCRequest) -> MCScore:
                s = await score(client, req)
                if progress:
                    progress(1)
                return s

            return await _gather([one(r) for r in requests])

        return self._session(body)

    async def _completion(self, client, payload: dict) -> dict:
        return await self._post(client, f"{self.base_url}/completions", {"model": self.model, **payload})

    async def _score_echo(self, client, req: MCRequest) -> MCScore:
        async def option(cont: str) -> tuple[float, int, bool]:
            ctx, cont = _split(req.context, cont)
            data = await self._completion(client, {"prompt": ctx + cont, "max_tokens": 1, "temperature": 0.0,
                                                   "echo": True, "logprobs": 1})
            url = f"{self.base_url}/completions"
            toks = continuation_tokens(parse_logprobs(_choices(data, url)[0].get("logprobs")), len(ctx),
                                       len(ctx) + len(cont))
            if not toks or any(t.logprob is None for t in toks):
                raise ServerError(url, 200, f"no echoed prompt log-probabilities for option {cont!r}: does the "
                                            "server support echo with logprobs? (try scoring=forced)")
            return sum(float(t.logprob) for t in toks), len(toks), all(is_top(t) for t in toks)

        return _mc_score(await _gather([option(c) for c in req.continuations]))

    async def _forced_logprob(self, client, prompt: str, token_id: int, text: str) -> tuple[float, bool]:
        """log p(token | prompt) from one forced generated token, and whether it was the argmax.

        ``text`` is the token's text, to check (where the server sends no ids)
        that the server honoured ``logit_bias``.
        """
        url = f"{self.base_url}/completions"
        data = await self._completion(client, {"prompt": prompt, "max_tokens": 1, "temperature": 0.0,
                                               "logprobs": 1, "logit_bias": {str(token_id): FORCE_BIAS}})
        toks = parse_logprobs(_choices(data, url)[0].get("logprobs"))
        if not toks or toks[0].logprob is None:
            raise ServerError(url, 200, "no log-probability for the generated token (logprobs unsupported?)")
        t = toks[0]
        if (int(t.token_id) != int(token_id)) if t.token_id is not None else (t.token and text and t.token != text):
            raise ServerError(url, 200, f"the server ignored logit_bias (asked for token {token_id} {text!r}, got "
                                        f"{t.token_id if t.token_id is not None else t.token!r}): "
                                        "scoring=forced cannot work here")
        return float(t.logprob), is_top(t)

    async def _score_forced(self, client, req: MCRequest) -> MCScore:
        ctx0, _ = _split(req.context, "")
        ctx_ids = await self._encode(client, ctx0)

        async def option(cont: str) -> tuple[float, int, bool]:
            ctx, cont = _split(req.context, cont)
            whole = await self._encode(client, ctx + cont)
            ids = whole[len(ctx_ids):]
            if not ids:
                raise ValueError(f"option {cont!r} adds no tokens to the context")
            # the text of the continuation's first i tokens: a prefix of the real string
            prefixes = [""] + list(await asyncio.gather(*(self._decode(client, ids[:i]) for i in range(1, len(ids)))))
            cuts = [len(p) for p in prefixes] + [len(cont)]
            res = await asyncio.gather(*(self._forced_logprob(client, ctx + cont[: cuts[i]], t, cont[cuts[i]: cuts[i + 1]])
                                         for i, t in enumerate(ids)))
            return sum(lp for lp, _ in res), len(ids), all(g for _, g in res)

        return _mc_score(await _gather([option(c) for c in req.continuations]))

    async def _probe(self, client) -> str:
        """Decide between echo and forced scoring (module docstring); records what it saw."""
        url = f"{self.base_url}/completions"
        try:
            data = await self._completion(client, {"prompt": _PROBE_TEXT, "max_tokens": 1, "temperature": 0.0,
                                                   "echo": True, "logprobs": 5})
            echoed = parse_logprobs(_choices(data, url)[0].get("logprobs"))
        except ServerError as err:
            if err.status not in (400, 422, 500, 501):  # a key, a model name, a URL: not about echo
                raise
            self.probe_report = {"echo": f"refused ({err.status})", "chosen": "forced"}
            return "forced"
        cuts = [i for i, t in enumerate(echoed) if 2 <= i and t.offset and t.token.startswith(" ")
                and int(t.offset) < len(_PROBE_TEXT)]
        if len(echoed) < 4 or not cuts:
            self.probe_report = {"echo": "no prompt log-probabilities", "chosen": "forced"}
            return "forced"
        nxt = None
        for m in cuts[len(cuts) // 2:][:3]:  # a few cuts: a server that generated end-of-text sends no logprobs
            data = await self._completion(client, {"prompt": _PROBE_TEXT[: int(echoed[m].offset)], "max_tokens": 1,
                                                   "temperature": 0.0, "logprobs": 5})
            (nxt, *_) = parse_logprobs(_choices(data, url)[0].get("logprobs")) or [None]
            if nxt is not None:
                break
        if nxt is None:
            raise ServerError(url, 200, "no log-probabilities for a generated token: the server must support "
                                        "logprobs on /completions")
        truth = dict(nxt.top)

        def agree(t: TokenLogprob) -> int:
            return sum(1 for k, v in t.top if k in truth and abs(truth[k] - v) < 0.05)

        here, before = agree(echoed[m]), agree(echoed[m - 1])
        chosen = "echo" if here > before else "forced"
        self.probe_report = {"echo_matches_at": here, "echo_matches_one_before": before, "chosen": chosen,
                             "position": m}
        return chosen

    # ------------------------------------------------------------ generation
    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        n: int = 1,
        seed: int = 0,
        top_k: int = 5,
        stop: Sequence[str] | None = DEFAULT_STOP,
    ) -> list[list]:
        """``n`` answers per prompt, greedy when ``temperature`` is 0 (as :func:`backends.generation.generate`).

        A prompt is a text or, on the chat endpoint, a conversation (a list of
        ``{"role", "content"}`` messages, templated by the server).  Sample
        ``s`` of every prompt uses seed ``seed + s``; one request per sample
        (llama-cpp-python ignores ``n``).
        """
        from llmcal.backends.generation import check_generate_args

        check_generate_args(temperature, n)
        if not prompts:
            return []
        for i, p in enumerate(prompts):
            if not isinstance(p, str) and not self.takes_messages:
                raise ValueError(f"prompt {i}: a conversation (list of messages) needs generate_endpoint=chat")
        stop = tuple(s for s in (stop or ()) if s)

        async def body(client):
            jobs = [self._generate_one(client, p, max_new_tokens, temperature, seed + s, top_k, stop)
                    for p in prompts for s in range(n)]
            flat = await _gather(jobs)
            return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]

        return self._session(body)

    async def _generate_one(self, client, prompt: str | list[dict], max_new_tokens: int, temperature: float, seed: int,
                            top_k: int, stop: tuple[str, ...]):
        payload: dict[str, Any] = {"model": self.model, "max_tokens": int(max_new_tokens),
                                   "temperature": float(temperature), "top_p": 1.0, "seed": int(seed)}
        if stop:
            payload["stop"] = list(stop)
        if self.neutral_sampling:
            payload.update(NEUTRAL_SAMPLING)
        if self.generate_endpoint == "chat":
            url = f"{self.base_url}/chat/completions"
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            payload.update(messages=messages, logprobs=True, top_logprobs=int(top_k))
        else:
            url = f"{self.base_url}/completions"
            payload.update(prompt=prompt, logprobs=max(int(top_k), 1))
        choice = _choices(await self._post(client, url, payload), url)[0]
        text = (choice.get("message") or {}).get("content") if self.generate_endpoint == "chat" else choice.get("text")
        return generation_from_choice(str(text or ""), parse_logprobs(choice.get("logprobs")),
                                      choice.get("finish_reason"), stop, top_k)


def generation_from_choice(text: str, tokens: list[TokenLogprob], finish_reason: str | None,
                           stop: Sequence[str], top_k: int):
    """A :class:`~llmcal.backends.generation.Generation` from a response's text and token logprobs.

    The text is cut at the first stop string (servers that ignore ``stop``),
    and the tokens at the text's end: tokens that begin at or after it (a stop
    token the server reported) are dropped, so the evidence describes exactly
    the returned text.  An empty answer keeps the one token that ended it.
    """
    from llmcal.backends.generation import Generation

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


def _mc_score(options: list[tuple[float, int, bool]]) -> MCScore:
    return MCScore(
        logprobs=np.array([o[0] for o in options], dtype=np.float64),
        n_tokens=np.array([o[1] for o in options], dtype=np.int64),
        is_greedy=np.array([o[2] for o in options], dtype=bool),
    )


async def _gather(coros: list[Coroutine]) -> list:
    """``asyncio.gather`` that cancels the rest when one fails (so a dead server stops the run at once)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


__all__ = ["OpenAIBackend", "parse_openai_args", "parse_logprobs", "continuation_tokens",
           "generation_from_choice", "topk_entropy", "ServerError", "ServerUnavailable"]
