"""A question (+ optional options) -> the model's answer + a calibrated, presentable confidence.

:class:`Answerer` works on either backend: the transformers one in-process (the embedded model
or any HF model, as the run was made with) or the OpenAI-compatible one (an upstream server:
a calibrating proxy).  It answers a :class:`Query` with a :class:`Reply`; the HTTP layer
(:mod:`llmcal.serve.app`) only translates.

* **Multiple choice** (``options`` given): the options are scored like ``llmcal run``
  scored the run's items (same prompt style, same chat wrapping), the prediction is the
  highest summed log-likelihood, the confidence is the run's calibrated one
  (:class:`~llmcal.serve.saved.SavedCalibration`), and the alternatives are the other
  options with their (calibrated) probabilities.
* **Free form** (no options): greedy generation (``temperature`` 0) or sampled; the
  confidence is the geometric-mean token probability through the run's ``generation``
  calibrator, or raw and marked uncalibrated.  With ``samples = n > 0`` another ``n``
  answers are sampled and the distinct ones, with their frequency, are the alternatives.

``confidence=False`` skips everything after the model call (the benchmark's "plain" mode).

What the model gives back is checked before it is used: log-probabilities must be finite
numbers, one per option.  From an upstream server, anything else -- a JSON list where an
object belongs, NaN or string log-probabilities, missing fields -- is an
:class:`UpstreamError` (the HTTP layer's 502, naming the upstream), never the client's fault.
A :class:`Query` may carry a ``deadline`` (``time.monotonic()``): no model call starts after it
(:class:`DeadlineExceeded`), its own abstain threshold (``threshold``), and ask for OpenAI-shaped
token log-probabilities (``logprobs``, ``top_logprobs``).

**Hot reload.** The calibration in use is one immutable snapshot (:class:`Served`: the
:class:`SavedCalibration` and the thresholds); :meth:`Answerer.answer` takes it once and keeps
it for the whole answer, and :meth:`Answerer.reload` re-reads the run folder and swaps in a new
one with a single assignment.  A request in flight finishes with the calibration it started
with; the next one gets the new one; none is dropped.  The version of the calibration that
scored an answer is in its :class:`Reply` (``calibration_version``).
"""

from __future__ import annotations

import functools

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from llmcal.backends.base import Backend, BackendCapabilityError
from llmcal.backends.openai.retry import APIError
from llmcal.backends.registry import load_backend
from llmcal.policy import Decision, Thresholds, decide
from llmcal.serve.events import finite_signals
from llmcal.serve.saved import Confidence, SavedCalibration

#: How many options a multiple-choice question may have (the letters style names them A..Z).
MAX_OPTIONS = 26


class DeadlineExceeded(Exception):
    """The request's deadline passed before the next model call could start."""


class UpstreamError(APIError):
    """An upstream server answered something llmcal cannot use (a 502, naming the upstream)."""


class ModelOutputError(RuntimeError):
    """The local model produced scores that are not finite numbers."""


@dataclass
class Query:
    question: str  # the question; for a chat, its last user message
    options: list[str] | None = None  # multiple choice when given (2..26)
    messages: list[dict[str, str]] | None = None  # the whole chat (free form); None = just the question
    max_tokens: int = 64
    temperature: float = 0.0
    samples: int = 0  # free form: extra sampled answers for the alternatives
    seed: int = 0
    confidence: bool = True  # False: the answer only (no calibration, no policy)
    deadline: float | None = None  # time.monotonic() after which no model call starts
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)  # client left
    threshold: float | None = None  # this request's abstain threshold; None = the server's
    logprobs: bool = False  # OpenAI-shaped token log-probabilities in the reply
    top_logprobs: int = 0  # 0..20 alternatives per token (with logprobs)

    def thresholds_for(self, served: Thresholds) -> Thresholds:
        """The thresholds this request is decided by: the server's, or abstain at ``threshold`` (and
        "very sure" no lower than it: a threshold above the server's ``high`` raises ``high`` with it)."""
        if self.threshold is None:
            return served
        return Thresholds(high=max(served.high, self.threshold), abstain=self.threshold)


@dataclass
class Reply:
    kind: str  # "multiple_choice" | "free_form"
    model_answer: str
    decision: Decision | None
    confidence: Confidence | None
    thresholds: Thresholds | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    timing_ms: dict[str, float] = field(default_factory=dict)  # model, confidence
    logprobs: list[dict[str, Any]] | None = None  # OpenAI's choice.logprobs.content, when asked for
    calibration_version: str = "none"  # SavedCalibration.version of the calibration that scored it
    run: str = ""  # the run folder's name
    model_fingerprint: str = ""  # the backend's fingerprint()

    @property
    def abstained(self) -> bool:
        return bool(self.decision and self.decision.abstained)

    @property
    def signals(self) -> dict[str, float]:
        """The answer's raw signal values (finite ones; none without a confidence)."""
        return finite_signals(self.confidence.signals if self.confidence is not None else None)

    def content(self, refuse: bool = False) -> str:
        """The message content: the model's answer; with ``refuse``, the safe refusal when the policy abstains
        (the OpenAI-compatible default keeps the answer and says "abstained" in the confidence object)."""
        return self.decision.sentence if refuse and self.abstained else self.model_answer

    def confidence_dict(self) -> dict[str, Any] | None:
        if self.decision is None or self.confidence is None:
            return None
        d, c = self.decision, self.confidence
        out = {
            "score": d.score, "level": d.level, "colour": d.colour, "sentence": d.sentence, "action": d.action,
            "abstained": d.abstained, "answer": d.answer, "model_answer": self.model_answer,
            "alternatives": d.alternatives, "signal": c.signal, "calibrator": c.calibrator,
            "calibrated": c.calibrated, "raw_score": c.raw_score, "kind": self.kind,
            "calibration_version": self.calibration_version,
        }
        if c.in_distribution is not None:  # the probe's shift score: False marks the confidence as unreliable
            out["in_distribution"] = bool(c.in_distribution)
        if self.thresholds is not None:
            out["thresholds"] = {"high": self.thresholds.high, "abstain": self.thresholds.abstain}
        if not c.calibrated:
            out["note"] = (f"uncalibrated: the raw {c.signal} signal; no calibrator was fitted for "
                           f"{self.kind.replace('_', '-')} answers in this run")
        return out


def normalize_answer(text: str) -> str:
    """Lower case, punctuation to spaces, spaces collapsed: what makes two sampled answers "the same"."""
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


def group_samples(answer: str, texts: list[str]) -> list[tuple[str, float]]:
    """Distinct sampled answers with their frequency; the group of ``answer`` is named ``answer``."""
    counts: dict[str, list] = {}
    for t in texts:
        key = normalize_answer(t)
        counts.setdefault(key, [t.strip(), 0])[1] += 1
    key = normalize_answer(answer)
    if key in counts:
        counts[key][0] = answer
    n = max(len(texts), 1)
    return sorted(((text, k / n) for text, k in counts.values()), key=lambda c: -c[1])


def _ms(t0: float) -> float:
    return round(1000.0 * (time.perf_counter() - t0), 3)


#: Sampling temperature for the alternatives when the request asks for greedy answers.
SAMPLE_TEMPERATURE = 0.7


def _token_entry(token: str, logprob: float) -> dict[str, Any]:
    """One token as OpenAI's ``logprobs.content`` lists it: ``{token, logprob, bytes}``."""
    return {"token": token, "logprob": float(logprob), "bytes": list(token.encode("utf-8"))}


def mc_logprobs(options: list[str], logprobs: np.ndarray, pred: int, top: int) -> list[dict[str, Any]]:
    """A multiple-choice answer in OpenAI's ``logprobs.content`` shape: one entry, the chosen option
    as one "token" with its summed log-likelihood, and the ``top`` most likely options as its
    ``top_logprobs`` (the options are what was scored; their tokens are not)."""
    order = np.argsort(-logprobs, kind="stable")[:top]
    entry = _token_entry(options[pred], logprobs[pred])
    entry["top_logprobs"] = [_token_entry(options[i], logprobs[i]) for i in order]
    return [entry]


def generation_logprobs(gen, top: int, token_text: Callable[[int], str] | None = None) -> list[dict[str, Any]]:
    """A free-form answer's tokens in OpenAI's ``logprobs.content`` shape.

    A token's text is found among its step's alternatives by its log-probability (the chosen token is
    one of them whenever it was among the ``top_k`` kept: always, when greedy); a sampled token outside
    them is decoded from its id with ``token_text`` (a local model's tokenizer), and only where neither
    is available (an API backend that returned no ids) listed with the text ``""``."""
    out = []
    ids = list(getattr(gen, "token_ids", None) or [])
    for i, lp in enumerate(np.asarray(gen.token_logprobs, dtype=np.float64)):
        row = gen.top_logprobs[i] if i < len(gen.top_logprobs) else []
        text = next((t for t, v in row if abs(float(v) - lp) <= 1e-6 * max(1.0, abs(lp))), None)
        if text is None:
            text = token_text(ids[i]) if token_text is not None and i < len(ids) else ""
        entry = _token_entry(text, lp)
        entry["top_logprobs"] = [_token_entry(t, v) for t, v in row[:top]]
        out.append(entry)
    return out


def mc_reply(q: Query, options: list[str], logprobs, n_tokens, saved: SavedCalibration, thresholds: Thresholds,
             timing: dict[str, float], prompt_tokens: int, sample=None, hidden=None, positions=None) -> Reply:
    """A multiple-choice :class:`Reply` from the options' log-likelihoods (k,) and token counts (k,)."""
    t1 = time.perf_counter()
    ll = np.asarray(logprobs, dtype=np.float64)  # (k,)
    pred = int(np.argmax(ll))
    usage = {"prompt_tokens": int(prompt_tokens), "completion_tokens": int(n_tokens[pred]),
             "logprobs": mc_logprobs(options, ll, pred, q.top_logprobs) if q.logprobs else None,
             "calibration_version": saved.version, "run": saved.path.name if saved.path else ""}
    if not q.confidence:
        return Reply("multiple_choice", options[pred], None, None, None, timing_ms=timing, **usage)
    thresholds = q.thresholds_for(thresholds)
    pred, conf = saved.mc(ll, n_tokens, sample, hidden, positions)
    decision = decide(conf.score, options[pred], list(zip(options, conf.probs.tolist())), thresholds)
    timing["confidence"] = _ms(t1)
    return Reply("multiple_choice", options[pred], decision, conf, thresholds, timing_ms=timing, **usage)


def free_form_reply(q: Query, gen, saved: SavedCalibration, thresholds: Thresholds, timing: dict[str, float],
                    usage: dict[str, Any], sample: Callable[[int, float], list[str]],
                    vocab_size: int | None = None, token_text: Callable[[int], str] | None = None) -> Reply:
    """A free-form :class:`Reply` from the answer's :class:`~llmcal.core.requests.Generation`.

    ``sample(n, temperature)`` draws ``n`` more answers (only called when ``q.samples > 0``);
    ``vocab_size`` scales ``entropy_conf`` as the open-ended run did; ``token_text(id)`` names a
    sampled token that is not among its step's alternatives (see :func:`generation_logprobs`).
    """
    from llmcal.signals.generation import token_signals

    text = gen.text.strip()
    usage = {**usage, "logprobs": generation_logprobs(gen, q.top_logprobs, token_text) if q.logprobs else None,
             "calibration_version": saved.version, "run": saved.path.name if saved.path else ""}
    if not q.confidence:
        return Reply("free_form", text, None, None, None, timing_ms=timing, **usage)
    thresholds = q.thresholds_for(thresholds)
    t1 = time.perf_counter()
    conf = saved.generation(token_signals(gen, vocab_size))
    candidates = [(text, conf.score)]
    if q.samples > 0:
        t2 = time.perf_counter()
        candidates = group_samples(text, sample(q.samples, q.temperature or SAMPLE_TEMPERATURE))
        timing["samples"] = _ms(t2)
    decision = decide(conf.score, text, candidates, thresholds)
    timing["confidence"] = round(_ms(t1) - timing.get("samples", 0.0), 3)
    return Reply("free_form", text, decision, conf, thresholds, timing_ms=timing, **usage)


@dataclass(frozen=True)
class Served:
    """The calibration being served: swapped whole by :meth:`Answerer.reload`, read once per answer."""

    saved: SavedCalibration
    thresholds: Thresholds


class Answerer:
    """Answers with a :class:`~llmcal.backends.base.Backend`: ``hf`` (the embedded model or any HF
    model, in this process) or ``openai`` (an upstream OpenAI-compatible server: a calibrating
    proxy in front of vLLM or llama.cpp).

    :meth:`answer` is called from the server's single model worker; :meth:`reload` may run on any
    thread meanwhile (it swaps :attr:`served` whole; an answer in progress keeps the one it took).

    ``thresholds``: fixed thresholds (a reload keeps them); without them the run's, with ``high`` /
    ``abstain`` overriding its values (a reload re-reads the run's).
    """

    def __init__(self, backend: Backend, saved: SavedCalibration | None = None,
                 thresholds: Thresholds | None = None, *, high: float | None = None, abstain: float | None = None,
                 use_probe: bool = True) -> None:
        self.backend = backend
        self.model_name = str(backend.model_name or "model")
        self.model_fingerprint = str(backend.fingerprint())
        self._fixed_thresholds = thresholds
        self._overrides = (high, abstain)
        self._use_probe = use_probe
        self._reloading = threading.Lock()
        self.served = self._serve(saved or SavedCalibration.none(), startup=True)

    def _serve(self, saved: SavedCalibration, startup: bool = False) -> Served:
        """``saved`` made ready for this backend (its probe checked and attached), with its thresholds."""
        if saved.probe is not None:
            if "hidden_states" in self.backend.capabilities:
                self._attach_probe(saved, startup)
            else:  # no hidden states over an API: the run's calibrator, not `combined`
                saved.probe = None
        return Served(saved, self._fixed_thresholds or saved.thresholds(*self._overrides))

    @property
    def saved(self) -> SavedCalibration:
        return self.served.saved

    @property
    def thresholds(self) -> Thresholds:
        return self.served.thresholds

    def reload(self) -> str:
        """Re-read the run folder's ``calibration.json`` (and probe) and serve it from the next answer on;
        returns its version.  Refused (ValueError) without a run folder, or when the new calibration
        belongs to other weights than the ones served; a damaged file leaves the old calibration in use."""
        with self._reloading:
            old = self.served.saved
            if old.path is None:
                raise ValueError("nothing to reload: the server runs without a run folder (--run)")
            new = SavedCalibration.from_run(old.path, use_probe=self._use_probe)
            if new.model_args != old.model_args:
                raise ValueError(f"{old.path / 'calibration.json'}: fitted for the model {new.model_args}, but "
                                 f"{old.model_args} is served; a calibration belongs to its model: restart the "
                                 "server to serve another model")
            self.served = self._serve(new)  # one assignment: the next answer sees all of it
            return new.version

    @classmethod
    def load(cls, run: str | Path | None = None, model_args: dict[str, Any] | None = None,
             high: float | None = None, abstain: float | None = None, use_probe: bool = True,
             upstream: dict[str, Any] | None = None,
             upstream_defaults: dict[str, Any] | None = None) -> "Answerer":
        """The run's model with the run's calibration.

        ``run=None``: ``model_args``' model (empty: the embedded one), uncalibrated.
        ``upstream``: ``load_backend("openai", ...)`` arguments (``base_url``, ``model``,
        ``api_key_env``, ...): that server answers, the run calibrates (it should be the same model's run).
        ``upstream_defaults``: arguments for a server that answers (``timeout``, ``max_retries``) where
        neither ``upstream`` nor the run's model args set them.
        """
        saved = SavedCalibration.from_run(run, use_probe=use_probe) if run else SavedCalibration.none()
        margs = dict(saved.model_args)
        if model_args:
            if run and {**margs, **model_args} != margs:
                raise ValueError(f"--model_args {model_args} differ from the run's {margs}: a calibration "
                                 "belongs to the model it was fitted on; serve that run's model or another run")
            margs.update(model_args)
        if upstream or "base_url" in margs:  # a server answers (--upstream, or a run made with --model openai)
            args = dict(upstream or {k: v for k, v in margs.items() if k != "batch_size"})
            for k, v in (upstream_defaults or {}).items():
                args.setdefault(k, v)
            backend = load_backend("openai", **args)
        else:
            backend = load_backend("hf", **margs)
        return cls(backend, saved, high=high, abstain=abstain, use_probe=use_probe)

    def _attach_probe(self, saved: SavedCalibration, startup: bool) -> None:
        """Keep the hidden layers the probe reads, after checking it belongs to these weights.

        A reload may not change them while answers are running: a probe that reads other layers than
        the ones kept now is refused (restart the server for it)."""
        from llmcal.probe.features import ModelInfo, abs_layer

        art, be = saved.probe, self.backend
        layers = [abs_layer(i, be.n_layers) for i in art.model.layers]
        art.check_model(ModelInfo(be.model_name, self.model_fingerprint, be.n_layers, be.hidden_size, layers))
        if startup:  # before any answer
            be.set_hidden_layers(layers)
        elif tuple(be.hidden_layers) != tuple(layers):
            raise ValueError(f"{saved.path}: the new probe reads hidden layers {layers}, the served one "
                             f"{list(be.hidden_layers)}; restart the server to change them")

    def describe(self) -> dict[str, Any]:
        served = self.served
        return {"model": self.model_name, "backend": self.backend.name, **served.saved.describe(),
                "thresholds": {"high": served.thresholds.high, "abstain": served.thresholds.abstain}}

    # ------------------------------------------------------------ answering
    def answer(self, q: Query) -> Reply:
        served = self.served  # once: a reload during this answer applies from the next one
        reply = self._multiple_choice(q, served) if q.options is not None else self._free_form(q, served)
        reply.model_fingerprint = self.model_fingerprint
        return reply

    @functools.cached_property
    def upstream(self) -> str | None:
        """The upstream server's URL when a server answers (its ``describe()`` names one), else None.

        Read only on error paths, where an answer has to say whose fault it was; fixed once loaded."""
        url = self.backend.describe().get("base_url")
        return str(url) if url else None

    def _call(self, q: Query, what: str, fn, *args, **kwargs):
        """One model call: not after ``q.deadline``; an upstream's unreadable answer -> :class:`UpstreamError`."""
        if q.deadline is not None and time.monotonic() >= q.deadline:
            raise DeadlineExceeded(f"the deadline passed before {what}")
        if q.cancelled.is_set():
            raise DeadlineExceeded(f"the client left before {what}")
        try:
            return fn(*args, **kwargs)
        except (APIError, BackendCapabilityError, DeadlineExceeded):
            raise
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, ArithmeticError) as err:
            if self.upstream is None:
                raise
            raise UpstreamError(f"{self.upstream} answered {what} with something llmcal cannot use "
                                f"({type(err).__name__}: {err})") from err

    def _bad_output(self, message: str) -> Exception:
        if self.upstream is not None:
            return UpstreamError(f"{self.upstream} answered {message}")
        return ModelOutputError(f"the model produced {message}")

    def _check_score(self, score, k: int):
        try:
            lp = np.asarray(score.logprobs, dtype=np.float64)
            nt = np.asarray(score.n_tokens)
        except (TypeError, ValueError, AttributeError) as err:
            raise self._bad_output(f"the options' log-probabilities with non-numbers ({err})") from None
        if lp.shape != (k,) or nt.shape != (k,):
            raise self._bad_output(f"{lp.size} log-probabilities for {k} options")
        if not np.isfinite(lp).all() or (lp > 1e-3).any():
            raise self._bad_output(f"log-probabilities that are not finite numbers <= 0: {lp.tolist()}")
        return score

    def _check_generation(self, gen):
        text = getattr(gen, "text", None)
        if not isinstance(text, str):
            raise self._bad_output(f"an answer that is not text ({type(text).__name__})")
        try:
            lp = np.asarray(gen.token_logprobs, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise self._bad_output(f"token log-probabilities with non-numbers ({err})") from None
        if lp.ndim != 1 or not np.isfinite(lp).all() or (lp > 1e-3).any():
            raise self._bad_output("token log-probabilities that are not finite numbers <= 0")
        return gen

    def _token_text(self) -> Callable[[int], str] | None:
        """One token id's text, from a local model's tokenizer (None for a backend without one)."""
        tok = getattr(self.backend, "tokenizer", None)
        if tok is None or not hasattr(tok, "decode"):
            return None
        return lambda token_id: tok.decode([int(token_id)])

    def _count_tokens(self, text: str) -> int:
        return self.backend.count_tokens(text) or 0  # an API backend cannot tell: 0, not known

    def _multiple_choice(self, q: Query, served: Served) -> Reply:
        from llmcal.core.items import MCItem
        from llmcal.tasks.prompts import build_request

        options = [str(o) for o in q.options or []]
        if not 2 <= len(options) <= MAX_OPTIONS:
            raise ValueError(f"options: need 2 to {MAX_OPTIONS}, got {len(options)}")
        saved = served.saved
        item = MCItem("serve", "serve", q.question, tuple(options), 0)
        chat = self.backend.apply_chat_template if saved.chat else None
        req = build_request(item, saved.style, chat)
        t0 = time.perf_counter()
        scores = self._call(q, "the scoring request", self.backend.score_mc, [req])
        if not isinstance(scores, (list, tuple)) or len(scores) != 1:
            raise self._bad_output("the scoring request with the wrong number of scores")
        score = self._check_score(scores[0], len(options))
        timing = {"model": _ms(t0)}
        t1 = time.perf_counter()
        sample = hidden = positions = None
        if q.confidence and saved.probe is not None:
            from llmcal.pipeline.measure import hidden_rows, sample_record

            sample = sample_record(item, req.context, score, saved.style, None)
            rows, positions = hidden_rows([score])  # (1, n_positions * n_kept, hidden)
            hidden = rows[0]
        probe_ms = _ms(t1)
        reply = mc_reply(q, options, np.asarray(score.logprobs, dtype=np.float64), score.n_tokens, saved,
                         served.thresholds, timing,
                         self._count_tokens(req.context), sample, hidden, positions)
        if "confidence" in reply.timing_ms:  # the probe's inputs are part of what the confidence costs
            reply.timing_ms["confidence"] = round(reply.timing_ms["confidence"] + probe_ms, 3)
        return reply

    def _prompt(self, q: Query, saved: SavedCalibration) -> tuple[str, tuple[str, ...]]:
        """The free-form prompt, asked as an open-ended run asks (``pipeline.measure_open``), so a
        ``generation`` calibrator fitted on such a run applies: the last user message becomes
        "Answer the question in a few words.\n\nQuestion: ...", earlier turns stay, the model's chat
        template wraps it (an upstream's server applies its own), and the answer ends at the line.
        """
        from llmcal.pipeline.measure_open import chat_prompt
        from llmcal.tasks.prompts import INSTRUCTION

        msgs = [dict(m) for m in (q.messages or [{"role": "user", "content": q.question}])]
        last = max(i for i, m in enumerate(msgs) if m["role"] == "user")
        msgs[last]["content"] = f"{INSTRUCTION}\n\nQuestion: {msgs[last]['content'].strip()}"
        if "messages" in self.backend.capabilities:  # the server templates (its own model's template)
            return msgs[last]["content"], ("\n",)
        return chat_prompt(self.backend, msgs, saved.gen_chat), ("\n",)

    def _generate(self, q: Query, prompt: str, **kwargs) -> list:
        from llmcal.backends.hf_generation import stop_when

        with stop_when(q.cancelled):  # a local model stops generating once the client has left
            out = self._call(q, "the generation request", self.backend.generate, [prompt], **kwargs)
        try:
            (gens,) = out
            gens = list(gens)
        except (TypeError, ValueError):
            raise self._bad_output("the generation request with the wrong number of answers") from None
        return [self._check_generation(g) for g in gens]

    def _free_form(self, q: Query, served: Served) -> Reply:
        prompt, stop = self._prompt(q, served.saved)
        t0 = time.perf_counter()
        top_k = max(5, q.top_logprobs if q.logprobs else 0)
        gens = self._generate(q, prompt, max_new_tokens=q.max_tokens, temperature=q.temperature, n=1, seed=q.seed,
                              top_k=top_k, stop=stop)
        if len(gens) != 1:
            raise self._bad_output(f"{len(gens)} answers where 1 was asked for")
        g = gens[0]
        timing = {"model": _ms(t0)}
        usage = {"prompt_tokens": self._count_tokens(prompt), "completion_tokens": len(g.token_logprobs),
                 "finish_reason": g.finish_reason or "stop"}

        def sample(n: int, temperature: float) -> list[str]:
            more = self._generate(q, prompt, max_new_tokens=q.max_tokens, temperature=temperature, n=n,
                                  seed=q.seed + 1, top_k=0, stop=stop)
            return [m.text for m in more]

        return free_form_reply(q, g, served.saved, served.thresholds, timing, usage, sample, self.backend.vocab_size,
                               self._token_text())
