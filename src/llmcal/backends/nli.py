"""An NLI cross-encoder for clustering answers by meaning (bidirectional entailment).

Kuhn et al. 2023 (semantic entropy) and Lin et al. 2024 (the graph family) judge whether two
answers mean the same with a natural-language-inference model: answer a "means" answer b when
the model says a entails b.  :class:`NLIModel` loads any sequence-classification cross-encoder
with entailment / neutral / contradiction labels -- a hub name such as
``microsoft/deberta-large-mnli`` where the hub (or its cache) can be reached, or a local folder
-- through transformers' ``AutoModelForSequenceClassification``, reads which output is which from
the model's ``id2label``, and returns the (m, m, 3) probabilities between answers that
``llmcal.signals.similarity.from_nli`` turns into the matrices the sample-based estimators read
(the backends floor does not import signals).

Each distinct ordered pair of texts is scored once (sampled answers repeat); an answer entails
itself (the diagonal is not scored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

_LABELS = ("entail", "neutral", "contra")


def label_order(id2label: dict) -> list[int]:
    """The output indices of (entailment, neutral, contradiction) from a config's ``id2label``;
    a ValueError naming the labels when one of the three is not there."""
    names = {int(i): str(n).lower() for i, n in id2label.items()}
    out = []
    for want in _LABELS:
        hit = [i for i, n in names.items() if n.startswith(want)]
        if len(hit) != 1:
            raise ValueError(f"NLI model: labels {sorted(names.values())} do not name one {want!r} class "
                             "(need entailment, neutral and contradiction)")
        out.append(hit[0])
    return out


class NLIModel:
    """A cross-encoder: ``probs(premises, hypotheses)`` -> (n, 3) over (entailment, neutral, contradiction)."""

    def __init__(self, name_or_path: str, device: str = "cpu", batch_size: int = 16, max_length: int = 256) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        where = str(name_or_path)
        if not where.strip():
            raise ValueError("--nli_model: empty name")
        looks_local = where.startswith((".", "/", "~")) or Path(where).expanduser().exists()
        if looks_local and not Path(where).expanduser().is_dir():
            raise OSError(f"--nli_model {where!r}: no such folder")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(Path(where).expanduser()) if looks_local else where)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                str(Path(where).expanduser()) if looks_local else where, dtype=torch.float32).eval().to(device)
        except (OSError, ValueError) as err:
            raise OSError(f"--nli_model {where!r}: cannot load a cross-encoder from it ({err})") from None
        self.order = label_order(self.model.config.id2label)
        self.name, self.device = where, device
        self.batch_size, self.max_length = int(batch_size), int(max_length)

    def probs(self, premises: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
        """(n, 3) float64 probabilities of (entailment, neutral, contradiction) for each pair."""
        import torch

        if len(premises) != len(hypotheses):
            raise ValueError(f"NLI: {len(premises)} premises for {len(hypotheses)} hypotheses")
        out = np.zeros((len(premises), 3))
        for s in range(0, len(premises), self.batch_size):
            enc = self.tokenizer(list(premises[s: s + self.batch_size]), list(hypotheses[s: s + self.batch_size]),
                                 padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            with torch.inference_mode():
                logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits  # (b, n_labels)
            p = torch.softmax(logits.float(), dim=-1).cpu().double().numpy()
            out[s: s + len(p)] = p[:, self.order]
        return out

    def pair_probs(self, texts: Sequence[str]) -> np.ndarray:
        """(m, m, 3) probabilities of (entailment, neutral, contradiction) of text i -> text j; each
        distinct pair scored once, a text entailing itself."""
        texts = [t or "(no answer)" for t in texts]
        m = len(texts)
        pairs = sorted({(a, b) for i, a in enumerate(texts) for j, b in enumerate(texts) if a != b})
        scored = dict(zip(pairs, self.probs([a for a, _ in pairs], [b for _, b in pairs]))) if pairs else {}
        probs = np.zeros((m, m, 3))
        for i in range(m):
            for j in range(m):
                probs[i, j] = scored[(texts[i], texts[j])] if texts[i] != texts[j] else (1.0, 0.0, 0.0)
        return probs
