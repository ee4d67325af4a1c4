"""The lean decode loop of the transformers backend: no FLOP computed twice (issue #17).

transformers' ``generate`` is not slow per step, but the way llmcal called it
repeated work: the k agreement samples re-prefilled the prompt the greedy
answer had just prefilled, every prompt recomputed the same chat-template
prefix, rows that had finished kept being decoded (55 % of agreement decode
work), and the logits of every step were kept for every row to compute the
token statistics afterwards.  This loop:

* **prefills each distinct prompt once** and keeps its keys/values in a
  small per-backend :class:`PromptCache` (bounded in bytes); the next call
  on the same prompts (the k samples after the greedy answer) starts decoding
  at once, its first-token logits taken from the cache;
* **forks** the prompt's cache for the ``n`` samples (``repeat_interleave`` on
  the batch axis) instead of prefilling ``n`` copies;
* reuses, for every prompt, **the longest start it shares with anything
  stored**: the prompts' common prefix (the chat template's system turn,
  computed once and reused across calls and items), or an earlier prompt
  (the verbalized follow-up begins with the answer prompt); only the rest is
  prefilled, laid out after the reused part with the padding masked out, so
  positions and numbers are those of a plain prefill;
* keeps the latest greedy call's **answers' keys/values** (prompt + generated
  tokens), so a follow-up that quotes the answer after its prompt (the
  verbalized question) prefills only what follows the answer;
* **drops finished rows** from the batch (and from the cache) as soon as they
  stop, and lets waiting prompts **join** the running batch in their place
  (continuous batching, at most ``decode_rows`` rows a step);
* computes the per-token statistics the :class:`~llmcal.core.requests.Generation`
  keeps (chosen log-prob, entropy, top-k) on the live rows of each step only,
  and decodes each top-k token string once per call.

Greedy answers and token log-probabilities equal those of ``generate`` within
float rounding (tests/test_lean_decode.py checks 1e-4 in fp32); sampling draws
from the full-vocabulary distribution at the given temperature, as before,
with its own seeded ``torch.Generator``, so a seed reproduces the samples
whatever else the process has drawn.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

PROMPT_CACHE_BYTES = 512 * 2**20  # what the prompt cache may hold (keys/values of recent prompts)
MIN_SHARED_PREFIX = 8  # a shared prefix shorter than this is not worth a separate pass
MAX_PREFIXES = 8  # shared prefixes kept (one a distinct template start)


class PromptCache:
    """Recent prompts' keys/values and last-position logits, and the shared prefix's keys/values.

    ``prompts`` maps a prompt's token ids to ``(layers, logits)``: ``layers`` one
    ``(keys, values)`` pair a layer, each ``(1, kv_heads, len, head_dim)``; ``logits``
    ``(vocab,)``.  Least recently used prompts go first once ``max_bytes`` is exceeded.
    """

    def __init__(self, max_bytes: int = PROMPT_CACHE_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self.prompts: OrderedDict[tuple[int, ...], tuple[list, object]] = OrderedDict()
        self.prefixes: dict[tuple[int, ...], list] = {}
        # the latest greedy call's answers (prompt + answer ids -> (layers, logits)), for the follow-up
        # that quotes them; kept apart from ``prompts`` so that they never push out a prompt the
        # k samples fork, and replaced by the next greedy call's (at most ``max_bytes / 4``)
        self.answers: dict[tuple[int, ...], tuple[list, object]] = {}
        self._answer_bytes = 0
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _size(layers, logits) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers) + \
            logits.numel() * logits.element_size()

    def get(self, ids: tuple[int, ...]):
        entry = self.prompts.get(ids)
        if entry is not None:
            self.prompts.move_to_end(ids)
        return entry

    def put(self, ids: tuple[int, ...], layers, logits) -> None:
        if ids in self.prompts:
            return
        size = self._size(layers, logits)
        if size > self.max_bytes:
            return
        self.prompts[ids] = (layers, logits)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (old_layers, old_logits) = self.prompts.popitem(last=False)
            self._bytes -= self._size(old_layers, old_logits)

    def put_answer(self, ids: tuple[int, ...], layers, logits) -> None:
        size = self._size(layers, logits)
        if ids in self.answers or self._answer_bytes + size > self.max_bytes // 2:
            return
        self.answers[ids] = (layers, logits)
        self._answer_bytes += size

    def new_answers(self) -> None:
        self.answers = {}
        self._answer_bytes = 0

    def forget_prompts(self) -> None:
        """Drop the stored prompts and answers, keep the shared prefixes (what a run holds past its first batch)."""
        self.prompts.clear()
        self._bytes = 0
        self.new_answers()

    def clear(self) -> None:
        self.forget_prompts()
        self.prefixes.clear()
        self.hits = self.misses = 0


def _weights_state(model) -> int:
    """Changes whenever a parameter is replaced or changed in place (quantization, post-training)."""
    return hash(tuple((id(p), p._version) for p in model.parameters()))


def prompt_cache(backend) -> PromptCache:
    """The backend's prompt cache, emptied whenever the model's weights changed since it was filled."""
    cache = backend.__dict__.get("_prompt_cache")
    if cache is None:
        cache = backend.__dict__["_prompt_cache"] = PromptCache()
    state = _weights_state(backend.model)
    if cache.__dict__.get("state") != state:
        cache.clear()
        cache.state = state
    return cache


def _cache_arg(model) -> str:
    """The forward argument that takes the cache: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _plain_cache_layers(cache) -> bool:
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))


def _common_prefix(encoded: Sequence[Sequence[int]]) -> int:
    first = encoded[0]
    n = min(len(e) for e in encoded) - 1  # every prompt keeps at least one token of its own
    for e in encoded[1:]:
        i = 0
        while i < n and e[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _known_part(store: PromptCache, ids: Sequence[int]):
    """The longest start of ``ids`` whose keys/values are stored (a stored prompt's or prefix's): (m, layers).

    The keys/values of a token depend only on the tokens before it, so any stored sequence
    that begins like ``ids`` serves for the tokens they share; at least one token is left to
    prefill, whose logits start decoding.
    """
    best, layers = 0, None
    stored = list(store.prompts.items()) + list(store.answers.items())
    for src, entry in stored + [(k, (v, None)) for k, v in store.prefixes.items()]:
        m = min(_lcp(src, ids), len(ids) - 1)
        if m > best:
            best, layers = m, entry[0]
    return best, layers


def _shared_prefix(model, store: PromptCache, encoded, device) -> None:
    """Store the keys/values of the prompts' longest shared start when nothing stored covers it yet."""
    import torch
    from transformers import DynamicCache

    p = _common_prefix(encoded) if len(encoded) > 1 else 0
    if p < MIN_SHARED_PREFIX or _known_part(store, encoded[0])[0] >= p:
        return
    key = tuple(encoded[0][:p])
    cache = DynamicCache()
    with torch.inference_mode():
        model(input_ids=torch.tensor([key], device=device), use_cache=True, logits_to_keep=1,
              **{_cache_arg(model): cache})
    if _plain_cache_layers(cache):
        while len(store.prefixes) >= MAX_PREFIXES:
            store.prefixes.pop(next(iter(store.prefixes)))
        store.prefixes[key] = [(layer.keys, layer.values) for layer in cache.layers]  # (1, kv_heads, p, head_dim)


def _prefill(model, encoded, pad: int, device, store: PromptCache):
    """Prefill what is not stored of each prompt; store each prompt's keys/values and last logits.

    Row ``r`` is laid out ``[padding | known_r | padding | rest_r]``: ``known_r`` the longest
    stored start of the prompt (right-aligned in the first ``w1`` columns), ``rest_r`` the
    tokens computed now (left-padded in the next ``w2``); the padding is masked out and the
    position ids count only real tokens, so the numbers are those of a plain prefill.
    """
    import torch
    from transformers import DynamicCache

    _shared_prefix(model, store, encoded, device)
    known = [_known_part(store, e) for e in encoded]
    b = len(encoded)
    w1 = max(m for m, _ in known)
    rest = [e[m:] for e, (m, _) in zip(encoded, known)]
    w2 = max(len(r) for r in rest)
    ids = torch.full((b, w2), pad, dtype=torch.long)  # (b, w2) the rest, left-padded
    mask = torch.zeros((b, w1 + w2), dtype=torch.long)  # (b, w1 + w2)
    for r, (e, (m, _)) in enumerate(zip(rest, known)):
        mask[r, w1 - m: w1] = 1
        ids[r, w2 - len(e):] = torch.tensor(e)
        mask[r, w1 + w2 - len(e):] = 1
    position = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)[:, w1:]  # (b, w2) as generate() numbers them
    cache = DynamicCache()
    if w1 > 0:
        ref = next(layers for m, layers in known if m > 0)
        for i, (k0, v0) in enumerate(ref):
            keys = k0.new_zeros((b, k0.shape[1], w1, k0.shape[3]))  # (b, kv_heads, w1, head_dim)
            values = v0.new_zeros((b, v0.shape[1], w1, v0.shape[3]))
            for r, (m, layers) in enumerate(known):
                if m > 0:
                    keys[r, :, w1 - m:] = layers[i][0][0, :, :m]
                    values[r, :, w1 - m:] = layers[i][1][0, :, :m]
            cache.update(keys, values, i)
    with torch.inference_mode():
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position.to(device),
                    use_cache=True, logits_to_keep=1, **{_cache_arg(model): cache})
    logits = out.logits[:, -1, :].float()  # (b, vocab)
    if _plain_cache_layers(cache):
        keep = mask.bool()
        for r, e in enumerate(encoded):
            cols = keep[r].nonzero().squeeze(1).to(device)  # the row's real columns
            layers = [(layer.keys[r: r + 1, :, cols].clone(), layer.values[r: r + 1, :, cols].clone())
                      for layer in cache.layers]
            store.put(tuple(e), layers, logits[r].clone())
    return logits, cache, mask


def _assemble(entries, device):
    """A batch cache from per-prompt entries, right-aligned like a left-padded prefill."""
    import torch
    from transformers import DynamicCache

    lengths = [entry[0][0][0].shape[2] for entry in entries]
    width = max(lengths)
    b = len(entries)
    mask = torch.zeros((b, width), dtype=torch.long)  # (b, w)
    for r, n in enumerate(lengths):
        mask[r, width - n:] = 1
    cache = DynamicCache()
    for i in range(len(entries[0][0])):
        k0, v0 = entries[0][0][i]
        keys = k0.new_zeros((b, k0.shape[1], width, k0.shape[3]))  # (b, kv_heads, w, head_dim)
        values = v0.new_zeros((b, v0.shape[1], width, v0.shape[3]))
        for r, (layers, _) in enumerate(entries):
            k, v = layers[i]
            keys[r, :, width - lengths[r]:] = k[0]
            values[r, :, width - lengths[r]:] = v[0]
        cache.update(keys, values, i)
    logits = torch.stack([entry[1] for entry in entries]).to(device)  # (b, vocab)
    return logits, cache, mask


def sample_rows(logits, temperature: float, gen):
    """One draw per row from ``softmax(logits / temperature)``, by inverting its CDF at a uniform draw.

    The distribution of ``torch.multinomial(softmax(logits / T), 1)`` (the old path's, and
    transformers' with ``top_k=0, top_p=1``), at a fraction of its cost on the CPU: multinomial
    spent 32 ms a step on the 80 rows x 49,152 tokens of k = 5 agreement (8 % of the free-form
    set's time, this machine's profile); a cumulative sum and a binary search take a few.  A
    token of probability 0 is never drawn (its interval of the CDF is empty).
    logits: (r, vocab); returns (r,) token ids.
    """
    import torch

    z = logits / temperature  # (r, vocab)
    w = torch.exp(z - z.max(dim=-1, keepdim=True).values)  # (r, vocab) unnormalized probabilities
    cdf = w.cumsum(dim=-1)  # (r, vocab)
    total = cdf[:, -1:]  # (r, 1)
    u = torch.rand((w.shape[0], 1), generator=gen, device=w.device, dtype=cdf.dtype) * total  # (r, 1)
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # < total even after rounding
    return torch.searchsorted(cdf, u, right=True).squeeze(1)  # (r,) the first index whose cdf exceeds u


def _store_answers(store: PromptCache, cache, mask, logits, live, done, encoded, out) -> None:
    """Store each finishing greedy row's prompt + answer keys/values (``done`` None: every live row).

    At this point of a step the cache holds the prompt and the tokens generated before the one
    just chosen, and ``logits`` are what predicted that token, so the entry is exactly a
    :class:`PromptCache` entry for the sequence ``prompt + answer[:-1]``.  A follow-up that quotes
    the answer after its prompt (the verbalized question, Tian et al. 2023's set-up) then
    prefills only what comes after the answer's tokens, as far as its tokenization of the answer
    matches the generated tokens; the numbers are those of a plain prefill up to float rounding.
    """
    rows = range(len(live)) if done is None else done.nonzero().squeeze(1).tolist()
    for j in rows:
        row = int(live[j])
        ids = tuple(encoded[row]) + tuple(out[row][0][:-1])
        if len(ids) <= len(encoded[row]) or ids in store.prompts or ids in store.answers:
            continue  # nothing generated before the final token: the prompt's own entry serves
        cols = mask[j].nonzero().squeeze(1)  # the row's real columns
        layers = [(layer.keys[j: j + 1, :, cols].clone(), layer.values[j: j + 1, :, cols].clone())
                  for layer in cache.layers]  # (1, kv_heads, len(ids), head_dim) each
        store.put_answer(ids, layers, logits[j].clone())


def next_token_logprobs(backend, encoded: Sequence[Sequence[int]], pad: int):
    """``log p(next token | prompt)`` (b, vocab) for each tokenized prompt, prefilling only what is not stored.

    The follow-up that quotes the greedy answer (P(True) asked in the same conversation) begins
    with the prompt and the answer whose keys/values the greedy call kept, so only the question
    after the answer is computed; the prompt's own entry is stored too, so the verbalized
    follow-up, which shares that start, reuses it.  The values are those of a plain prefill up
    to float rounding (tests/test_lean_decode.py).
    """
    import torch

    model, device = backend.model, backend.device
    store = prompt_cache(backend)
    with torch.inference_mode():
        entries = _stored(store, encoded)
        if entries is not None:
            logits = torch.stack([entry[1] for entry in entries]).to(device)  # (b, vocab)
        else:
            logits, _, _ = _prefill(model, encoded, pad, device, store)
        return torch.log_softmax(logits.float(), dim=-1)  # (b, vocab)


def _stored(store: PromptCache, encoded):
    """Every prompt's stored entry when all are stored (a hit), else None (a miss: prefill them)."""
    entries = [store.get(tuple(e)) for e in encoded]
    if all(entry is not None for entry in entries):
        store.hits += len(entries)
        return entries
    store.misses += len(entries)
    return None


# Rows decoded together at most (HFBackend ``decode_rows``, see :func:`decode`): a decode step's cost
# per row falls until the step turns compute-bound.  Measured on the embedded model, fp32, one
# thread (docs/benchmarks.md, "Continuous batching"): 6.5 ms a row at 16 rows, 4.0 at 64, 3.8 at
# 80, 3.4 at 128 (the FLOP floor is 2.3).
DECODE_ROWS = 128
ADMIT_SHARE = 4  # new prompts join once a quarter of the rows are free (a prefill pass has a fixed cost)


def _start(model, store: PromptCache, encoded, pad: int, device, n: int):
    """A group of prompts ready to decode: their first-token logits, cache, mask and next positions.

    Stored prompts are assembled from the store (no model call), the others prefilled; each
    prompt's cache is then forked ``n`` times (one copy a sample, prompt-major).
    """
    entries = _stored(store, encoded)
    if entries is not None:
        logits, cache, mask = _assemble(entries, device)
    else:
        logits, cache, mask = _prefill(model, encoded, pad, device, store)
    mask = mask.to(device)
    next_pos = mask.sum(-1)  # (b,) the position of each row's first new token
    if n > 1:  # fork: one copy of each prompt's cache a sample
        cache.batch_repeat_interleave(n)
        logits, mask, next_pos = (x.repeat_interleave(n, dim=0) for x in (logits, mask, next_pos))
    return logits, cache, mask, next_pos


def _join(running, joining):
    """One batch from two: the caches and masks right-aligned (left-padded, the padding masked out).

    ``running`` and ``joining`` are ``(logits, cache, mask, next_pos)``; every row keeps its own
    positions, so each row's numbers are those it would have decoded alone, up to float rounding.
    """
    import torch
    import torch.nn.functional as F
    from transformers import DynamicCache

    (la, ca, ma, pa), (lb, cb, mb, pb) = running, joining
    w = max(ma.shape[1], mb.shape[1])
    pad_a, pad_b = w - ma.shape[1], w - mb.shape[1]
    cache = DynamicCache()
    for i, (x, y) in enumerate(zip(ca.layers, cb.layers)):
        keys = torch.cat([F.pad(x.keys, (0, 0, pad_a, 0)), F.pad(y.keys, (0, 0, pad_b, 0))])  # (ra + rb, kv, w, d)
        values = torch.cat([F.pad(x.values, (0, 0, pad_a, 0)), F.pad(y.values, (0, 0, pad_b, 0))])
        cache.update(keys, values, i)
    mask = torch.cat([F.pad(ma, (pad_a, 0)), F.pad(mb, (pad_b, 0))])  # (ra + rb, w)
    return torch.cat([la, lb]), cache, mask, torch.cat([pa, pb])


def decode(backend, encoded: Sequence[Sequence[int]], *, max_new_tokens: int, temperature: float, n: int,
           seed: int, top_k: int, stop: Sequence[str], eos_ids: Sequence[int], pad: int, event=None,
           max_rows: int | None = None):
    """Decode ``n`` continuations of each tokenized prompt, at most ``max_rows`` rows at a time.

    Returns, one per row (prompt-major, ``n`` rows a prompt), ``(token ids, chosen log-probs,
    entropies, top-k ids, top-k log-probs)``, each a list with one entry per generated token
    (the end-of-sequence token included, as ``generate`` returns it).

    **Continuous batching.** Prompts beyond the first ``max_rows // n`` wait; as rows finish
    and leave the batch, waiting prompts are prefilled and joined to it (:func:`_join`) once
    a quarter of the rows are free, so the steps run near ``max_rows`` rows instead of
    trailing off to one or two (a step of one row costs half a step of sixteen here: the
    weights are read either way).  Orca (Yu et al., OSDI 2022) calls this iteration-level
    scheduling.  ``max_rows`` None decodes every prompt in one batch.  Where the model's cache
    is not the plain per-layer kind (sliding-window layers), a group joins only once the
    batch is empty.
    """
    import torch

    model, device = backend.model, backend.device
    if int(max_new_tokens) <= 0 or not encoded:
        return [([], [], [], [], []) for _ in range(len(encoded) * n)]
    store = prompt_cache(backend)
    group = len(encoded) if not max_rows else max(1, int(max_rows) // max(1, n))  # prompts a batch at most
    with torch.inference_mode():
        logits, cache, mask, next_pos = _start(model, store, encoded[:group], pad, device, n)
        waiting = group  # the next prompt to join
        rows = len(encoded) * n
        live = torch.arange(logits.shape[0])  # the output row of each batch row
        out = [([], [], [], [], []) for _ in range(rows)]
        eos = torch.tensor(list(eos_ids) or [-1], device=device)
        gen = torch.Generator(device=device).manual_seed(int(seed))
        tok = backend.tokenizer
        cache_arg = _cache_arg(model)
        plain = _plain_cache_layers(cache)
        keep_answers = n == 1 and temperature <= 0 and plain
        if keep_answers:  # this call's answers replace the previous call's (its prefill has used them)
            store.new_answers()
        cap = group * n
        while True:
            free = cap - logits.shape[0]
            if waiting < len(encoded) and (logits.shape[0] == 0 or (plain and free >= max(n, cap // ADMIT_SHARE))):
                take = encoded[waiting: waiting + free // n]
                joining = _start(model, store, take, pad, device, n)
                first = torch.arange(waiting * n, (waiting + len(take)) * n)
                if logits.shape[0] == 0:
                    (logits, cache, mask, next_pos), live = joining, first
                else:
                    logits, cache, mask, next_pos = _join((logits, cache, mask, next_pos), joining)
                    live = torch.cat([live, first])
                waiting += len(take)
            logp = torch.log_softmax(logits, dim=-1)  # (r, vocab), the model's own distribution (T = 1)
            if temperature > 0:
                chosen = sample_rows(logits, float(temperature), gen)  # (r,)
            else:
                chosen = logits.argmax(dim=-1)  # (r,)
            lp = logp.gather(1, chosen[:, None]).squeeze(1)  # (r,)
            ent = -(logp.exp() * logp).nan_to_num().sum(-1)  # (r,)
            top_lp, top_ids = logp.topk(top_k, dim=-1) if top_k > 0 else (None, None)  # (r, k)
            ids_l, lp_l, ent_l = chosen.tolist(), lp.double().tolist(), ent.double().tolist()
            tl_l, ti_l = (top_lp.tolist(), top_ids.tolist()) if top_k > 0 else (None, None)
            done = torch.isin(chosen, eos)  # (r,)
            for j, row in enumerate(live.tolist()):
                rec = out[row]
                rec[0].append(ids_l[j])
                rec[1].append(lp_l[j])
                rec[2].append(ent_l[j])
                if top_k > 0:
                    rec[3].append(ti_l[j])
                    rec[4].append(tl_l[j])
                if len(rec[0]) >= max_new_tokens:
                    done[j] = True
                elif stop and not done[j]:
                    text = tok.decode(rec[0], skip_special_tokens=True)
                    if any(s and s in text for s in stop):
                        done[j] = True
            cancelled = event is not None and event.is_set()
            last = cancelled or (bool(done.all()) and waiting >= len(encoded))
            if keep_answers:  # the greedy answers' keys/values, for the follow-ups that quote them
                _store_answers(store, cache, mask, logits, live, done if not last else None, encoded, out)
            if last:
                break
            if bool(done.any()):  # drop finished rows from the batch and its cache
                keep = (~done).nonzero().squeeze(1)
                if len(keep) == 0:  # the batch is empty: the next group starts it afresh
                    logits = logits[:0]
                    continue
                cache.batch_select_indices(keep)
                live, mask, next_pos, chosen = live[keep.cpu()], mask[keep], next_pos[keep], chosen[keep]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)  # (r, t + 1)
            step_out = model(input_ids=chosen[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                             use_cache=True, **{cache_arg: cache})
            next_pos = next_pos + 1
            logits = step_out.logits[:, -1, :].float()  # (r, vocab)
    return out
