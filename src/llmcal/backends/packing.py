"""Pack a question and its options into one sequence with a tree attention mask.

The shared question prefix is computed once; every option continues from the
prefix's keys and values (the KV cache of the prefix), in the same forward
pass.  Option ``o``'s tokens attend to the whole prefix and to the earlier
tokens of option ``o`` only, and their position ids continue from the prefix
end, so each option sees exactly the sequence ``prefix + option`` it would
see alone (lm-eval's ``context_enc + continuation_enc``) without recomputing
the prefix once per option.  This is the "tree attention" of speculative
decoding (Miao et al. 2024, SpecInfer) applied to scoring.

The last token of an option is not an input (nothing is predicted after
it) unless its hidden state is wanted (``full_options``), and the first token
of every option is predicted from the prefix's last position, so an option
of ``L`` tokens adds ``L - 1`` positions (``L`` with ``full_options``).
One-token options (the letters of lettered prompts) add none: their
log-probabilities all come from one row of logits.

Partial scoring (several contexts, one continuation: lm-eval's WinoGrande)
packs the same way: the options' contexts share their longest common token
prefix, and each option's branch holds the rest of its own context
(``option_context_ids``) before its continuation; only the continuation's
tokens are predicted.

Pure numpy; the backend turns the result into tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class PackedItem:
    input_ids: np.ndarray  # (T,) int64
    position_ids: np.ndarray  # (T,) int64
    branch: np.ndarray  # (T,) int64: 0 = prefix, o + 1 = option o
    # For every option token: the row whose logits predict it, and its id.
    target_rows: list[np.ndarray]  # k arrays of shape (L_o,)
    target_ids: list[np.ndarray]  # k arrays of shape (L_o,)
    prefix_last: int  # row of the last prefix token
    # With ``full_options``: the rows of every option token (the last included), for
    # the mean hidden state over the answer's tokens; else empty.
    answer_rows: list[np.ndarray] = field(default_factory=list)  # k arrays of shape (L_o,)


def pack_item(
    context_ids: list[int],
    continuation_ids: list[list[int]],
    full_options: bool = False,
    option_context_ids: list[list[int]] | None = None,
) -> PackedItem:
    """Lay out ``context + every continuation`` as one tree-shaped sequence.

    ``full_options`` also feeds each option's last token (one more position
    per option, whose logits are never needed) so that every answer token has
    a hidden state: the probe's "mean over answer tokens" feature.
    ``option_context_ids[o]`` (partial scoring) are option ``o``'s own context
    tokens after the shared ``context_ids``: inputs of its branch, not scored.
    The shared part may then be empty if every option brings its own context.
    """
    tails = option_context_ids if option_context_ids is not None else [[] for _ in continuation_ids]
    if len(tails) != len(continuation_ids):
        raise ValueError(f"{len(tails)} option contexts for {len(continuation_ids)} continuations")
    if not context_ids and not all(tails):
        raise ValueError("context_ids is empty: a continuation needs a context to follow")
    if any(len(c) == 0 for c in continuation_ids):
        raise ValueError("a continuation tokenized to zero tokens")
    n_prefix = len(context_ids)
    ids = list(context_ids)
    pos = list(range(n_prefix))
    branch = [0] * n_prefix
    rows: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    answer_rows: list[np.ndarray] = []
    prefix_last = n_prefix - 1
    for o, (tail, cont) in enumerate(zip(tails, continuation_ids)):
        # the branch: the option's own context tail (inputs only), then its continuation
        start = len(ids) + len(tail)
        inputs = list(tail) + (list(cont) if full_options else list(cont[:-1]))
        if full_options:
            answer_rows.append(np.arange(start, start + len(cont), dtype=np.int64))
        ids.extend(inputs)
        pos.extend(range(n_prefix, n_prefix + len(inputs)))
        branch.extend([o + 1] * len(inputs))
        # continuation token j is predicted at the last context row (j = 0), else at its input j - 1
        last_ctx = start - 1 if tail else n_prefix - 1
        if n_prefix == 0 and o == 0:
            prefix_last = last_ctx  # no shared prefix: the first option's last context token
        rows.append(np.array([last_ctx] + list(range(start, start + len(cont) - 1)), dtype=np.int64))
        targets.append(np.asarray(cont, dtype=np.int64))
    return PackedItem(
        input_ids=np.asarray(ids, dtype=np.int64),
        position_ids=np.asarray(pos, dtype=np.int64),
        branch=np.asarray(branch, dtype=np.int64),
        target_rows=rows,
        target_ids=targets,
        prefix_last=prefix_last,
        answer_rows=answer_rows,
    )


def tree_mask(branch: np.ndarray, length: int) -> np.ndarray:
    """Boolean (length, length) mask, True = may attend.

    Query ``q`` sees key ``k`` when ``k <= q`` and ``k`` is in the prefix or in
    the same option as ``q``.  Rows past ``len(branch)`` (padding) see only
    themselves, so no row is fully masked (which would give NaN in softmax).
    """
    n = len(branch)
    mask = np.zeros((length, length), dtype=bool)
    q = np.arange(n)[:, None]
    k = np.arange(n)[None, :]
    same = (branch[None, :] == 0) | (branch[None, :] == branch[:, None])
    mask[:n, :n] = (k <= q) & same
    pad = np.arange(n, length)
    mask[pad, pad] = True
    return mask
