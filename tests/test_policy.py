"""Policy levels and the risk-controlled threshold (known answers on synthetic data)."""

from __future__ import annotations

import numpy as np
import pytest

from llmcal.policy import Thresholds, decide, risk_controlled_threshold
from llmcal.policy.risk import clopper_pearson_upper


@pytest.mark.parametrize(
    "conf, level, colour, action, abstained",
    [
        (0.95, "high", "green", "answer", False),
        (0.90, "high", "green", "answer", False),
        (0.80, "medium", "yellow", "answer_with_alternatives", False),
        (0.75, "medium", "yellow", "answer_with_alternatives", False),
        (0.7499, "low", "red", "abstain", True),
        (0.0, "low", "red", "abstain", True),
    ],
)
def test_levels_at_the_brief_defaults(conf, level, colour, action, abstained):
    d = decide(conf, "Paris", [("Paris", conf), ("Lyon", 0.1), ("Nice", 0.05)])
    assert (d.level, d.colour, d.action, d.abstained) == (level, colour, action, abstained)


def test_sentences_and_alternatives():
    cands = [("Paris", 0.8), ("Lyon", 0.15), ("Nice", 0.04), ("Lille", 0.01)]
    assert decide(0.97, "Paris", cands).sentence == "I'm very sure about this."
    assert decide(0.97, "Paris", cands).alternatives == []
    mid = decide(0.8, "Paris", cands, max_alternatives=2)
    assert mid.sentence == "I'm unsure \u2014 here are a few possibilities: Paris, Lyon, Nice."
    assert [a["text"] for a in mid.alternatives] == ["Lyon", "Nice"]
    low = decide(0.3, "Paris", cands)
    assert low.sentence == "I can't answer this safely."
    assert low.answer is None and low.abstained


def test_configurable_thresholds_and_validation():
    t = Thresholds(high=0.6, abstain=0.4)
    assert decide(0.5, "x", thresholds=t).level == "medium"
    assert decide(0.65, "x", thresholds=t).level == "high"
    with pytest.raises(ValueError, match="abstain"):
        Thresholds(high=0.5, abstain=0.7)
    with pytest.raises(ValueError, match="confidence"):
        decide(1.5, "x")


def test_clopper_pearson_matches_closed_form():
    # zero errors in n: the exact upper bound is 1 - delta ** (1 / n)
    n = np.array([10, 50, 200])
    np.testing.assert_allclose(clopper_pearson_upper(np.zeros(3), n, 0.05), 1 - 0.05 ** (1 / n), rtol=1e-10)
    assert clopper_pearson_upper(np.array([5]), np.array([5]), 0.05)[0] == 1.0


def test_risk_control_guarantee_on_calibrated_data():
    """Confidence ~ U(0,1), correct ~ Bernoulli(confidence): the error among answered at
    threshold t is (1 - t) / 2, so a target of 10% is met exactly when t >= 0.8.  Over many
    calibration samples, the chosen threshold may fall below 0.8 in at most ~delta of them."""
    target, delta = 0.10, 0.05
    violations = 0
    thresholds = []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        conf = rng.uniform(size=3000)
        correct = rng.uniform(size=3000) < conf
        rc = risk_controlled_threshold(conf, correct, target, delta)
        thresholds.append(rc.threshold)
        violations += rc.threshold < 0.8
        assert rc.cal_error_upper is None or rc.cal_error_upper <= target
    assert violations / 200 <= delta + 0.03
    # and it is not uselessly conservative: it answers a fair share on average
    assert 0.8 <= np.median(thresholds) < 0.95


def test_risk_control_reports_test_error():
    rng = np.random.default_rng(1)
    conf = rng.uniform(size=4000)
    correct = rng.uniform(size=4000) < conf
    rc = risk_controlled_threshold(conf[:2000], correct[:2000], 0.1, 0.05)
    ev = rc.evaluate(conf[2000:], correct[2000:])
    assert ev["error"] <= 0.1 + 0.02
    assert ev["coverage"] == pytest.approx(1 - rc.threshold, abs=0.05)


def test_risk_control_abstains_when_impossible():
    conf = np.linspace(0, 1, 100)
    correct = np.zeros(100, dtype=bool)  # always wrong
    rc = risk_controlled_threshold(conf, correct, 0.1, 0.05)
    assert rc.threshold == float("inf") and rc.cal_coverage == 0.0
    assert rc.evaluate(conf, correct)["answered"] == 0
    with pytest.raises(ValueError, match="target_error"):
        risk_controlled_threshold(conf, correct, 0.0)
    with pytest.raises(ValueError, match="one length"):
        risk_controlled_threshold(conf, correct[:5])
