"""What a quantization did, in words a reader can act on: paired intervals and a one-line verdict.

The float model and the quantized one answer the same ``n`` questions, so the
uncertainty of their difference is a *paired* bootstrap over those questions
(Efron & Tibshirani 1993): each resample draws ``n`` question indices once and
recomputes both models' accuracy and ECE on them, so the question-to-question
variation that both share cancels out of the retention and the ECE shift.

:func:`paired_intervals` gives the intervals, :func:`verdict` the sentence
("AWQ W4 g64 keeps 98% [95-101%] of accuracy; confidence calibration unchanged
(ECE +0.002 [-0.021, +0.025])"), :data:`DEFINITIONS` the meaning of every number
``llmcal quantize`` prints, and :func:`baseline_key` / :func:`check_baseline` let
``--baseline`` reuse a float measurement only when it measured the same thing.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from llmcal.metrics import ece
from llmcal.metrics.bootstrap import resample_indices

#: What each printed figure means (printed under the table).
DEFINITIONS = {
    "perplexity": "exp(mean next-token NLL) on the held-out text (lower is better)",
    "accuracy": "share of multiple-choice questions whose top option is the answer",
    "ece": "expected calibration error of option_prob, 15 equal-width bins (lower is better)",
    "brier": "mean squared error of option_prob against correct/wrong",
    "mean_confidence": "mean option_prob of the predicted option",
    "retention": "quantized accuracy / float accuracy on the same questions (1.00 = nothing lost)",
    "ppl_ratio": "quantized / float perplexity (1.00 = unchanged)",
    "agreement": "share of questions where both models pick the same option",
}

#: The settings a float baseline depends on; ``--baseline`` refuses a run where any differs.
BASELINE_FIELDS = ("model_args", "tasks", "limit", "data_dir", "ppl_text", "ppl_limit", "seq_len")


def paired_intervals(before: Mapping[str, Any], after: Mapping[str, Any], n_resamples: int = 1000,
                     seed: int = 0, alpha: float = 0.05, n_bins: int = 15) -> dict[str, tuple[float, float, float]]:
    """Point value and percentile interval ``(point, low, high)`` of each paired figure.

    ``before`` / ``after`` hold per-question ``correct`` (n,) in {0, 1} and
    ``confidence`` (n,) in [0, 1] for the same questions in the same order.
    Returns ``accuracy_before``, ``accuracy_after``, ``retention``,
    ``ece_before``, ``ece_after`` and ``delta_ece``; resamples where the float
    accuracy is 0 are left out of the retention.
    """
    cb, ca = np.asarray(before["correct"], float), np.asarray(after["correct"], float)
    xb, xa = np.asarray(before["confidence"], float), np.asarray(after["confidence"], float)
    n = len(cb)
    if n == 0 or not (len(ca) == len(xb) == len(xa) == n):
        raise ValueError(f"paired intervals need the same questions before and after: got {len(cb)}, {len(ca)} "
                         f"answers and {len(xb)}, {len(xa)} confidences")
    draws: dict[str, list[np.ndarray]] = {k: [] for k in ("acc_b", "acc_a", "ece_b", "ece_a")}
    for idx in resample_indices(n, n_resamples, seed):  # (rows, n): the same questions for both models
        draws["acc_b"].append(cb[idx].mean(axis=1))
        draws["acc_a"].append(ca[idx].mean(axis=1))
        draws["ece_b"].append(np.array([ece(xb[i], cb[i], n_bins=n_bins) for i in idx]))
        draws["ece_a"].append(np.array([ece(xa[i], ca[i], n_bins=n_bins) for i in idx]))
    d = {k: np.concatenate(v) for k, v in draws.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        ret = np.where(d["acc_b"] > 0, d["acc_a"] / d["acc_b"], np.nan)

    def interval(point: float, dist: np.ndarray) -> tuple[float, float, float]:
        dist = dist[np.isfinite(dist)]
        if dist.size == 0:
            return point, float("nan"), float("nan")
        lo, hi = np.quantile(dist, [alpha / 2, 1 - alpha / 2])
        return point, float(lo), float(hi)

    acc_b, acc_a = float(cb.mean()), float(ca.mean())
    e_b, e_a = ece(xb, cb, n_bins=n_bins), ece(xa, ca, n_bins=n_bins)
    return {
        "accuracy_before": interval(acc_b, d["acc_b"]),
        "accuracy_after": interval(acc_a, d["acc_a"]),
        "retention": interval(acc_a / acc_b if acc_b > 0 else float("nan"), ret),
        "ece_before": interval(e_b, d["ece_b"]),
        "ece_after": interval(e_a, d["ece_a"]),
        "delta_ece": interval(e_a - e_b, d["ece_a"] - d["ece_b"]),
    }


def _signed(x: float) -> str:
    """``+0.012`` / ``-0.012``; a shift that rounds to zero prints as ``+0.000``, never ``-0.000``."""
    return f"{(0.0 if abs(x) < 5e-4 else x):+.3f}"


def verdict(label: str, intervals: Mapping[str, tuple[float, float, float]], n: int,
            ppl_ratio: float | None = None) -> str:
    """One sentence on accuracy and calibration that the intervals support, e.g. for the summary line.

    Accuracy: "keeps R% [lo-hi%]", and "loses accuracy" only when the whole
    retention interval is below 100%.  Calibration: "unchanged" when the ECE
    shift's interval holds 0, "worse" / "better" when it lies wholly above /
    below it.
    """
    r, rlo, rhi = intervals["retention"]
    d, dlo, dhi = intervals["delta_ece"]
    if not np.isfinite(r):
        acc = "accuracy retention undefined (the float model answered none right)"
    else:
        acc = f"keeps {r:.0%} [{rlo:.0%}-{rhi:.0%}] of accuracy"
        if np.isfinite(rhi) and rhi < 1.0:
            acc = f"loses accuracy: {acc}"
    shift = f"ECE {_signed(d)} [{_signed(dlo)}, {_signed(dhi)}]"
    if not np.isfinite(dlo):
        cal = f"ECE {_signed(d)} (no interval)"
    elif dlo > 0:
        cal = f"confidence calibration worse ({shift})"
    elif dhi < 0:
        cal = f"confidence calibration better ({shift})"
    else:
        cal = f"confidence calibration unchanged ({shift})"
    ppl = f"; perplexity x{ppl_ratio:.2f}" if ppl_ratio is not None and np.isfinite(ppl_ratio) else ""
    return f"{label} {acc}; {cal}{ppl} (n = {n} questions, 95% paired bootstrap)"


def baseline_key(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a quantize run's settings that its float measurement depends on."""
    return {k: settings.get(k) for k in BASELINE_FIELDS}


def check_baseline(saved: Mapping[str, Any], settings: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The float measurement of an earlier ``quant_results.json`` if it measured what ``settings`` ask.

    ``where`` names the file in errors.  Refuses a file without a reusable
    measurement (older runs stored no per-question answers) and names the first
    setting that differs.
    """
    before = saved.get("before")
    key = saved.get("baseline_key")
    if not isinstance(before, dict) or not isinstance(key, dict) or "items" not in before:
        raise ValueError(f"{where}: no reusable float baseline (field 'baseline_key' or 'before.items' is missing; "
                         "it was written by an older llmcal or with --no_eval): run once without --baseline")
    want = baseline_key(settings)
    for k in BASELINE_FIELDS:
        if key.get(k) != want.get(k):
            raise ValueError(f"{where}: its float baseline measured {k} = {key.get(k)!r}, this run asks for "
                             f"{want.get(k)!r}: drop --baseline or match --{k}")
    return dict(before)
