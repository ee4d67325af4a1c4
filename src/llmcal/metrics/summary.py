"""``summarize``: every headline metric of one (confidence, correct) sample, and ``METRIC_SPECS``.

``METRIC_SPECS`` describes each key of ``summarize``'s result -- direction, range, binning,
reference -- as plain JSON (results.json embeds it).  The callables behind the names live in
``METRIC_FUNCTIONS`` (not JSON), which :func:`llmcal.metrics.bootstrap_ci` also uses.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np

from llmcal.core.validation import check_n_bins, confidence_and_correct
from llmcal.metrics.binning import bin_stats
from llmcal.metrics.calibration import _gap_error, ece_1_bin, ece_10_bin
from llmcal.metrics.scores import _binary_log_loss
from llmcal.metrics.selective import (
    _ap_from_groups_desc,
    _auroc_from_groups,
    _cumulative_correct_desc,
    sorted_groups,
)

DEFAULT_N_BINS = 15


def _binning(n_bins: int, strategy: str, norm: str | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"n_bins": n_bins, "strategy": strategy}
    if norm is not None:
        d["norm"] = norm
    return d


def metric_specs(n_bins: int = DEFAULT_N_BINS) -> dict[str, dict[str, Any]]:
    """The specs of ``summarize(..., n_bins=n_bins)``'s keys (JSON-able)."""
    n_bins = check_n_bins(n_bins)
    unit = [0.0, 1.0]

    def spec(desc: str, higher: bool, rng: list | None = unit, binning: dict | None = None,
             ref: str | None = None, bootstrap: str = "vectorized", best: float | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"description": desc, "higher_is_better": higher, "range": rng, "binning": binning,
                             "bootstrap": bootstrap}
        if best is not None:
            d["best"] = best
        if ref:
            d["reference"] = ref
        return d

    return {
        "n": spec("number of predictions (a count, not a score)", True, None),
        "accuracy": spec("fraction of predictions that are correct", True),
        "mean_confidence": spec("mean confidence", True,
                                ref="compare with accuracy; see overconfidence"),
        "overconfidence": spec("mean confidence minus accuracy (> 0: overconfident, < 0: underconfident); "
                               "closest to 0 is best", False, [-1.0, 1.0], best=0.0),
        "overconfidence_error": spec("overconfidence error: sum over bins of weight * confidence * "
                                     "max(confidence - accuracy, 0)", False,
                                     binning=_binning(n_bins, "uniform"), ref="Thulasidasan et al. 2019"),
        "ece": spec("expected calibration error, equal-width bins", False,
                    binning=_binning(n_bins, "uniform", "l1"), ref="Naeini et al. 2015; Guo et al. 2017"),
        "ace": spec("adaptive calibration error: ECE over equal-mass bins", False,
                    binning=_binning(n_bins, "quantile", "l1"), ref="Nixon et al. 2019", bootstrap="loop"),
        "mce": spec("maximum calibration error: largest |accuracy - confidence| over non-empty bins", False,
                    binning=_binning(n_bins, "uniform", "max"), ref="Naeini et al. 2015"),
        "rmsce": spec("root-mean-square calibration error, equal-width bins", False,
                      binning=_binning(n_bins, "uniform", "l2")),
        "ece_10_bin": spec("HELM's ece_10_bin: L1 calibration error over 10 equal-mass bins (HELM's boundaries)",
                           False, binning={"n_bins": 10, "strategy": "helm_equal_mass", "norm": "l1"},
                           ref="Liang et al. 2022 (HELM), calibration.get_ece_em", bootstrap="loop"),
        "ece_1_bin": spec("HELM's ece_1_bin: |mean confidence - accuracy|", False,
                          binning={"n_bins": 1, "strategy": "uniform", "norm": "l1"},
                          ref="Liang et al. 2022 (HELM), calibration.get_ece"),
        "brier": spec("Brier score: mean squared difference between confidence and correctness", False,
                      ref="Brier 1950"),
        "nll": spec("negative log-likelihood of correctness, nats (probabilities clipped to [eps, 1-eps])", False,
                    [0.0, None]),
        "auroc": spec("AUROC of confidence as a detector of correct answers (0.5 = chance); "
                      "null when only one class is present", True),
        "auprc": spec("average precision of confidence for finding correct answers", True),
        "aurc": spec("area under the risk-coverage curve: mean error rate of the k most confident, k=1..n", False,
                     ref="Geifman & El-Yaniv 2017"),
        "selective_acc@10": spec("HELM's selective_acc@10: accuracy of the most confident 10%", True,
                                 ref="Liang et al. 2022 (HELM), calibration.get_selective_stats"),
        "selective_cov_acc_area": spec("HELM's selective_cov_acc_area: area under the coverage-accuracy curve "
                                       "(= 1 - aurc)", True,
                                       ref="Liang et al. 2022 (HELM), calibration.get_selective_stats"),
    }


#: Specs of ``summarize``'s keys at the default 15 bins; results.json embeds this.
METRIC_SPECS: dict[str, dict[str, Any]] = metric_specs(DEFAULT_N_BINS)


def summarize(confidence, correct, n_bins: int = DEFAULT_N_BINS) -> dict[str, float]:
    """Every metric in ``METRIC_SPECS`` for one sample, as plain Python numbers.

    Binned metrics use ``n_bins`` equal-width bins (``ace``: equal-mass); ``ece_10_bin`` and
    ``ece_1_bin`` are HELM's fixed definitions.  ``auroc`` is ``nan`` (with a warning) when
    only one class is present.  Validates once and sorts once.
    """
    n_bins = check_n_bins(n_bins)
    x, c = confidence_and_correct(confidence, correct)
    n = len(x)
    out: dict[str, float] = {"n": n}
    acc = float(np.mean(c))
    conf = float(np.mean(x))
    out["accuracy"] = acc
    out["mean_confidence"] = conf
    out["overconfidence"] = conf - acc
    s = bin_stats(x, c, n_bins, "uniform")
    nz = s.counts > 0
    cnt = s.counts[nz].astype(np.float64)
    bconf, bacc = s.sum_confidence[nz] / cnt, s.sum_correct[nz] / cnt
    out["overconfidence_error"] = float(np.sum((cnt / cnt.sum()) * bconf * np.maximum(bconf - bacc, 0.0)))
    out["ece"] = _gap_error(s.counts, s.sum_confidence, s.sum_correct, "l1")
    q = bin_stats(x, c, n_bins, "quantile")
    out["ace"] = _gap_error(q.counts, q.sum_confidence, q.sum_correct, "l1")
    out["mce"] = _gap_error(s.counts, s.sum_confidence, s.sum_correct, "max")
    out["rmsce"] = _gap_error(s.counts, s.sum_confidence, s.sum_correct, "l2")
    out["ece_10_bin"] = ece_10_bin(x, c)
    out["ece_1_bin"] = ece_1_bin(x, c)
    d = x - c
    out["brier"] = float(np.dot(d, d) / n)
    out["nll"] = float(np.mean(_binary_log_loss(x, c)))
    _, pos, tot = sorted_groups(x, c)
    n_pos = int(pos.sum())
    if n_pos in (0, n):
        warnings.warn(f"AUROC is undefined when every prediction is {'correct' if n_pos else 'wrong'} "
                      f"(one class only, n={n}); returning nan", UserWarning, stacklevel=2)
        out["auroc"] = float("nan")
    else:
        out["auroc"] = _auroc_from_groups(pos, tot)
    out["auprc"] = _ap_from_groups_desc(pos[::-1], tot[::-1]) if n_pos else float("nan")
    cum = _cumulative_correct_desc(pos[::-1], tot[::-1])
    k = np.arange(1, n + 1, dtype=np.float64)
    accs = cum / k
    out["aurc"] = float(np.mean((k - cum) / k))
    out["selective_acc@10"] = float(accs[int(0.1 * n)])
    out["selective_cov_acc_area"] = float(np.mean(accs))
    return out


def metric_functions(n_bins: int = DEFAULT_N_BINS) -> dict[str, Callable[[Any, Any], float]]:
    """name -> callable(confidence, correct) for every key of ``summarize``."""
    from llmcal.metrics import calibration as C
    from llmcal.metrics import scores as S
    from llmcal.metrics import selective as L

    return {
        "n": lambda x, c: float(len(confidence_and_correct(x, c)[0])),
        "accuracy": C.accuracy,
        "mean_confidence": C.mean_confidence,
        "overconfidence": C.overconfidence,
        "overconfidence_error": lambda x, c: C.overconfidence_error(x, c, n_bins=n_bins),
        "ece": lambda x, c: C.ece(x, c, n_bins=n_bins),
        "ace": lambda x, c: C.ece(x, c, n_bins=n_bins, strategy="quantile"),
        "mce": lambda x, c: C.ece(x, c, n_bins=n_bins, norm="max"),
        "rmsce": lambda x, c: C.ece(x, c, n_bins=n_bins, norm="l2"),
        "ece_10_bin": C.ece_10_bin,
        "ece_1_bin": C.ece_1_bin,
        "brier": S.brier_score,
        "nll": S.nll,
        "auroc": L.auroc,
        "auprc": L.auprc,
        "aurc": L.aurc,
        "selective_acc@10": L.selective_acc_at_10,
        "selective_cov_acc_area": L.selective_cov_acc_area,
    }


#: name -> callable(confidence, correct) at the default binning.
METRIC_FUNCTIONS = metric_functions(DEFAULT_N_BINS)
