"""Calibration, scoring and selective-prediction metrics: pure functions over arrays.

Conventions everywhere: ``confidence`` is a 1-D array of floats in [0, 1] (higher = more
sure), ``correct`` a 1-D array of 0/1 or bools of the same length.  Multi-class variants take
an (n, k) probability matrix and class-index labels.  Bad input (NaN, inf, out of range,
wrong shape, mismatched lengths) raises a ``ValueError`` that names the argument.

Only numpy is needed (matplotlib for :func:`plot_reliability`, imported when called).  The
values equal netcal's, torchmetrics', scikit-learn's and HELM's on the same input; see
``tests/test_metrics_reference.py`` and ``benchmarks/metrics.py``.
"""

from llmcal.metrics.binning import BinStats, bin_stats, quantile_edges, uniform_edges
from llmcal.metrics.bootstrap import (
    bootstrap_ci,
    bootstrap_distribution,
    bootstrap_resamples,
    resample_indices,
)
from llmcal.metrics.calibration import (
    ReliabilityData,
    accuracy,
    ace,
    classwise_ece,
    ece,
    ece_1_bin,
    ece_10_bin,
    mce,
    mean_confidence,
    overconfidence,
    overconfidence_error,
    reliability_data,
    rmsce,
    toplabel_ece,
)
from llmcal.metrics.plot import plot_reliability
from llmcal.metrics.scores import brier_score, nll
from llmcal.metrics.selective import (
    accuracy_at_coverage,
    auprc,
    aurc,
    auroc,
    risk_coverage_curve,
    selective_acc_at_10,
    selective_cov_acc_area,
)
from llmcal.metrics.summary import (
    METRIC_FUNCTIONS,
    METRIC_SPECS,
    metric_functions,
    metric_specs,
    summarize,
)

__all__ = [
    "BinStats",
    "METRIC_FUNCTIONS",
    "METRIC_SPECS",
    "ReliabilityData",
    "accuracy",
    "accuracy_at_coverage",
    "ace",
    "aurc",
    "auprc",
    "auroc",
    "bin_stats",
    "bootstrap_ci",
    "bootstrap_distribution",
    "bootstrap_resamples",
    "brier_score",
    "classwise_ece",
    "ece",
    "ece_10_bin",
    "ece_1_bin",
    "mce",
    "mean_confidence",
    "metric_functions",
    "metric_specs",
    "nll",
    "overconfidence",
    "overconfidence_error",
    "plot_reliability",
    "quantile_edges",
    "reliability_data",
    "resample_indices",
    "risk_coverage_curve",
    "rmsce",
    "selective_acc_at_10",
    "selective_cov_acc_area",
    "summarize",
    "toplabel_ece",
    "uniform_edges",
]
