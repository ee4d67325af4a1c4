"""What quantization did: perplexity, multiple-choice accuracy, and confidence calibration.

Every variant is measured the same way as the unquantized model:

* perplexity on held-out text: exp of the mean next-token negative
  log-likelihood over all tokens of all texts (each text its own sequence, no
  BOS), e.g. the SciQ support paragraphs of ``sciq_test.json``;
* multiple-choice accuracy through the same scorer as ``llmcal run``
  (:class:`llmcal.backends.hf.HFBackend`, lm-eval's ``loglikelihood``), the
  confidence being ``option_prob`` (softmax over the options' log-likelihoods)
  of the predicted option, and its ECE (15 equal-width bins), Brier score and
  mean confidence.  Proskurina et al. 2024 found that 4-bit GPTQ lowers the
  confidence on the true answer; these numbers show whether a recipe does.

:func:`compare` adds accuracy retention (quantized / original) and the
perplexity ratio.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence


def perplexity(model, token_seqs: Sequence, batch_tokens: int = 2048) -> dict[str, float]:
    """Token-level perplexity of ``model`` on sequences (each (1, T) token ids)."""
    import torch

    nll, n = 0.0, 0
    with torch.inference_mode():
        for ids in token_seqs:
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()  # (T-1, vocab)
            targets = ids[0, 1:]  # (T-1,)
            nll += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
            n += int(targets.numel())
    return {"perplexity": math.exp(nll / max(n, 1)), "ppl_tokens": n}


def mc_metrics(model, tokenizer, items: Sequence, style: str = "cloze", n_bins: int = 15) -> dict[str, Any]:
    """Accuracy, ECE, Brier and mean confidence of ``option_prob`` on multiple-choice items."""
    import numpy as np

    from llmcal.backends.hf import HFBackend
    from llmcal.metrics import brier_score, ece, mean_confidence
    from llmcal.pipeline.measure import sample_record
    from llmcal.tasks.prompts import build_request

    backend = HFBackend(model, tokenizer, hidden_layers=())
    reqs = [build_request(it, style) for it in items]
    scores = backend.score_mc(reqs)
    recs = [sample_record(it, r.context, s, style, None) for it, r, s in zip(items, reqs, scores)]
    correct = np.array([r.correct for r in recs], dtype=float)
    conf = np.array([r.signals["option_prob"] for r in recs])
    preds = [r.prediction for r in recs]
    return {"accuracy": float(correct.mean()), "ece": ece(conf, correct, n_bins=n_bins),
            "brier": brier_score(conf, correct), "mean_confidence": mean_confidence(conf),
            "n_items": len(items), "predictions": preds,
            # per question, for the paired intervals (quant/verdict.py) and for --baseline reuse
            "items": {"correct": correct.astype(int).tolist(), "confidence": [float(c) for c in conf],
                      "predictions": preds}}


def evaluate_model(model, tokenizer, ppl_seqs: Sequence | None = None, items: Sequence | None = None,
                   style: str = "cloze") -> dict[str, Any]:
    """Perplexity and/or multiple-choice metrics, with the seconds each took."""
    out: dict[str, Any] = {}
    if ppl_seqs:
        t = time.perf_counter()
        out.update(perplexity(model, ppl_seqs))
        out["ppl_seconds"] = time.perf_counter() - t
    if items:
        t = time.perf_counter()
        out.update(mc_metrics(model, tokenizer, items, style))
        out["mc_seconds"] = time.perf_counter() - t
    return out


def compare(base: dict[str, Any], quant: dict[str, Any]) -> dict[str, Any]:
    """Retention (quantized / original accuracy), perplexity ratio, and the shifts in calibration."""
    out: dict[str, Any] = {}
    if "accuracy" in base and "accuracy" in quant:
        out["retention"] = quant["accuracy"] / base["accuracy"] if base["accuracy"] > 0 else float("nan")
        for k in ("ece", "brier", "mean_confidence"):
            out[f"delta_{k}"] = quant[k] - base[k]
        if "predictions" in base and "predictions" in quant:
            same = sum(a == b for a, b in zip(base["predictions"], quant["predictions"]))
            out["agreement"] = same / max(len(base["predictions"]), 1)
    if "perplexity" in base and "perplexity" in quant:
        out["ppl_ratio"] = quant["perplexity"] / base["perplexity"]
    return out
