"""Free-form generation with the transformers backend, keeping what the signals need.

Every generated token keeps its log-probability under the model's own
(temperature 1) distribution, the entropy of that distribution and its top-k
alternatives, whatever temperature was used to *sample* it: the confidence
signals of :mod:`llmcal.signals.generation` are properties of the model, and
the sampling temperature only decides which answer is drawn (the brief's
temperature sweep varies exactly that).

Prompts are generated as one batch, ``n`` samples per prompt, by the lean
decode loop of :mod:`llmcal.backends.lean_decode` (each prompt prefilled once
and its cache forked for the samples, the shared template prefix reused,
finished rows dropped).  ``LLMCAL_DECODE=generate`` runs the same batch
through transformers' ``generate`` instead: the reference the lean loop is
tested and benchmarked against.  Generation stops at the end-of-sequence
token, at ``max_new_tokens``, or at the first of the ``stop`` strings; text
and tokens are cut at the same place so the log-probabilities describe
exactly the returned text.  :meth:`llmcal.backends.hf.HFBackend.generate`
calls this.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Sequence

from llmcal.backends.base import DEFAULT_STOP, check_generate_args
from llmcal.core.requests import Generation

_cancel = threading.local()


@contextmanager
def stop_when(event: threading.Event | None):
    """Within this block, :func:`generate_hf` in this thread stops after the token at which ``event``
    is set (``llmcal serve``: the client left, or the deadline passed); the answer is cut there."""
    before = getattr(_cancel, "event", None)
    _cancel.event = event
    try:
        yield
    finally:
        _cancel.event = before


def _event_stop(event: threading.Event):
    import torch
    from transformers import StoppingCriteria

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return _Stop()


def end_token_ids(backend) -> list[int]:
    """Every token that ends an answer: the tokenizer's end-of-sequence token, the model's
    generation config's (often a list), and a chat template's end-of-turn token (``<|im_end|>``,
    ``<|eot_id|>``, ``<end_of_turn>``) when the vocabulary has one.  Kept on the backend per
    tokenizer and generation config (``get_vocab`` builds a 49k-entry dict: ~25 ms a call)."""
    tok = backend.tokenizer
    cfg = getattr(backend.model, "generation_config", None)
    key = (id(tok), id(cfg), repr(getattr(cfg, "eos_token_id", None)), tok.eos_token_id)
    memo = getattr(backend, "__dict__", {}).get("_end_token_ids")
    if memo is not None and memo[0] == key:
        return list(memo[1])
    ids: list[int] = []
    for cand in (getattr(cfg, "eos_token_id", None), tok.eos_token_id):
        for i in (cand if isinstance(cand, (list, tuple)) else [cand]):
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
    for name in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
        if name in vocab and vocab[name] not in ids:
            ids.append(int(vocab[name]))
    if hasattr(backend, "__dict__"):
        backend.__dict__["_end_token_ids"] = (key, tuple(ids))
    return ids


def _cut_at_stop(tokenizer, ids: list[int], stop: Sequence[str]) -> tuple[int, str, bool]:
    """How many tokens to keep so the text ends before the first stop string.

    Returns (tokens kept, text, whether a stop string was hit).  A token that
    straddles the stop string is dropped with it.
    """
    text = tokenizer.decode(ids, skip_special_tokens=True)
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    if cut < 0:
        return len(ids), text, False
    keep = len(ids)
    while keep > 0 and len(tokenizer.decode(ids[:keep], skip_special_tokens=True)) > cut:
        keep -= 1
    return keep, text[:cut], True


def generate_hf(
    backend,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    n: int = 1,
    seed: int = 0,
    top_k: int = 5,
    stop: Sequence[str] | None = DEFAULT_STOP,
) -> list[list[Generation]]:
    """Generate ``n`` answers for each prompt with ``backend``'s model; greedy when ``temperature`` is 0.

    Returns one list of ``n`` :class:`Generation` per prompt, in prompt order.
    """
    check_generate_args(temperature, n)
    if not prompts:
        return []
    tok = backend.tokenizer
    eos_ids = end_token_ids(backend)
    eos = eos_ids[0] if eos_ids else None
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    encoded = [backend._encode(p) if hasattr(backend, "add_bos") else tok(p, add_special_tokens=False).input_ids
               for p in prompts]  # Gemma's <bos> (hf.py)
    stop = tuple(stop or ())
    if os.environ.get("LLMCAL_DECODE", "lean").strip().lower() == "generate":
        rows = _rows_with_generate(backend, encoded, max_new_tokens=max_new_tokens, temperature=temperature,
                                   n=n, seed=seed, top_k=top_k, stop=stop, eos_ids=eos_ids, pad=pad)
    else:
        from llmcal.backends.lean_decode import decode

        rows = decode(backend, encoded, max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                      n=int(n), seed=seed, top_k=top_k, stop=stop, eos_ids=eos_ids, pad=pad,
                      event=getattr(_cancel, "event", None), max_rows=getattr(backend, "decode_rows", None))
    names: dict[int, str] = {}  # each top-k token's text, decoded once per call

    def name(t: int) -> str:
        if t not in names:
            names[t] = tok.decode([t])
        return names[t]

    results: list[list[Generation]] = []
    for row, rec in enumerate(rows):
        if row % n == 0:
            results.append([])
        results[-1].append(_generation(tok, rec, eos_ids, stop, name))
    return results


def _generation(tok, rec, eos_ids: Sequence[int], stop: Sequence[str], name) -> Generation:
    """One row's tokens and per-token evidence, cut at the end token or the first stop string."""
    import numpy as np

    ids, chosen, ent, top_ids, top_lp = rec
    ids = list(ids)
    finish = "length"
    ends = [ids.index(e) for e in eos_ids if e in ids]
    if ends:
        ids = ids[: min(ends)]
        finish = "stop"
    keep, text, hit = _cut_at_stop(tok, ids, stop)
    if hit:
        finish = "stop"
    # An empty answer (the model stopped at once) keeps the evidence of the
    # token that ended it, so its signals say how sure it was of stopping.
    span = keep if keep > 0 else min(1, len(rec[0]))
    alts = [[(name(int(t)), float(v)) for t, v in zip(top_ids[s], top_lp[s])] for s in range(span)] if top_ids else []
    return Generation(
        text=text.strip(),
        token_ids=ids[:keep],
        token_logprobs=np.asarray(chosen[:span], dtype=np.float64),
        entropies=np.asarray(ent[:span], dtype=np.float64),
        top_logprobs=alts,
        finish_reason=finish,
    )


def _rows_with_generate(backend, encoded, *, max_new_tokens, temperature, n, seed, top_k, stop, eos_ids, pad):
    """The same rows as :func:`llmcal.backends.lean_decode.decode`, through transformers' ``generate``."""
    import torch

    tok = backend.tokenizer
    model = backend.model
    width = max(len(e) for e in encoded)
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)  # (b, t) left-padded
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for r, e in enumerate(encoded):
        input_ids[r, width - len(e):] = torch.tensor(e)
        attention[r, width - len(e):] = 1
    torch.manual_seed(seed)
    kwargs = dict(
        max_new_tokens=int(max_new_tokens),
        num_return_sequences=int(n),
        return_dict_in_generate=True,
        output_logits=True,
        pad_token_id=pad,
        eos_token_id=eos_ids or None,
    )
    stop = tuple(stop or ())
    if stop:
        kwargs.update(stop_strings=list(stop), tokenizer=tok)  # halt early, not only cut afterwards
    event = getattr(_cancel, "event", None)
    if event is not None:
        from transformers import StoppingCriteriaList

        kwargs["stopping_criteria"] = StoppingCriteriaList([_event_stop(event)])
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids.to(backend.device), attention_mask=attention.to(backend.device), **kwargs
        )
        new = out.sequences[:, width:].cpu()  # (b * n, steps)
        logits = torch.stack(out.logits, dim=1).float().cpu()  # (b * n, steps, vocab) raw, T = 1
        logp = torch.log_softmax(logits, dim=-1)
        chosen = logp.gather(2, new[:, :, None]).squeeze(2).double().numpy()  # (b * n, steps)
        ent = -(logp.exp() * logp).nan_to_num().sum(-1).double().numpy()  # (b * n, steps)
        top_lp, top_ids = logp.topk(top_k, dim=-1) if top_k > 0 else (None, None)  # (b * n, steps, k)
    return [(new[row].tolist(), chosen[row].tolist(), ent[row].tolist(),
             top_ids[row].tolist() if top_k > 0 else [], top_lp[row].tolist() if top_k > 0 else [])
            for row in range(new.shape[0])]
