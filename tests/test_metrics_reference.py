"""Reference values: llmcal.metrics against netcal, torchmetrics, scikit-learn and HELM.

The expected numbers below were computed once from those libraries (netcal 1.4.0,
torchmetrics 1.9.0 with float64 tensors, scikit-learn 1.9.1, and uncertainty-calibration
0.1.4 -- the ``calibration`` package HELM's ``basic_metrics.compute_calibration_metrics``
calls) on the inputs this file builds, and are written here as literals, so the tests need
none of those libraries.  The inputs come from a fixed arithmetic formula (no random
generator, whose stream could change between numpy versions).

Agreement is to 1e-12 relative (the libraries sum in different orders; the values differ
in the last one or two digits at most).  Known, deliberate differences are tested as such:

* torchmetrics puts a confidence of exactly 1.0 into an extra, (n_bins+1)-th bin; llmcal
  (like netcal and numpy's histogram) puts it in the last bin (``CASE_EDGE``).
* scikit-learn's ``calibration_curve`` uses right-closed bins, llmcal left-closed ones; the
  curves are compared on inputs with no value on a bin edge.
* HELM's selective metrics order ties arbitrarily; llmcal averages over tie orders, so they
  are compared on distinct confidences.
* netcal cannot form 15 equal-mass bins on heavily tied data ("smallest edge difference is
  numerically 0"); llmcal can.
"""

from __future__ import annotations

import numpy as np
import pytest

import llmcal.metrics as M

PHI = 0.6180339887498949
S2 = 0.4142135623730951
S3 = 0.7320508075688772
REL = 1e-12


def frac(a):
    return a - np.floor(a)


def case_a(n=2000):
    """Overconfident at low confidence, underconfident at high: ECE differs from |overconfidence|."""
    i = np.arange(1, n + 1, dtype=np.float64)
    u = frac(i * PHI)
    v = frac(i * S2 + 0.5)
    conf = 0.3 + 0.7 * u
    return conf, v < 1.3 * conf - 0.25


def case_ties(n=1000):
    """Confidences on a 0.05 grid: ties, values on bin edges, and exact 1.0."""
    conf, correct = case_a(n)
    return np.round(conf * 20) / 20, correct


def case_multi(n=300, k=4):
    i = np.arange(1, n + 1, dtype=np.float64)[:, None]
    j = np.arange(k, dtype=np.float64)[None, :]
    logits = 3.0 * np.sin(i * (j + 1) * S3 + j)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = (np.floor(frac(i[:, 0] * PHI) * 1.6 * k).astype(int)) % k
    labels = np.where(frac(i[:, 0] * S2) < 0.55, p.argmax(1), labels)
    return p, labels


EDGE_CONF = np.array([0.0, 1.0, 1.0, 0.5, 0.2, 0.95, 0.1, 0.7, 1.0, 0.0, 0.3, 0.9])
EDGE_CORRECT = np.array([0, 1, 0, 1, 0, 1, 1, 0, 1, 1, 0, 1])

CASE_A = {
    'netcal_ECE_10': 0.06706026373599679,
    'netcal_MCE_10': 0.15430392161316378,
    'netcal_ACE_10': 0.06500296121564059,
    'torchmetrics_l1_10': 0.06706026373599677,
    'torchmetrics_l2_10': 0.08223356628648552,
    'torchmetrics_max_10': 0.15430392161316378,
    'netcal_ECE_15': 0.06706026373599684,
    'netcal_MCE_15': 0.169409339690316,
    'netcal_ACE_15': 0.06738188737866203,
    'torchmetrics_l1_15': 0.06706026373599684,
    'torchmetrics_l2_15': 0.08264195341070063,
    'torchmetrics_max_15': 0.169409339690316,
    'sklearn_roc_auc': 0.8140414821449304,
    'sklearn_average_precision': 0.8733977452492131,
    'sklearn_brier': 0.17910510065196886,
    'sklearn_log_loss': 0.527180004099286,
    'helm_ece_10_bin': 0.06500296121564045,
    'helm_ece_1_bin': 0.0560040209888949,
    'helm_selective_cov_acc_area': 0.8177677790010914,
    'helm_selective_acc@10': 0.9950248756218906,
    'sklearn_curve_uniform_prob_true': [
        0.1958041958041958, 0.33916083916083917, 0.47017543859649125, 0.5944055944055944, 0.7202797202797203,
        0.8636363636363636, 0.9754385964912281,
    ],
    'sklearn_curve_uniform_prob_pred': [
        0.3501081174173596, 0.45013757152131134, 0.5501066425296498, 0.650007983126497, 0.7500396552213414,
        0.8502354878212816, 0.9500926587228483,
    ],
    'sklearn_curve_quantile_prob_true': [
        0.175, 0.275, 0.375, 0.455, 0.555, 0.645, 0.73, 0.83, 0.905, 0.995,
    ],
    'sklearn_curve_quantile_prob_pred': [
        0.3351100591586516, 0.405012837874129, 0.47492588051370566, 0.545021141563153, 0.6150598626529022,
        0.6850112520106418, 0.754893877249495, 0.8250246876617172, 0.8949760770194554, 0.9650045341850999,
    ],
}
CASE_TIES = {
    'netcal_ECE_10': 0.06865000000000013,
    'netcal_MCE_10': 0.16690140845070459,
    'netcal_ACE_10': 0.0698499999999998,
    'netcal_ECE_15': 0.06865000000000034,
    'netcal_MCE_15': 0.16690140845070459,
    'sklearn_roc_auc': 0.8150059456973453,
    'sklearn_average_precision': 0.8614560718457829,
    'sklearn_brier': 0.1786425,
    'sklearn_log_loss': 0.5256185714756206,
    'helm_ece_10_bin': 0.06984999999999991,
    'helm_ece_1_bin': 0.057049999999999934,
}
CASE_MULTI = {
    'netcal_toplabel_ECE_15': 0.08533906815064696,
    'torchmetrics_multiclass_l1_15': 0.08533910661935806,
    'helm_marginal_ece_15': 0.11748143464572831,
    'sklearn_brier_multiclass': 0.627382285583111,
    'sklearn_log_loss_multiclass': 1.5453732054970355,
}
CASE_EDGE = {
    'netcal_ECE_5': 0.37083333333333324,
    'netcal_MCE_5': 0.7,
    'torchmetrics_l1_5': 0.39583333333333337,
    'netcal_ECE_10': 0.37083333333333324,
    'netcal_MCE_10': 0.9,
    'torchmetrics_l1_10': 0.39583333333333337,
}


def approx(v):
    return pytest.approx(v, rel=REL, abs=1e-15)


def test_inputs_are_what_the_references_saw():
    x, y = case_a()
    assert x.shape == (2000,) and y.sum() == 1188
    assert x.mean() == pytest.approx(0.6500040209888949, rel=1e-15)
    e = np.linspace(0, 1, 16)
    assert np.min(np.abs(x[:, None] - e[None, :])) > 1e-6  # no value on a 10- or 15-bin edge
    xt, _ = case_ties()
    assert (xt == 1.0).sum() > 0 and len(np.unique(xt)) == 15


@pytest.mark.parametrize("b", [10, 15])
def test_ece_mce_ace_equal_netcal_and_torchmetrics(b):
    x, y = case_a()
    assert M.ece(x, y, n_bins=b) == approx(CASE_A[f"netcal_ECE_{b}"])
    assert M.ece(x, y, n_bins=b, norm="max") == approx(CASE_A[f"netcal_MCE_{b}"])
    assert M.mce(x, y, n_bins=b) == approx(CASE_A[f"netcal_MCE_{b}"])
    assert M.ece(x, y, n_bins=b, strategy="quantile") == approx(CASE_A[f"netcal_ACE_{b}"])
    assert M.ace(x, y, n_bins=b) == approx(CASE_A[f"netcal_ACE_{b}"])
    for norm in ("l1", "l2", "max"):
        assert M.ece(x, y, n_bins=b, norm=norm) == approx(CASE_A[f"torchmetrics_{norm}_{b}"])
    assert M.rmsce(x, y, n_bins=b) == approx(CASE_A[f"torchmetrics_l2_{b}"])
    # not a degenerate case: bins are both over- and underconfident
    assert M.ece(x, y, n_bins=b) > M.ece_1_bin(x, y) + 0.01


def test_binned_values_on_ties_and_edges_equal_netcal():
    x, y = case_ties()
    for b in (10, 15):
        assert M.ece(x, y, n_bins=b) == approx(CASE_TIES[f"netcal_ECE_{b}"])
        assert M.mce(x, y, n_bins=b) == approx(CASE_TIES[f"netcal_MCE_{b}"])
    assert M.ace(x, y, n_bins=10) == approx(CASE_TIES["netcal_ACE_10"])
    assert 0.0 <= M.ace(x, y, n_bins=15) <= 1.0  # netcal raises here


def test_exact_zero_and_one_land_in_first_and_last_bin():
    x, y = EDGE_CONF, EDGE_CORRECT
    for b in (5, 10):
        assert M.ece(x, y, n_bins=b) == approx(CASE_EDGE[f"netcal_ECE_{b}"])
        assert M.mce(x, y, n_bins=b) == approx(CASE_EDGE[f"netcal_MCE_{b}"])
        rd = M.reliability_data(x, y, n_bins=b)
        assert rd.counts.sum() == len(x) and len(rd.counts) == b
        assert rd.counts[0] == (x < 1.0 / b).sum()  # both 0.0 values are in the first bin
        assert rd.counts[-1] == (x >= (b - 1) / b).sum()  # all three 1.0 values are in the last bin
        # torchmetrics 1.9 gives a different number: it opens an extra bin for exactly 1.0
        assert M.ece(x, y, n_bins=b) != pytest.approx(CASE_EDGE[f"torchmetrics_l1_{b}"], rel=1e-3)


def test_ranking_and_scores_equal_scikit_learn():
    for case, ref in ((case_a, CASE_A), (case_ties, CASE_TIES)):
        x, y = case()
        assert M.auroc(x, y) == approx(ref["sklearn_roc_auc"])
        assert M.auprc(x, y) == approx(ref["sklearn_average_precision"])
        assert M.brier_score(x, y) == approx(ref["sklearn_brier"])
        assert M.nll(x, y) == approx(ref["sklearn_log_loss"])


def test_helm_metrics_equal_helm():
    for case, ref in ((case_a, CASE_A), (case_ties, CASE_TIES)):
        x, y = case()
        assert M.ece_10_bin(x, y) == approx(ref["helm_ece_10_bin"])
        assert M.ece_1_bin(x, y) == approx(ref["helm_ece_1_bin"])
    x, y = case_a()
    assert M.selective_cov_acc_area(x, y) == approx(CASE_A["helm_selective_cov_acc_area"])
    assert M.selective_acc_at_10(x, y) == approx(CASE_A["helm_selective_acc@10"])
    assert M.aurc(x, y) == approx(1.0 - CASE_A["helm_selective_cov_acc_area"])
    s = M.summarize(x, y)
    assert s["ece_10_bin"] == approx(CASE_A["helm_ece_10_bin"])
    assert s["selective_acc@10"] == approx(CASE_A["helm_selective_acc@10"])


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_reliability_data_equals_calibration_curve(strategy):
    x, y = case_a()
    rd = M.reliability_data(x, y, n_bins=10, strategy=strategy)
    nz = rd.counts > 0
    np.testing.assert_allclose(rd.accuracy[nz], CASE_A[f"sklearn_curve_{strategy}_prob_true"], rtol=REL)
    np.testing.assert_allclose(rd.mean_confidence[nz], CASE_A[f"sklearn_curve_{strategy}_prob_pred"], rtol=REL)
    assert np.isnan(rd.accuracy[~nz]).all()
    assert rd.ece() == approx(M.ece(x, y, n_bins=10, strategy=strategy))


def test_multiclass_equal_netcal_torchmetrics_helm_sklearn():
    p, lab = case_multi()
    assert M.toplabel_ece(p, lab, n_bins=15) == approx(CASE_MULTI["netcal_toplabel_ECE_15"])
    # torchmetrics' multiclass path works in float32 internally
    assert M.toplabel_ece(p, lab, n_bins=15) == pytest.approx(CASE_MULTI["torchmetrics_multiclass_l1_15"], abs=1e-6)
    assert M.classwise_ece(p, lab, n_bins=15) == approx(CASE_MULTI["helm_marginal_ece_15"])
    assert M.brier_score(p, lab) == approx(CASE_MULTI["sklearn_brier_multiclass"])
    assert M.nll(p, lab) == approx(CASE_MULTI["sklearn_log_loss_multiclass"])
