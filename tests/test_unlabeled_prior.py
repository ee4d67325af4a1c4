"""Label-free adaptation (issue #15): ATC shrunk to the source accuracy (``atc_prior``) and the
confidence shrink toward the estimate (``shrink_toward``), on worked examples and synthetic shifted
data with known answers.  No model needed."""

from __future__ import annotations

import numpy as np
import pytest

from llmcal import metrics as M
from llmcal.calibrators.calibration import Calibration
from llmcal.calibrators.unlabeled import (CONFIDENCE_SHRINK, ESTIMATORS, PRIOR_WEIGHT, atc_estimate,
                                          atc_prior_estimate, estimate_accuracy, shrink_toward)
from test_transfer import _mc_samples


def test_atc_prior_is_atc_averaged_with_the_source_accuracy_on_a_worked_example():
    src = np.array([0.9, 0.8, 0.7, 0.6])
    ok = np.array([1, 1, 0, 0])  # source accuracy 0.5, ATC threshold 0.75
    tgt = np.array([0.95, 0.9, 0.85, 0.5])  # three of four above: ATC says 0.75
    assert atc_estimate(src, ok, tgt) == 0.75
    assert PRIOR_WEIGHT == 0.5
    assert atc_prior_estimate(src, ok, tgt) == pytest.approx(0.5 * 0.75 + 0.5 * 0.5)
    assert estimate_accuracy("atc_prior", src, ok, tgt) == pytest.approx(0.625)
    assert "atc_prior" in ESTIMATORS
    # the two ends: weight 1 is ATC, weight 0 the source accuracy (the constant baseline's confidence)
    assert atc_prior_estimate(src, ok, tgt, weight=1.0) == 0.75
    assert atc_prior_estimate(src, ok, tgt, weight=0.0) == 0.5
    assert atc_prior_estimate(src, ok, tgt, weight=0.25) == pytest.approx(0.25 * 0.75 + 0.75 * 0.5)
    with pytest.raises(ValueError, match=r"weight must be in \[0, 1\], got 1.5"):
        atc_prior_estimate(src, ok, tgt, weight=1.5)
    with pytest.raises(ValueError, match="source: 4 confidences but 3 correctness labels"):
        atc_prior_estimate(src, ok[:3], tgt)


def test_atc_prior_halves_atcs_error_when_the_targets_confidence_runs_high():
    """Known answer: on the source, right answers sit above 0.7 and wrong ones below 0.6 (accuracy 0.5),
    so ATC's threshold is ~0.65.  The target (a two-option task, say) reads confident everywhere,
    every confidence above 0.7, but is right only 60% of the time: ATC says 1.0 (error 0.4), the
    shrunk estimate (1.0 + 0.5) / 2 = 0.75 (error 0.15)."""
    rng = np.random.default_rng(0)
    n = 400
    ok = (np.arange(n) < n // 2).astype(float)
    src = np.where(ok == 1, rng.uniform(0.72, 0.99, n), rng.uniform(0.3, 0.58, n))
    tgt = rng.uniform(0.71, 0.99, n)
    tgt_ok = rng.random(n) < 0.6
    assert atc_estimate(src, ok, tgt) == 1.0
    est = atc_prior_estimate(src, ok, tgt)
    assert est == pytest.approx(0.75)
    assert abs(est - tgt_ok.mean()) < abs(1.0 - tgt_ok.mean())
    # and when the source's relation does hold on the target, it is still halfway to the truth
    tgt2 = np.where(np.arange(n) < int(0.8 * n), rng.uniform(0.72, 0.99, n), rng.uniform(0.3, 0.58, n))
    assert atc_estimate(src, ok, tgt2) == pytest.approx(0.8)
    assert atc_prior_estimate(src, ok, tgt2) == pytest.approx(0.65)


def test_shrink_toward_keeps_the_ranking_and_the_mean():
    c = np.array([0.2, 0.4, 0.9, 0.5])
    assert CONFIDENCE_SHRINK == 0.25
    np.testing.assert_allclose(shrink_toward(c, 0.5, 0.5), [0.35, 0.45, 0.7, 0.5])
    np.testing.assert_allclose(shrink_toward(c, 0.5), 0.5 + 0.25 * (c - 0.5))
    np.testing.assert_allclose(shrink_toward(c, 0.3, 1.0), c)  # factor 1: unchanged
    np.testing.assert_allclose(shrink_toward(c, c.mean(), 0.3).mean(), c.mean())  # mean kept at the center
    rng = np.random.default_rng(1)
    x = rng.random(500)
    y = (rng.random(500) < x).astype(float)
    assert M.auroc(shrink_toward(x, 0.4, 0.1), y) == pytest.approx(M.auroc(x, y))  # ranking kept
    assert np.all((shrink_toward(x, 1.0, 0.5) >= 0) & (shrink_toward(x, 1.0, 0.5) <= 1))
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"factor must be in \(0, 1\]"):
            shrink_toward(c, 0.5, bad)
    with pytest.raises(ValueError, match=r"center must be in \[0, 1\]"):
        shrink_toward(c, 1.2)
    with pytest.raises(ValueError, match=r"shrink_toward: confidences must be finite numbers in \[0, 1\]"):
        shrink_toward(np.array([0.5, np.nan]), 0.5)


def test_shrink_lowers_ece_when_the_spread_outruns_the_ranking():
    """Known answer: confidence spread over [0.1, 0.9] that carries *no* information (labels drawn at
    the mean 0.5): the well-calibrated confidence is the constant 0.5, and the closer the shrink, the
    lower the ECE, with the mean (0.5) unchanged."""
    rng = np.random.default_rng(2)
    n = 4000
    conf = rng.uniform(0.1, 0.9, n)
    y = (rng.random(n) < 0.5).astype(float)
    eces = [M.ece(shrink_toward(conf, 0.5, f), y, 15) for f in (1.0, 0.5, 0.25)]
    assert eces[0] > 0.15 and eces[0] > eces[1] > eces[2]
    assert eces[2] < 0.07


def test_atc_prior_through_the_pipeline_rescales_and_reads_no_target_label():
    from llmcal.pipeline.transfer import adapt_calibration, parse_estimator

    rng = np.random.default_rng(4)
    src = _mc_samples(rng, 600, sharpness=3.0, scale=2.0, task="s")
    tgt = _mc_samples(rng, 600, sharpness=3.0, scale=0.8, task="t")
    cal = Calibration.fit(src, "option_prob", "temperature")
    name, gauge = parse_estimator("atc_prior@option_prob_norm", src)
    assert name == "atc_prior" and gauge.describe() == "platt on option_prob_norm"
    a = adapt_calibration(cal, src, tgt, name, reference=gauge)
    src_y = np.array([s.correct for s in src], dtype=float)
    want = 0.5 * atc_estimate(gauge.confidences(src), src_y, gauge.confidences(tgt)) + 0.5 * src_y.mean()
    assert a.info["estimated_accuracy"] == pytest.approx(want)
    assert a.confidences(tgt).mean() == pytest.approx(want, abs=1e-4)
    flipped = [s.__class__.from_dict({**s.to_dict(), "correct": not s.correct}) for s in tgt]
    assert adapt_calibration(cal, src, flipped, name, reference=gauge).info == a.info
    # shrinking the adapted confidence toward the estimate keeps its mean and its AUROC
    conf = a.confidences(tgt)
    y = np.array([s.correct for s in tgt], dtype=float)
    shrunk = shrink_toward(conf, want)
    assert shrunk.mean() == pytest.approx(want, abs=1e-4)
    assert M.auroc(shrunk, y) == pytest.approx(M.auroc(conf, y))
    # the synthetic target is harder (scale 0.8 against 2.0): the estimate falls below the source accuracy
    assert want < src_y.mean()
