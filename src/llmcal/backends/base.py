"""What every backend offers the pipeline, and how it says what it cannot do.

A backend turns requests (:mod:`llmcal.core.requests`) into model evidence:
option log-likelihoods for multiple choice (lm-eval's ``loglikelihood``),
generated answers with per-token log-probabilities for free-form questions,
and, where the weights are in this process, hidden states for the probe.
Not every backend can do everything -- a model behind an HTTP API has no
hidden states -- so each one declares its :attr:`Backend.capabilities`:

``score``
    :meth:`Backend.score_mc` works.
``generate``
    :meth:`Backend.generate` works on prompt strings.
``hidden_states``
    :meth:`Backend.set_hidden_layers` works and ``score_mc`` then returns
    ``MCScore.hidden`` / ``answer_hidden``.
``chat_template``
    :meth:`Backend.apply_chat_template` turns messages into the model's
    chat-formatted prompt text here.
``messages``
    :meth:`Backend.generate` also takes whole conversations (lists of
    ``{"role", "content"}``) and the server templates them (the OpenAI chat
    endpoint).

The class-level set is what the backend can do at best; an instance narrows
it to what it can do as loaded (a tokenizer without a chat template, the
completions endpoint instead of chat).  :meth:`Backend.require` checks one
either way, so the pipeline refuses a run before any work:
``backend_class("openai").require("hidden_states", "--probe")`` raises
"--model openai cannot give hidden states, which --probe needs; use --model hf".
Callers never probe a backend with ``hasattr``/``getattr``.
"""

from __future__ import annotations

import abc
import functools
from typing import Any, Callable, ClassVar, Mapping, Sequence

from llmcal.core.requests import Generation, MCRequest, MCScore

# Stop at the end of the first line of an answer unless told otherwise: the
# open tasks ask for a short answer, and the model otherwise keeps talking.
DEFAULT_STOP = ("\n",)

#: Every capability a backend may declare, with the words an error uses for it.
CAPABILITIES: dict[str, str] = {
    "score": "multiple-choice scores",
    "generate": "free-form answers",
    "hidden_states": "hidden states",
    "chat_template": "chat-templated prompts",
    "messages": "answers to whole conversations",
    "score_tokens": "per-token scores of given token ids",
    "next_token": "next-token log-probabilities that reuse the greedy answer's cached keys/values",
}

Message = Mapping[str, str]
Messages = Sequence[Message]


class BackendCapabilityError(ValueError):
    """A backend was asked for something it cannot do (names the backend and what needed it)."""


class _class_or_instance:
    """A method that binds to the instance when there is one, else to the class.

    :meth:`Backend.require` reads ``capabilities``: on the class that is what
    the backend can do at best (to refuse before loading anything), on an
    instance what this loaded one can do.
    """

    def __init__(self, func: Callable) -> None:
        self.func = func
        functools.update_wrapper(self, func)  # type: ignore[arg-type]

    def __get__(self, obj, owner):
        return functools.partial(self.func, owner if obj is None else obj)


class _AnyKey(frozenset):
    """The ``known`` keys of a backend whose ``load`` takes ``**kwargs``: every key."""

    def __contains__(self, key: object) -> bool:
        return True


def as_messages(messages: str | Messages) -> list[dict[str, str]]:
    """A conversation from either one user message (a string) or a list of messages."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    out = [dict(m) for m in messages]
    for i, m in enumerate(out):
        if "role" not in m or "content" not in m:
            raise ValueError(f"messages[{i}]: needs 'role' and 'content', got {sorted(m)}")
    return out


def check_generate_args(temperature: float, n: int) -> None:
    """The argument rules every backend's ``generate`` shares."""
    if temperature < 0:
        raise ValueError(f"temperature: must be >= 0, got {temperature}")
    if n < 1:
        raise ValueError(f"n: must be >= 1, got {n}")
    if temperature == 0 and n > 1:
        raise ValueError("n > 1 needs temperature > 0 (greedy decoding gives one answer)")


class Backend(abc.ABC):
    """A model that scores options and/or generates answers with token evidence.

    Subclasses set :attr:`name` (the ``--model`` value), :attr:`capabilities`,
    implement :meth:`load` (from lm-eval-style ``--model_args`` values),
    :meth:`fingerprint` and :meth:`describe`, and override the methods of
    the capabilities they declare.  The defaults of the others raise
    :class:`BackendCapabilityError`.
    """

    #: The ``--model`` value that selects this backend.
    name: ClassVar[str] = ""
    #: What this backend can do (see the module docstring); an instance may narrow it.
    capabilities: frozenset[str] = frozenset()

    # what every instance answers; None where the backend cannot know
    model_name: str = ""
    n_layers: int | None = None  # transformer blocks (hidden states 0..n_layers)
    hidden_size: int | None = None
    vocab_size: int | None = None
    hidden_layers: tuple[int, ...] = ()  # hidden-state indices kept by score_mc

    # ------------------------------------------------------------ building
    @classmethod
    @abc.abstractmethod
    def load(cls, **model_args: Any) -> "Backend":
        """Build the backend from ``--model_args`` values (``registry.load_backend`` calls this)."""

    @classmethod
    def parse_model_args(cls, text: str | None, dtype: str | None = None,
                         base: dict[str, Any] | None = None) -> dict[str, Any]:
        """``--model_args k=v,...`` for this backend, checked; ``dtype`` is ``--dtype`` where given.

        ``base`` holds model args already in a dict (the Python API), checked the
        same way; the string's values override its.  The default accepts the
        keywords of :meth:`load`; backends with rules of their own (a required
        ``base_url``, a dtype default) override it.
        """
        import inspect

        from llmcal.backends.model_args import parse_model_args

        params = inspect.signature(cls.load).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            known: Any = _AnyKey()  # ``load(**kwargs)``: the backend checks its own keys
        else:
            known = frozenset(k for k in params if k not in ("cls", "self"))
        margs = parse_model_args(text, known=known, base=base)
        if dtype:
            margs["dtype"] = dtype
        return margs

    # ------------------------------------------------------------ capabilities
    @_class_or_instance
    def require(owner, capability: str, what_for: str) -> None:
        """Raise :class:`BackendCapabilityError` unless ``capability`` is declared.

        ``what_for`` names the caller's need ("--probe", "--chat"); the message
        suggests a built-in backend that has it.
        """
        if capability not in CAPABILITIES:
            raise ValueError(f"capability: unknown {capability!r}; known: {', '.join(CAPABILITIES)}")
        if capability in owner.capabilities:
            return
        raise BackendCapabilityError(capability_message(owner.name, capability, what_for))

    # ------------------------------------------------------------ the model
    def score_mc(self, requests: Sequence[MCRequest],
                 progress: Callable[[int], None] | None = None) -> list[MCScore]:
        """One :class:`MCScore` per request, in request order; ``progress(k)`` after ``k`` more."""
        self.require("score", "scoring multiple-choice options")
        raise NotImplementedError  # pragma: no cover (a backend declaring "score" overrides this)

    def score_tokens(self, context: str, token_ids: Sequence[int]) -> Any:
        """A (len(token_ids),) float array: ``log p(token_t | context, token_<t)`` of the given ids,
        scored as given (not re-tokenized): what conditional PMI needs.  A server's API takes text, not
        ids, so only a local model declares this."""
        self.require("score_tokens", "per-token scores of an answer's own tokens (conditional PMI)")
        raise NotImplementedError  # pragma: no cover

    def next_token_logprobs(self, prompts: Sequence[str], candidates: Sequence[str]) -> Any:
        """A (len(prompts), len(candidates)) float array: ``log p(candidate | prompt)`` of one-token
        candidates, each prompt's keys/values reused from what the backend has just computed (the
        greedy answers a follow-up quotes).  Only a local model with a prompt cache declares this;
        elsewhere the same numbers come from :meth:`score_mc`."""
        self.require("next_token", "next-token scores after a follow-up question (P(True) in the chat)")
        raise NotImplementedError  # pragma: no cover

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
        """``n`` answers per prompt (greedy when ``temperature`` is 0), each with its token evidence.

        A prompt is a string, or a conversation where ``messages`` is declared.
        ``top_k`` alternatives are kept per token; generation ends at a
        ``stop`` string, the end-of-sequence token or ``max_new_tokens``.
        """
        self.require("generate", "free-form answers")
        raise NotImplementedError  # pragma: no cover

    def apply_chat_template(self, messages: str | Messages) -> str:
        """The chat-formatted prompt text for a conversation (a string = one user message)."""
        self.require("chat_template", "--chat")
        raise NotImplementedError  # pragma: no cover

    def set_hidden_layers(self, layers: Sequence[int]) -> None:
        """Keep these hidden-state indices in every later ``score_mc`` (0 = embeddings, -1 = last)."""
        self.require("hidden_states", "set_hidden_layers")
        raise NotImplementedError  # pragma: no cover

    def count_tokens(self, text: str) -> int | None:
        """How many tokens ``text`` is for this model; None where the backend cannot tell."""
        return None

    # ------------------------------------------------------------ identity
    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A short stable hash naming the model (probes and calibrations belong to one)."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-serializable facts about the backend, with ``"backend": name`` (config.json's ``backend``)."""


def capability_message(name: str, capability: str, what_for: str) -> str:
    """"--model NAME cannot give WHAT, which WHAT_FOR needs; use --model OTHER"."""
    msg = f"--model {name} cannot give {CAPABILITIES[capability]}, which {what_for} needs"
    others = [n for n in _builtins_with(capability) if n != name]
    return msg + (f"; use --model {' or --model '.join(others)}" if others else "")


def _builtins_with(capability: str) -> list[str]:
    """The built-in backends whose class declares ``capability`` (imports their modules, not torch)."""
    from llmcal.backends.registry import BACKENDS, backend_class

    out = []
    for n in BACKENDS:
        try:
            if capability in backend_class(n).capabilities:
                out.append(n)
        except ImportError:  # pragma: no cover (a broken install: no suggestion rather than a second error)
            continue
    return out
