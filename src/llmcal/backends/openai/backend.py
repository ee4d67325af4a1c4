"""Any OpenAI-compatible server as a backend: vLLM, llama.cpp's server, llama-cpp-python, Ollama.

``--model openai --model_args base_url=http://127.0.0.1:8080/v1,model=NAME`` scores
the same :class:`~llmcal.core.requests.MCRequest` s as the transformers backend
(:mod:`~llmcal.backends.openai.scoring`: forced tokens or echo, chosen by a
probe) and generates free-form answers with per-token evidence
(:mod:`~llmcal.backends.openai.generation`), over HTTP
(:mod:`~llmcal.backends.openai.client`, with the retries of
:mod:`~llmcal.backends.openai.retry`).  Scale-out is the server's job: a
multi-GPU vLLM deployment needs only another ``base_url`` and a higher
``concurrency``.

It has no hidden states (the weights are out of reach), so ``--probe``
refuses it up front; chat templates need ``tokenizer=`` (the template lives
with the server's model), and on the chat endpoint the server templates
whole conversations itself (capability ``messages``).  When the server stays
away, scoring raises :class:`~llmcal.backends.openai.retry.ServerUnavailable`;
``measure`` has kept every finished chunk, and running the same command
again resumes.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from llmcal.backends.base import DEFAULT_STOP, Backend, BackendCapabilityError, Messages, as_messages
from llmcal.backends.openai.client import Client
from llmcal.backends.openai.generation import Generator
from llmcal.backends.openai.retry import RetryPolicy
from llmcal.backends.openai.scoring import SCORING_MODES, Scorer
from llmcal.backends.openai.tokenizers import LocalTokenizer
from llmcal.core.requests import Generation, MCRequest, MCScore

OPENAI_KEYS = frozenset({
    "base_url", "model", "api_key_env", "concurrency", "timeout", "max_retries", "scoring",
    "tokenizer", "generate_endpoint", "neutral_sampling", "dtype",
})


def check_base_url(url: str) -> str:
    """``url`` when it is an ``http://`` or ``https://`` URL with a host; else ValueError saying so
    (a ``file://`` or mistyped scheme would otherwise be retried as a dead server)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError as err:
        raise ValueError(f"base_url={url!r} is not a URL ({err}); use http://HOST:PORT/v1") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"base_url={url!r}: the scheme must be http:// or https://, not "
                         f"{(parts.scheme + '://') if parts.scheme else 'none'}; use http://HOST:PORT/v1")
    if not host:
        raise ValueError(f"base_url={url!r} names no host; use http://HOST:PORT/v1")
    return url


def parse_openai_args(text: str | None, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """``--model_args`` for ``--model openai``: ``base_url`` is required, the rest optional.

    ``base``: model args already in a dict (the Python API), checked the same way.
    """
    from llmcal.backends.model_args import parse_model_args

    margs = parse_model_args(text, known=OPENAI_KEYS, base=base)
    if not margs.get("base_url"):
        raise ValueError("--model openai needs --model_args base_url=http://HOST:PORT/v1[,model=NAME,...]")
    check_base_url(str(margs["base_url"]))
    margs["dtype"] = "server"  # the server decides; kept so run names and identities stay uniform
    if str(margs.get("scoring", "auto")) not in SCORING_MODES:
        raise ValueError(f"--model_args scoring={margs['scoring']!r}: use one of {', '.join(SCORING_MODES)}")
    return margs


class OpenAIBackend(Backend):
    """Score multiple choice and generate through an OpenAI-compatible server.

    ``base_url`` ends in ``/v1``; ``model`` is the served model's name (empty:
    the first of ``/v1/models``); ``api_key_env`` names the environment
    variable holding the key (default ``OPENAI_API_KEY``; unset = no key);
    ``concurrency`` bounds the requests in flight; ``timeout`` is per request
    (seconds); ``max_retries`` retries follow a failed request; ``scoring`` is
    ``auto``, ``echo`` or ``forced`` (:mod:`llmcal.backends.openai.scoring`);
    ``tokenizer`` names a local HF tokenizer (or ``embedded``) for ``forced``
    scoring when the server cannot tokenize, and for ``--chat``;
    ``generate_endpoint`` is ``chat`` or ``completions``; ``neutral_sampling``
    sends :data:`~llmcal.backends.openai.generation.NEUTRAL_SAMPLING` with
    generation requests.  ``retry``, ``transport`` and ``sleep`` are for tests.
    """

    name = "openai"
    # "chat_template" needs tokenizer=, "messages" the chat endpoint (narrowed per instance)
    capabilities = frozenset({"score", "generate", "chat_template", "messages"})

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
        self.client = Client(base_url, model, api_key_env=api_key_env, concurrency=concurrency, timeout=timeout,
                             retry=retry or RetryPolicy(max_retries=int(max_retries)), transport=transport,
                             sleep=sleep)
        self.scorer = Scorer(self.client, scoring, tokenizer)
        self.generator = Generator(self.client, generate_endpoint, neutral_sampling)
        self.model_name = ""
        caps = set(type(self).capabilities)
        if not tokenizer:
            caps.discard("chat_template")
        if not self.generator.takes_messages:
            caps.discard("messages")
        self.capabilities = frozenset(caps)

    @classmethod
    def load(cls, base_url: str, model: str = "", api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
             timeout: float = 60.0, max_retries: int = 5, scoring: str = "auto", tokenizer: str | None = None,
             generate_endpoint: str = "chat", neutral_sampling: bool = True, dtype: str | None = None,
             retry: RetryPolicy | None = None, transport=None, sleep=None) -> "OpenAIBackend":
        """Build from ``--model_args`` values; asks ``/v1/models`` for the name when none is given.

        ``dtype`` is accepted and ignored (the server decides; runs record ``"server"``).
        Probes the scoring mode here, so a wrong or absent server fails before any item.
        """
        obj = cls(base_url, model, api_key_env=api_key_env, concurrency=concurrency, timeout=timeout,
                  max_retries=max_retries, scoring=scoring, tokenizer=tokenizer,
                  generate_endpoint=generate_endpoint, neutral_sampling=neutral_sampling, retry=retry,
                  transport=transport, sleep=sleep)
        if not obj.model:
            obj.client.model = obj.client.list_models()[0]
        obj.model_name = f"{obj.model} (via {obj.base_url})"
        obj.resolve_scoring()
        return obj

    @classmethod
    def parse_model_args(cls, text: str | None, dtype: str | None = None,
                         base: dict[str, Any] | None = None) -> dict[str, Any]:
        """:func:`parse_openai_args` (``--dtype`` does not apply: the server decides)."""
        return parse_openai_args(text, base=base)

    # ------------------------------------------------------------ settings, read through
    @property
    def model(self) -> str:
        return self.client.model

    @property
    def base_url(self) -> str:
        return self.client.base_url

    @property
    def concurrency(self) -> int:
        return self.client.concurrency

    @property
    def requests_sent(self) -> int:
        return self.client.requests_sent

    @property
    def scoring(self) -> str:
        return self.scorer.mode

    @property
    def resolved_scoring(self) -> str | None:
        return self.scorer.resolved

    @property
    def probe_report(self) -> dict[str, Any]:
        return self.scorer.probe_report

    @property
    def generate_endpoint(self) -> str:
        return self.generator.endpoint

    def resolve_scoring(self) -> str:
        """``echo`` or ``forced``: the probe's verdict for ``scoring=auto`` (asked once)."""
        return self.scorer.resolve()

    def list_models(self) -> list[str]:
        """The served model names (``GET /v1/models``)."""
        return self.client.list_models()

    # ------------------------------------------------------------ info
    def describe(self) -> dict[str, Any]:
        import httpx

        return {
            "backend": "openai",
            "model": self.model,
            "base_url": self.base_url,
            "scoring": self.resolved_scoring or self.scoring,
            "probe": self.probe_report,
            "concurrency": self.concurrency,
            "timeout": self.client.timeout,
            "max_retries": self.client.retry.max_retries,
            "httpx": httpx.__version__,
        }

    def fingerprint(self) -> str:
        """A short hash naming the served model (by name and URL: the weights are out of reach)."""
        import hashlib

        return hashlib.sha256(f"openai|{self.base_url}|{self.model}".encode()).hexdigest()[:16]

    def apply_chat_template(self, messages: str | Messages) -> str:
        """Chat-templated prompt text: needs ``tokenizer=`` (the template lives with the server's model)."""
        if "chat_template" not in self.capabilities:
            raise BackendCapabilityError(
                "--chat with --model openai needs --model_args tokenizer=PATH_OR_NAME (or tokenizer=embedded): "
                "the chat template is applied here, then scored as text")
        tok = self.scorer.tokenizer()
        assert isinstance(tok, LocalTokenizer)
        return tok.apply_chat_template(as_messages(messages))

    # ------------------------------------------------------------ the model
    def score_mc(self, requests: Sequence[MCRequest],
                 progress: Callable[[int], None] | None = None) -> list[MCScore]:
        """Score every request; results come back in request order (hidden states: none)."""
        return self.scorer.score_mc(requests, progress)

    def generate(
        self,
        prompts: Sequence[str | Messages],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        n: int = 1,
        seed: int = 0,
        top_k: int = 5,
        stop: Sequence[str] | None = DEFAULT_STOP,
    ) -> list[list[Generation]]:
        """``n`` answers per prompt, greedy when ``temperature`` is 0 (:mod:`llmcal.backends.openai.generation`).

        A prompt is a text or, on the chat endpoint, a conversation (a list of
        ``{"role", "content"}`` messages, templated by the server).
        """
        if any(not isinstance(p, str) for p in prompts):
            self.require("messages", "a conversation as the prompt (use generate_endpoint=chat)")
        return self.generator.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature, n=n,
                                       seed=seed, top_k=top_k, stop=stop)
