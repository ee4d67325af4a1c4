"""Multiple-choice scores (lm-eval's ``loglikelihood``) from an OpenAI-compatible server.

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
------------------------------------------------------
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
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Sequence

import numpy as np

from llmcal.backends.openai.client import Client, gather
from llmcal.backends.openai.retry import ServerError
from llmcal.backends.openai.tokenizers import LocalTokenizer, ServerTokenizer
from llmcal.backends.openai.wire import TokenLogprob, continuation_tokens, first_logprobs, is_top
from llmcal.core.requests import MCRequest, MCScore

SCORING_MODES = ("auto", "echo", "forced")
FORCE_BIAS = 100.0  # logit_bias that makes the option's token the argmax (OpenAI's maximum)
# A text whose tokens are easy to cut at a space: the alignment probe.
PROBE_TEXT = "The capital of France is Paris, and the sky is blue"


def split_context(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's ``_encode_pair`` at the text level: trailing context spaces go to the continuation."""
    n = len(context) - len(context.rstrip())
    if n:
        return context[:-n], context[-n:] + continuation
    return context, continuation


def mc_score(options: list[tuple[float, int, bool]]) -> MCScore:
    """An :class:`MCScore` from (log-likelihood, tokens, greedy) per option."""
    return MCScore(
        logprobs=np.array([o[0] for o in options], dtype=np.float64),
        n_tokens=np.array([o[1] for o in options], dtype=np.int64),
        is_greedy=np.array([o[2] for o in options], dtype=bool),
    )


class Scorer:
    """Scores :class:`MCRequest` s by echo or forced tokens (module docstring), deciding once for ``auto``.

    ``tokenizer`` names a local HF tokenizer (or ``embedded``); without one
    the server's tokenize endpoint is used.  After the first call
    :attr:`resolved` is ``echo`` or ``forced`` and :attr:`probe_report`
    records what the probe saw.
    """

    def __init__(self, client: Client, mode: str = "auto", tokenizer: str | None = None) -> None:
        if mode not in SCORING_MODES:
            raise ValueError(f"scoring: use one of {', '.join(SCORING_MODES)}, got {mode!r}")
        self.client = client
        self.mode = mode
        self.resolved: str | None = None if mode == "auto" else mode
        self.probe_report: dict[str, Any] = {}
        self.tokenizer_spec = tokenizer
        self._tok: LocalTokenizer | ServerTokenizer | None = None

    def tokenizer(self) -> LocalTokenizer | ServerTokenizer:
        if self._tok is None:
            self._tok = LocalTokenizer(self.tokenizer_spec) if self.tokenizer_spec else ServerTokenizer(self.client)
        return self._tok

    # ------------------------------------------------------------ entry points
    def resolve(self) -> str:
        """``echo`` or ``forced``: the probe's verdict for ``scoring=auto`` (asked once)."""
        if self.resolved is None:
            self.resolved = self.client.session(self.probe)
        return self.resolved

    def score_mc(self, requests: Sequence[MCRequest],
                 progress: Callable[[int], None] | None = None) -> list[MCScore]:
        """Every request's scores, in request order; ``progress(1)`` after each."""
        if not requests:
            return []

        async def body(http):
            if self.resolved is None:
                self.resolved = await self.probe(http)
            score = self.score_echo if self.resolved == "echo" else self.score_forced

            async def one(req: MCRequest) -> MCScore:
                s = await score(http, req)
                if progress:
                    progress(1)
                return s

            return await gather([one(r) for r in requests])

        return self.client.session(body)

    # ------------------------------------------------------------ echo
    async def score_echo(self, http, req: MCRequest) -> MCScore:
        url = self.client.url("/completions")

        async def option(i: int, cont: str) -> tuple[float, int, bool]:
            ctx, cont = split_context(req.context_of(i), cont)  # partial scoring: each option its own context
            data = await self.client.completion(http, {"prompt": ctx + cont, "max_tokens": 1, "temperature": 0.0,
                                                       "echo": True, "logprobs": 1})
            toks = continuation_tokens(first_logprobs(data, url), len(ctx), len(ctx) + len(cont))
            if not toks or any(t.logprob is None for t in toks):
                raise ServerError(url, 200, f"no echoed prompt log-probabilities for option {cont!r}: does the "
                                            "server support echo with logprobs? (try scoring=forced)")
            return sum(float(t.logprob) for t in toks), len(toks), all(is_top(t) for t in toks)

        return mc_score(await gather([option(i, c) for i, c in enumerate(req.continuations)]))

    # ------------------------------------------------------------ forced
    async def forced_logprob(self, http, prompt: str, token_id: int, text: str) -> tuple[float, bool]:
        """log p(token | prompt) from one forced generated token, and whether it was the argmax.

        ``text`` is the token's text, to check (where the server sends no ids)
        that the server honoured ``logit_bias``.
        """
        url = self.client.url("/completions")
        data = await self.client.completion(http, {"prompt": prompt, "max_tokens": 1, "temperature": 0.0,
                                                   "logprobs": 1, "logit_bias": {str(token_id): FORCE_BIAS}})
        toks = first_logprobs(data, url)
        if not toks or toks[0].logprob is None:
            raise ServerError(url, 200, "no log-probability for the generated token (logprobs unsupported?)")
        t = toks[0]
        if (int(t.token_id) != int(token_id)) if t.token_id is not None else (t.token and text and t.token != text):
            raise ServerError(url, 200, f"the server ignored logit_bias (asked for token {token_id} {text!r}, got "
                                        f"{t.token_id if t.token_id is not None else t.token!r}): "
                                        "scoring=forced cannot work here")
        return float(t.logprob), is_top(t)

    async def score_forced(self, http, req: MCRequest) -> MCScore:
        tok = self.tokenizer()
        contexts = {req.context_of(i) for i in range(len(req.continuations))}  # one, or one per option
        ctx_ids = {c: await tok.encode(http, split_context(c, "")[0]) for c in sorted(contexts)}

        async def option(i: int, cont: str) -> tuple[float, int, bool]:
            ctx, cont = split_context(req.context_of(i), cont)
            whole = await tok.encode(http, ctx + cont)
            ids = whole[len(ctx_ids[req.context_of(i)]):]
            if not ids:
                raise ValueError(f"option {cont!r} adds no tokens to the context")
            # the text of the continuation's first i tokens: a prefix of the real string
            prefixes = [""] + list(await asyncio.gather(*(tok.decode(http, ids[:i]) for i in range(1, len(ids)))))
            cuts = [len(p) for p in prefixes] + [len(cont)]
            res = await asyncio.gather(*(self.forced_logprob(http, ctx + cont[: cuts[i]], t,
                                                             cont[cuts[i]: cuts[i + 1]])
                                         for i, t in enumerate(ids)))
            return sum(lp for lp, _ in res), len(ids), all(g for _, g in res)

        return mc_score(await gather([option(i, c) for i, c in enumerate(req.continuations)]))

    # ------------------------------------------------------------ the probe
    async def probe(self, http) -> str:
        """Decide between echo and forced scoring (module docstring); records what it saw."""
        url = self.client.url("/completions")
        try:
            data = await self.client.completion(http, {"prompt": PROBE_TEXT, "max_tokens": 1, "temperature": 0.0,
                                                       "echo": True, "logprobs": 5})
            echoed = first_logprobs(data, url)
        except ServerError as err:
            if err.status not in (400, 422, 500, 501):  # a key, a model name, a URL: not about echo
                raise
            self.probe_report = {"echo": f"refused ({err.status})", "chosen": "forced"}
            return "forced"
        cuts = [i for i, t in enumerate(echoed) if 2 <= i and t.offset and t.token.startswith(" ")
                and int(t.offset) < len(PROBE_TEXT)]
        if len(echoed) < 4 or not cuts:
            self.probe_report = {"echo": "no prompt log-probabilities", "chosen": "forced"}
            return "forced"
        nxt = None
        for m in cuts[len(cuts) // 2:][:3]:  # a few cuts: a server that generated end-of-text sends no logprobs
            data = await self.client.completion(http, {"prompt": PROBE_TEXT[: int(echoed[m].offset)],
                                                       "max_tokens": 1, "temperature": 0.0, "logprobs": 5})
            (nxt, *_) = first_logprobs(data, url) or [None]
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
