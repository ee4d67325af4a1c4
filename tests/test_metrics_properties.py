"""Property tests (hypothesis) of llmcal.metrics and the calibrators' guarantees."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import llmcal.metrics as M
from llmcal.calibrators import IsotonicCalibrator, TemperatureScaling
from llmcal.metrics.binning import bin_index, uniform_bin_index, uniform_edges

# derandomize: the same examples on every run, so CI cannot flake on a rare draw
FAST = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# confidences with plenty of ties and exact 0, 1 and bin-edge values
_grid = st.sampled_from([0.0, 1.0, 0.5, 0.2, 0.6, 1 / 3, 0.9, 0.95])
_conf = st.one_of(_grid, st.floats(0.0, 1.0, allow_nan=False, allow_subnormal=False))


@st.composite
def binary_samples(draw, min_size=2, max_size=60):
    n = draw(st.integers(min_size, max_size))
    x = np.array(draw(st.lists(_conf, min_size=n, max_size=n)), dtype=np.float64)
    y = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    return x, y


def _same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12)


@FAST
@given(binary_samples(), st.randoms(use_true_random=False))
def test_every_metric_is_permutation_invariant(sample, rnd):
    x, y = sample
    perm = np.array(rnd.sample(range(len(x)), len(x)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = M.summarize(x, y)
        b = M.summarize(x[perm], y[perm])
    for k in a:
        assert _same(a[k], b[k]), k


@FAST
@given(binary_samples())
def test_bounds_and_orderings(sample):
    x, y = sample
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = M.summarize(x, y)
    for k in ("accuracy", "mean_confidence", "ece", "ace", "mce", "rmsce", "ece_10_bin", "ece_1_bin", "brier",
              "aurc", "auprc", "selective_acc@10", "selective_cov_acc_area", "overconfidence_error"):
        v = s[k]
        assert math.isnan(v) or -1e-12 <= v <= 1 + 1e-12, (k, v)
    assert -1.0 <= s["overconfidence"] <= 1.0
    assert s["nll"] >= 0.0
    assert math.isnan(s["auroc"]) or 0.0 <= s["auroc"] <= 1.0
    assert s["ece"] <= s["rmsce"] + 1e-12 and s["rmsce"] <= s["mce"] + 1e-12
    assert s["overconfidence_error"] <= s["ece"] + 1e-12
    assert s["ece_1_bin"] <= s["ece"] + 1e-12  # binning can only reveal more miscalibration
    assert s["aurc"] + s["selective_cov_acc_area"] == pytest.approx(1.0)
    cov, risk = M.risk_coverage_curve(x, y)
    assert cov[-1] == 1.0 and risk[-1] == pytest.approx(1 - s["accuracy"])


@FAST
@given(st.lists(_conf, min_size=1, max_size=200), st.integers(1, 40))
def test_uniform_bins_match_the_edges(values, n_bins):
    x = np.array(values)
    e = uniform_edges(n_bins)
    assert np.array_equal(uniform_bin_index(x, n_bins), bin_index(x, e))
    rd = M.reliability_data(x, np.ones(len(x), bool), n_bins=n_bins)
    assert rd.counts.sum() == len(x)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(st.integers(0, 2**31 - 1))
def test_ece_of_a_perfectly_calibrated_sample_tends_to_zero(seed):
    rng = np.random.default_rng(seed)
    x = rng.random(40_000) ** rng.uniform(0.3, 3.0)
    y = rng.random(len(x)) < x  # correct with probability = confidence
    small = M.ece(x[:400], y[:400])
    large = M.ece(x, y)
    assert large < 0.025  # binning noise only: ~ sqrt(bins / n)
    assert large < small + 0.01
    assert M.ace(x, y) < 0.025 and abs(M.overconfidence(x, y)) < 0.015


@FAST
@given(st.integers(0, 2**31 - 1), st.integers(20, 300), st.integers(2, 5), st.floats(0.2, 6.0))
def test_temperature_scaling_never_increases_fit_set_nll(seed, n, k, scale):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, scale, (n, k))
    y = np.where(rng.random(n) < 0.6, logits.argmax(1), rng.integers(0, k, n))
    if k > 2:
        logits[rng.random(n) < 0.3, -1] = -np.inf  # padded options
        y = np.where(np.isinf(logits[np.arange(n), y]), logits.argmax(1), y)
    try:
        t = TemperatureScaling().fit(logits, y)
    except ValueError:
        assume(False)
    e = np.exp(logits - logits.max(1, keepdims=True))
    before = -np.mean(np.log((e / e.sum(1, keepdims=True))[np.arange(n), y]))
    after = -np.mean(np.log(t.predict_proba(logits)[np.arange(n), y]))
    assert after <= before + 1e-12
    # the binary form, on the top-label confidence
    conf = (e / e.sum(1, keepdims=True)).max(1)
    ok = logits.argmax(1) == y
    try:
        tb = TemperatureScaling().fit(conf, ok)
    except ValueError:
        return
    assert M.nll(tb.predict(conf), ok) <= M.nll(np.clip(conf, 1e-12, 1 - 1e-12), ok) + 1e-12


@FAST
@given(binary_samples(min_size=3, max_size=80), hnp.arrays(np.float64, 30, elements=_conf))
def test_isotonic_output_is_monotone_and_in_range(sample, queries):
    x, y = sample
    assume(0 < y.sum() < len(y))
    iso = IsotonicCalibrator().fit(x, y)
    q = np.sort(queries)
    p = iso.predict(q)
    assert np.all(np.diff(p) >= 0) and p.min() >= 0 and p.max() <= 1


@settings(max_examples=10, deadline=None, derandomize=True)
@given(binary_samples(min_size=5, max_size=50), st.sampled_from(["ece", "mce", "brier", "auroc", "aurc",
                                                               "selective_acc@10", "auprc", "nll"]))
def test_bootstrap_fast_path_equals_loop(sample, name):
    x, y = sample
    fast = M.bootstrap_distribution(name, x, y, n_resamples=15, seed=1)
    slow = M.bootstrap_distribution(name, x, y, n_resamples=15, seed=1, vectorized=False)
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-12)
