"""Step 1 of an open-ended run: generate, grade, and compute every confidence signal.

For each question (batched, resumable like :mod:`llmcal.pipeline.measure`):

1. the greedy answer (or, for the temperature sweep, one sampled at
   ``answer_temperature``), with its token log-probabilities (``Backend.generate``),
   graded by the item's grader (``tasks/graders``); the token-probability
   signals come free with it (``signals/generation``);
2. ``ptrue``: one scoring pass over "Is the proposed answer True/False?"
   (``signals/ptrue``, Kadavath et al. 2022); ``ptrue_chat`` the same question as a
   follow-up turn of the answer's conversation, asked right after each greedy call so
   that a local model reuses the answers' keys/values and prefills only the follow-up;
3. ``verbalized`` / ``verbalized_percent``: the brief's follow-up question
   in the same conversation, a short greedy reply, parsed
   (``signals/verbalized``); unreadable replies are recorded as missing;
4. ``agreement`` / ``semantic_entropy``: ``k`` answers sampled at
   ``sample_temperature``, clustered by meaning with the greedy one
   (``signals/agreement``, ``backends/embedder``).

Items go in chunks of :data:`CHUNK`; a chunk's records are appended together, so an
interrupted run redoes at most one chunk.  A local model decodes a chunk's prompts (and
their ``k`` samples) up to ``decode_rows`` rows a step, prompts joining as rows finish
(:func:`llmcal.backends.lean_decode.decode`): 32 items a chunk rather than 16 keeps the
steps wide, 1.13x on the default free-form set (docs/benchmarks.md, "Continuous batching").

Each record keeps what each signal cost (seconds, extra forward passes,
extra generated tokens, per item) so ``benchmarks/signals.py`` can tabulate it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

CHUNK = 32  # items answered together (see the module docstring)

from llmcal.core.sample import Sample
from llmcal.records.run_dir import RunDir
from llmcal.tasks.graders import grade, normalize
from llmcal.core.items import OpenItem
from llmcal.tasks import prompts
from llmcal.tasks.prompts import render, user_message

FAMILIES = ("tokens", "ptrue", "ptrue_chat", "verbalized", "verbalized_percent", "agreement", "sampled", "pmi",
            "sar", "ccp", "cpmi")
SAMPLE_FAMILIES = ("agreement", "sampled", "sar")  # the families that read the k sampled answers (helper E)
DEFAULT_FAMILIES = ("tokens", "ptrue_chat", "verbalized", "agreement")


@dataclass
class OpenSettings:
    """What an open-ended run generates and which signals it computes."""

    families: tuple[str, ...] = DEFAULT_FAMILIES
    k_samples: int = 5
    sample_temperature: float = 0.8
    max_new_tokens: int = 32
    max_new_tokens_math: int = 192
    chat: bool = True
    seed: int = 0
    embedder_dir: str | None = None
    answer_temperature: float = 0.0  # 0 = the greedy answer; > 0 = a sampled one (the temperature sweep)
    nli_model: str | None = None  # an NLI cross-encoder (hub name or folder) for meaning; None = embeddings

    def __post_init__(self) -> None:
        bad = [f for f in self.families if f not in FAMILIES]
        if bad:
            raise ValueError(f"--signals: unknown {bad}; known: {', '.join(FAMILIES)}")
        if set(SAMPLE_FAMILIES) & set(self.families) and self.k_samples < 2:
            raise ValueError(f"--k_samples: agreement needs at least 2 samples, got {self.k_samples}")
        if self.sample_temperature <= 0:
            raise ValueError(f"--sample_temperature must be > 0, got {self.sample_temperature}")
        if self.answer_temperature < 0:
            raise ValueError(f"answer temperature must be >= 0, got {self.answer_temperature}")

    def to_dict(self) -> dict[str, Any]:
        out = {**asdict(self), "families": list(self.families)}
        if out["nli_model"] is None:  # absent unless given: a run folder written before it existed still resumes
            del out["nli_model"]
        return out


def chat_template_of(backend, chat: bool):
    """How this backend turns a conversation into its prompt (see :func:`llmcal.tasks.prompts.render`).

    A backend that takes whole conversations (``"messages"``: the openai backend on its
    chat endpoint) gets the messages themselves, so the server applies its own model's
    template, as it would for any client; a backend with a chat template applies it;
    without ``chat`` (or a template) the conversation is plain ``Question:/Answer:`` text.
    """
    if not chat:
        return None
    if "messages" in backend.capabilities:
        return list
    if "chat_template" in backend.capabilities:
        return backend.apply_chat_template
    return None


def chat_prompt(backend, messages: list[dict[str, str]], chat: bool) -> str | list[dict[str, str]]:
    """The prompt for a conversation on this backend (its chat template, the messages, or plain text)."""
    return render(messages, chat_template_of(backend, chat))


def answer_prompt(backend, item: OpenItem, chat: bool) -> str | list[dict[str, str]]:
    """The prompt asking for ``item``'s answer on this backend (:func:`llmcal.tasks.prompts.answer_prompt`)."""
    return prompts.answer_prompt(item, chat_template_of(backend, chat))


def _stop(item: OpenItem) -> tuple[str, ...]:
    return () if item.grader == "numeric" else ("\n",)


def _max_tokens(item: OpenItem, s: OpenSettings) -> int:
    return s.max_new_tokens_math if item.grader == "numeric" else s.max_new_tokens


def measure_open(
    run: RunDir,
    items: Sequence[OpenItem],
    backend_factory: Callable[[], Any],
    settings: OpenSettings,
    chunk: int = CHUNK,
    progress: bool = True,
    embedder_factory: Callable[[], Any] | None = None,
) -> int:
    """Answer the items not yet recorded; return how many were answered now."""
    from llmcal.pipeline.measure import _progress, check_resume

    recorded = run.repair()
    check_resume(run, recorded, items)
    done = {s.id for s in recorded}
    todo = [it for it in items if it.id not in done]
    if not todo:
        return 0
    backend = backend_factory()
    embedder = None
    if set(SAMPLE_FAMILIES) & set(settings.families):
        if embedder_factory is None:
            from llmcal.backends.embedder import Embedder

            embedder = Embedder(settings.embedder_dir)
        else:
            embedder = embedder_factory()
    nli = None
    if settings.nli_model:  # meaning by bidirectional entailment instead of embeddings (helper E)
        from llmcal.backends.nli import NLIModel

        nli = NLIModel(settings.nli_model)
    bar = _progress(progress, total=len(items), done=len(done), label="answering")
    try:
        for start in range(0, len(todo), chunk):
            batch = todo[start: start + chunk]
            # one call per stop/length group keeps batches homogeneous (GSM8K reasons at length)
            records = answer_batch(backend, batch, settings, embedder, seed=settings.seed + start, nli=nli)
            run.append(records, None)
            bar.advance(len(batch))
    finally:
        bar.close()
    return len(todo)


def answer_batch(backend, items: Sequence[OpenItem], s: OpenSettings, embedder=None,
                 seed: int = 0, nli=None) -> list[Sample]:
    """Every record for one batch of items (see the module docstring), validated as Samples."""
    from llmcal.pipeline.measure import item_hash
    from llmcal.signals.generation import token_signals

    vocab = backend.vocab_size  # None over an API
    n = len(items)
    prompts = [answer_prompt(backend, it, s.chat) for it in items]
    cost: list[dict[str, dict[str, float]]] = [{} for _ in items]
    greedy = [None] * n
    chat_ptrue: dict[int, float] = {}
    t0, t_chat = time.perf_counter(), 0.0
    for group in _groups(items):
        gens = backend.generate([prompts[i] for i in group], max_new_tokens=_max_tokens(items[group[0]], s),
                        temperature=s.answer_temperature, seed=seed + 7919, stop=_stop(items[group[0]]))
        for i, g in zip(group, gens):
            greedy[i] = g[0]
        if "ptrue_chat" in s.families:  # now, while the backend holds these answers' keys/values
            t1 = time.perf_counter()
            chat_ptrue.update(ptrue_chat(backend, items, group, greedy, s))
            t_chat += time.perf_counter() - t1
    per = (time.perf_counter() - t0 - t_chat) / n
    for i in range(n):
        cost[i]["greedy"] = {"seconds": per, "forward_passes": 0, "gen_tokens": 0,
                             "answer_tokens": len(greedy[i].token_ids)}
    records = []
    for i, it in enumerate(items):
        g = greedy[i]
        records.append({
            "id": it.id, "task": it.task, "kind": "open", "prompt": prompts[i], "question": it.question,
            "answers": list(it.answers), "grader": it.grader, "prediction_text": g.text,
            "correct": bool(grade(it.grader, g.text, it.answers, it.incorrect, question=it.question)),
            "finish_reason": g.finish_reason, "n_tokens": len(g.token_ids),
            "signals": {}, "missing": [], "meta": it.meta, "cost": cost[i], "item_hash": item_hash(it),
        })
        if "tokens" in s.families:
            records[i]["signals"].update(token_signals(g, vocab))
            if np.isnan(records[i]["signals"]["first_token_margin"]):
                del records[i]["signals"]["first_token_margin"]
                records[i]["missing"].append("first_token_margin")
            cost[i]["tokens"] = {"seconds": 0.0, "forward_passes": 0, "gen_tokens": 0}

    if "ptrue" in s.families:
        from llmcal.signals.ptrue import ptrue_from_logprobs, ptrue_request

        t0 = time.perf_counter()
        scores = backend.score_mc([ptrue_request(it.question, greedy[i].text) for i, it in enumerate(items)])
        per = (time.perf_counter() - t0) / n
        for i, sc in enumerate(scores):
            records[i]["signals"]["ptrue"] = ptrue_from_logprobs(sc.logprobs[0], sc.logprobs[1])
            cost[i]["ptrue"] = {"seconds": per, "forward_passes": 1, "gen_tokens": 0}

    if "ptrue_chat" in s.families:
        for i in range(n):
            records[i]["signals"]["ptrue_chat"] = chat_ptrue[i]
            cost[i]["ptrue_chat"] = {"seconds": t_chat / n, "forward_passes": 1, "gen_tokens": 0}

    for family, scale in (("verbalized", "1-10"), ("verbalized_percent", "percent")):
        if family in s.families:
            _verbalized(backend, items, greedy, records, s, family, scale)

    if "pmi" in s.families:
        _pmi(backend, items, greedy, records, s)

    if "cpmi" in s.families:
        _cpmi(backend, items, greedy, records, s)

    if "ccp" in s.families:
        _ccp(greedy, records, nli)

    if set(SAMPLE_FAMILIES) & set(s.families):
        t0 = time.perf_counter()
        sampled: list[list[str]] = [[] for _ in items]
        sampled_gens: list[list[Any]] = [[] for _ in items]
        gen_tokens = [0] * n
        for group in _groups(items):
            gens = backend.generate([prompts[i] for i in group], max_new_tokens=_max_tokens(items[group[0]], s),
                            temperature=s.sample_temperature, n=s.k_samples, seed=seed,
                            stop=_stop(items[group[0]]))
            for i, g in zip(group, gens):
                sampled[i] = [x.text for x in g]
                sampled_gens[i] = list(g)
                gen_tokens[i] = sum(len(x.token_ids) for x in g)
        per_gen = (time.perf_counter() - t0) / n
        t1 = time.perf_counter()
        if "agreement" in s.families:
            _agreement(items, greedy, sampled, records, embedder, nli)
        if {"sampled", "sar"} & set(s.families):
            _sample_estimators(greedy, sampled_gens, records, s, embedder, nli)
        per_embed = (time.perf_counter() - t1) / n
        for i in range(n):
            cost[i]["agreement" if "agreement" in s.families else "sampled"] = {
                "seconds": per_gen + per_embed, "forward_passes": 0,
                                    "gen_tokens": gen_tokens[i], "samples": s.k_samples}
    return [Sample.from_dict(r, where=f"item {r['id']!r} (task {r['task']})") for r in records]


def _groups(items: Sequence[OpenItem]) -> list[list[int]]:
    """Indices grouped by generation settings (math items reason at length, others stop at a newline)."""
    out: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        out.setdefault("math" if it.grader == "numeric" else "short", []).append(i)
    return list(out.values())


def ptrue_chat(backend, items, group: list[int], greedy, s: OpenSettings) -> dict[int, float]:
    """P(True) asked after the answer in its conversation (signals/ptrue), for the items of ``group``.

    Rendered as the PMI prompts are (the chat template where the backend has one, else plain
    text), so it is a scoring prompt on every backend; a backend with ``next_token`` scores the
    reply's first token from its cached keys/values, any other scores the two candidates.
    """
    from llmcal.core.requests import MCRequest
    from llmcal.signals.ptrue import CHAT_QUESTION, chat_candidates, ptrue_from_logprobs
    from llmcal.tasks.prompts import followup_messages

    template = backend.apply_chat_template if s.chat and "chat_template" in backend.capabilities else None
    texts = [render(followup_messages(items[i], greedy[i].text, CHAT_QUESTION), template)
             for i in group]
    cands = [chat_candidates(t) for t in texts]
    lps = None
    if "next_token" in backend.capabilities and len(set(cands)) == 1:
        try:
            lps = backend.next_token_logprobs(texts, cands[0])  # (len(group), 2)
        except ValueError:  # a candidate is not one token in this vocabulary: score it
            lps = None
    if lps is None:
        lps = [sc.logprobs for sc in backend.score_mc([MCRequest(t, c) for t, c in zip(texts, cands)])]
    return {i: ptrue_from_logprobs(lp[0], lp[1]) for i, lp in zip(group, lps)}


def _verbalized(backend, items, greedy, records, s: OpenSettings, family: str, scale: str) -> None:
    from llmcal.signals.verbalized import SCALES, parse_confidence

    t0 = time.perf_counter()
    prompts = [chat_prompt(backend, [
        {"role": "user", "content": user_message(it)},
        {"role": "assistant", "content": greedy[i].text or "(no answer)"},
        {"role": "user", "content": SCALES[scale]},
    ], s.chat) for i, it in enumerate(items)]
    gens = backend.generate(prompts, max_new_tokens=12, temperature=0.0, stop=("\n",))
    per = (time.perf_counter() - t0) / len(items)
    for i, g in enumerate(gens):
        reply = g[0].text
        value = parse_confidence(reply, scale)
        records[i].setdefault("replies", {})[family] = reply
        if value is None:
            records[i]["missing"].append(family)
        else:
            records[i]["signals"][family] = float(value)
        records[i]["cost"][family] = {"seconds": per, "forward_passes": 0, "gen_tokens": len(g[0].token_ids)}


def _agreement(items, greedy, sampled, records, embedder, nli=None) -> None:
    from llmcal.signals.agreement import cluster_agreement, cluster_answers, semantic_entropy_conf

    texts = [[greedy[i].text] + sampled[i] for i in range(len(items))]
    flat = [t or "(no answer)" for ts in texts for t in ts]
    emb = embedder.encode(flat) if embedder is not None else None
    offset = 0
    for i, ts in enumerate(texts):
        if nli is not None:  # bidirectional entailment (Kuhn et al. 2023)
            from llmcal.signals.similarity import cluster_by_entailment, from_nli

            ids = cluster_by_entailment(from_nli(nli.pair_probs(ts)))
        elif emb is not None:
            ids = cluster_answers(ts, emb[offset: offset + len(ts)])
        else:  # no embedder: normalized text equality
            keys = {}
            ids = np.array([keys.setdefault(normalize(t), len(keys)) for t in ts])
        offset += len(ts)
        records[i]["samples"] = sampled[i]
        records[i]["cluster_ids"] = [int(x) for x in ids]
        records[i]["signals"]["agreement"] = cluster_agreement(ids)
        records[i]["signals"]["semantic_entropy"] = semantic_entropy_conf(ids)


def _pmi(backend, items, greedy, records, s: OpenSettings) -> None:
    """PMI (signals/pmi): the answer scored after its prompt and after the prompt without the question."""
    from llmcal.core.requests import MCRequest
    from llmcal.signals.pmi import pmi_signal
    from llmcal.tasks.prompts import plain_prompt

    template = backend.apply_chat_template if s.chat and "chat_template" in backend.capabilities else None
    reqs = []
    for it, g in zip(items, greedy):
        full = [{"role": "user", "content": user_message(it)}]
        answer = (g.text or " ",)
        reqs += [MCRequest(template(full) if template else plain_prompt(full), answer),
                 MCRequest(_bare_prompt(backend, it, s), answer)]
    t0 = time.perf_counter()
    scores = backend.score_mc(reqs)
    per = (time.perf_counter() - t0) / len(items)
    for i, g in enumerate(greedy):
        full, bare = scores[2 * i], scores[2 * i + 1]
        records[i]["signals"].update(pmi_signal(full.logprobs[0], bare.logprobs[0], int(full.n_tokens[0])))
        records[i]["cost"]["pmi"] = {"seconds": per, "forward_passes": 2, "gen_tokens": 0}


def _bare_prompt(backend, item: OpenItem, s: OpenSettings):
    """The answer prompt with the question removed (PMI's unconditional context)."""
    from llmcal.tasks.prompts import plain_prompt

    template = backend.apply_chat_template if s.chat and "chat_template" in backend.capabilities else None
    bare = [{"role": "user", "content": user_message(item).replace(item.question.strip(), "")}]
    return template(bare) if template else plain_prompt(bare)


def _cpmi(backend, items, greedy, records, s: OpenSettings) -> None:
    """Conditional PMI (signals/pmi): the answer's own tokens scored one by one after the bare prompt
    (one forward pass per answer); missing on a backend without per-token scoring."""
    from llmcal.signals.pmi import cpmi_signal

    can = "score_tokens" in backend.capabilities  # Backend.score_tokens refuses where it is not declared
    t0 = time.perf_counter()
    for i, (it, g) in enumerate(zip(items, greedy)):
        if not can:
            records[i]["missing"].append("cpmi")
            continue
        bare = backend.score_tokens(_bare_prompt(backend, it, s), g.token_ids) if g.token_ids else []
        records[i]["signals"].update(cpmi_signal(g.token_logprobs, bare, g.entropies))
    per = (time.perf_counter() - t0) / len(items)
    for r in records:
        r["cost"]["cpmi"] = {"seconds": per, "forward_passes": 1 if can else 0, "gen_tokens": 0}


def _ccp(greedy, records, nli) -> None:
    """Claim-conditioned probability (signals/ccp) from the greedy answer's top-k alternatives, judged by
    ``nli`` when given, else lexically (``ccp_judged_by`` in the record); missing when a chosen token is
    not among its step's alternatives (its text is then unknown)."""
    from llmcal.signals.ccp import ccp_signal
    from llmcal.signals.sar import token_texts

    t0 = time.perf_counter()
    for i, g in enumerate(greedy):
        texts = token_texts(g.token_logprobs, g.top_logprobs) if g.top_logprobs else None
        if texts is None:
            records[i]["missing"].append("ccp")
            continue
        got = ccp_signal(texts, g.token_logprobs, g.top_logprobs, nli)
        records[i]["signals"]["ccp"] = got["ccp"]
        records[i]["ccp_judged_by"] = got["judged_by"]
    per = (time.perf_counter() - t0) / max(len(greedy), 1)
    for r in records:
        r["cost"]["ccp"] = {"seconds": per, "forward_passes": 0, "gen_tokens": 0}


def _sample_estimators(greedy, sampled_gens, records, s: OpenSettings, embedder, nli) -> None:
    """The ``sampled`` and ``sar`` families (signals/sampled): numpy over the samples already drawn;
    meaning from ``nli`` where given, else the embeddings (recorded in ``meaning_from``)."""
    from llmcal.signals.sampled import sampled_signals, sar_for_answer
    from llmcal.signals.similarity import from_embeddings, from_nli

    for i, g in enumerate(greedy):
        texts = [g.text] + [x.text for x in sampled_gens[i]]
        emb = embedder.encode([t or "(no answer)" for t in texts]) if embedder is not None else None
        if "sampled" in s.families:
            sims = from_nli(nli.pair_probs(texts)) if nli is not None else from_embeddings(emb)
            records[i]["signals"].update(sampled_signals(g.token_logprobs, texts[1:],
                                                         [x.token_logprobs for x in sampled_gens[i]], sims, emb))
            records[i]["meaning_from"] = sims.source
        if "sar" in s.families:
            got = sar_for_answer(g, sampled_gens[i], embedder.encode)
            records[i]["signals"].update(got)
            records[i]["missing"] += [n for n in ("token_sar", "sar") if n not in got]
