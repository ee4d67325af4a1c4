"""Every sample-based estimator of one answer at once (the ``sampled`` family's driver).

Given what an agreement run already has -- the greedy answer's token log-probabilities, the k
sampled answers with theirs, the meaning similarity between all k + 1 answers
(:class:`~llmcal.signals.similarity.SemanticMatrices`, answer 0 = the greedy one) and their
embeddings -- this returns each estimator's stored value (see each module): Monte-Carlo
sequence entropy, lexical similarity, the graph family, KLE, EigenScore, CoCoA and semantic
density.  Pure numpy; no model call.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from llmcal.signals.cocoa import cocoa_signals
from llmcal.signals.eigenscore import eigenscore_signal
from llmcal.signals.graph import graph_signals
from llmcal.signals.kle import kle_signal, kle_weights
from llmcal.signals.lexical import lexical_signals
from llmcal.signals.semantic_density import semantic_density
from llmcal.signals.sequence_entropy import sequence_entropy_signals
from llmcal.signals.similarity import SemanticMatrices


def sampled_signals(greedy_logprobs: np.ndarray, sample_texts: Sequence[str], sample_logprobs: Sequence[np.ndarray],
                    sims: SemanticMatrices, emb: np.ndarray | None = None) -> dict[str, float]:
    """The ``sampled`` family's values for one answer (k >= 2 samples; ``sims`` and ``emb``
    over the greedy answer then the samples, (k + 1, k + 1) and (k + 1, d))."""
    k = len(sample_texts)
    if k < 2 or len(sample_logprobs) != k:
        raise ValueError(f"sampled signals: need k >= 2 samples with log-probabilities, got {k} and "
                         f"{len(sample_logprobs)}")
    if sims.entail.shape != (k + 1, k + 1):
        raise ValueError(f"sampled signals: similarity {sims.entail.shape} for the answer and {k} samples")
    samples = sims.sub(np.arange(1, k + 1))
    out: dict[str, float] = {}
    out.update(sequence_entropy_signals(sample_logprobs))
    out.update(lexical_signals(sample_texts))
    out.update(graph_signals(samples.entail, samples.contra))
    out.update(kle_signal(samples.entail, samples.contra))
    if emb is not None:
        out.update(eigenscore_signal(np.asarray(emb)[1:]))
    w = sims.affinity()
    out.update(cocoa_signals(greedy_logprobs, w[0, 1:]))
    kern = kle_weights(sims.entail, sims.contra)
    out["semantic_density"] = semantic_density((kern[0, 1:] + kern[1:, 0]) / 2.0, sample_logprobs, sample_texts)
    return out


def sar_for_answer(greedy, samples, embed, texts_of=None) -> dict[str, float]:
    """TokenSAR of the greedy answer and SAR of the samples (:mod:`llmcal.signals.sar`) from
    :class:`~llmcal.core.requests.Generation`\\ s and ``embed(texts) -> (n, d)`` unit-norm
    embeddings.  ``texts_of(generation)`` gives each token's text (default: read from the top-k
    alternatives, :func:`~llmcal.signals.sar.token_texts`); a generation whose tokens cannot be
    read leaves out what needs it (``sar`` when a sample's, both when the answer's)."""
    from llmcal.signals.sar import SAR_T, sar, token_sar, token_texts, without_each_token
    from llmcal.signals.spec import encode

    read = texts_of or (lambda g: token_texts(g.token_logprobs, g.top_logprobs))
    gens = [greedy] + list(samples)
    pieces = [read(g) for g in gens]
    usable = [i for i, p in enumerate(pieces) if p is not None]
    texts, spans = [], {}
    for i in usable:
        start = len(texts)
        texts += [gens[i].text or "(no answer)"] + [t or "(no answer)" for t in without_each_token(pieces[i])]
        spans[i] = (start, len(texts))
    emb = np.asarray(embed(texts), dtype=np.float64) if texts else np.zeros((0, 1))  # (sum(1 + n_i), d)
    sars = {}
    for i, (a, b) in spans.items():
        sim = emb[a + 1: b] @ emb[a]  # (n_i,): the answer vs the answer without each token
        sars[i] = token_sar(gens[i].token_logprobs[: b - a - 1], sim)
    out: dict[str, float] = {}
    if 0 in sars:
        out["token_sar"] = encode(sars[0], "uncertainty")
    if all(i in sars for i in range(1, len(gens))):
        heads = np.stack([emb[spans[i][0]] for i in range(1, len(gens))])  # (k, d)
        out["sar"] = encode(-sar([sars[i] for i in range(1, len(gens))], np.clip(heads @ heads.T, 0.0, 1.0), SAR_T),
                            "log_odds")
    return out
