"""llmcal.calibrators: each one fixes an overconfident model, round-trips through JSON, and fails loudly."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import llmcal.metrics as M
from llmcal.calibrators import (
    CALIBRATORS,
    BetaCalibration,
    Calibrator,
    HistogramBinning,
    IsotonicCalibrator,
    PlattScaling,
    TemperatureScaling,
    from_dict,
    get_calibrator,
)
from llmcal.calibrators.base import logit, sigmoid

NAMES = ["temperature", "temperature_norm", "platt", "isotonic", "histogram", "beta"]


def overconfident(n=6000, seed=0):
    """Like an LLM: mean confidence ~0.81, accuracy ~0.50, and confidence still ranks answers."""
    rng = np.random.default_rng(seed)
    z = rng.normal(1.9, 1.3, n)
    conf = sigmoid(z)
    correct = rng.random(n) < sigmoid((z - 1.9) / 1.5)
    return conf, correct


def overconfident_logits(n=4000, k=5, seed=0, true_t=3.6):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1, (n, k))
    z[:, 0] += 1.0
    # labels drawn from softmax(z), reported logits are z * true_t (too sharp)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(1)
    logits = z * true_t
    pad = rng.random(n) < 0.3  # some items have only 4 options: padded with -inf
    logits[pad, -1] = -np.inf
    labels = np.where(pad & (labels == k - 1), 0, labels)
    return logits, labels


def test_the_synthetic_sample_is_llm_like():
    conf, correct = overconfident()
    assert conf.mean() == pytest.approx(0.81, abs=0.015)
    assert correct.mean() == pytest.approx(0.50, abs=0.02)
    assert M.auroc(conf, correct) > 0.65


# How far each must bring held-out ECE down.  Binary temperature scaling has no bias term: it
# can shrink logit(p) towards 0 but not shift it, so on a sample whose logits are centred far
# from where the accuracy is it helps less than the others (the multi-class case, where the
# overconfidence is pure over-sharpening, is fixed to within noise: see the next test).
FACTOR = {"temperature": 2.0, "temperature_norm": 2.0, "platt": 3.0, "isotonic": 3.0, "histogram": 3.0, "beta": 3.0}


@pytest.mark.parametrize("name", NAMES)
def test_each_calibrator_reduces_held_out_ece(name):
    conf, correct = overconfident()
    fit, test = slice(0, 3000), slice(3000, None)
    before = M.ece(conf[test], correct[test])
    cal = get_calibrator(name).fit(conf[fit], correct[fit])
    after_conf = cal.predict(conf[test])
    after = M.ece(after_conf, correct[test])
    assert before > 0.25
    assert after < before / FACTOR[name], (name, before, after)
    assert M.brier_score(after_conf, correct[test]) < M.brier_score(conf[test], correct[test])
    # it changed the confidences, it did not hand them back (netcal's silent failure)
    assert np.max(np.abs(after_conf - conf[test])) > 0.1
    assert after_conf.shape == conf[test].shape and after_conf.min() >= 0 and after_conf.max() <= 1


def test_temperature_on_multiclass_logits_with_padding():
    logits, labels = overconfident_logits()
    fit, test = slice(0, 2000), slice(2000, None)
    t = TemperatureScaling().fit(logits[fit], labels[fit])
    assert t.temperature_ == pytest.approx(3.6, rel=0.1)  # recovers the true over-sharpening
    proba = t.predict_proba(logits[test])
    assert proba.shape == logits[test].shape
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-12)
    assert np.all(proba[np.isinf(logits[test])] == 0.0)
    assert np.array_equal(proba.argmax(1), logits[test].argmax(1))  # the answer never changes
    conf = t.predict(logits[test])
    np.testing.assert_allclose(conf, proba.max(1), rtol=1e-12)
    correct = logits[test].argmax(1) == labels[test]
    e = np.exp(logits[test] - logits[test].max(1, keepdims=True))
    raw = (e / e.sum(1, keepdims=True)).max(1)
    assert raw.mean() == pytest.approx(0.81, abs=0.02) and correct.mean() == pytest.approx(0.5, abs=0.03)
    assert M.ece(raw, correct) > 0.25
    assert M.ece(conf, correct) < M.ece(raw, correct) / 5
    assert M.nll(proba, labels[test]) < M.nll(e / e.sum(1, keepdims=True), labels[test])


def test_binary_temperature_is_logit_over_t():
    conf, correct = overconfident()
    t = TemperatureScaling().fit(conf, correct)
    assert t.mode_ == "binary" and t.temperature_ > 1.5
    np.testing.assert_allclose(t.predict(conf[:50]), sigmoid(logit(conf[:50]) / t.temperature_))
    pp = t.predict_proba(conf[:5])
    assert pp.shape == (5, 2) and np.allclose(pp.sum(1), 1)
    with pytest.raises(ValueError, match="binary confidence"):
        t.predict(np.zeros((3, 2)))
    tm = TemperatureScaling().fit(*overconfident_logits(n=500))
    # a temperature belongs to the logits, not to their number: a 5-column fit scales 2 or 4 columns
    for k in (2, 4):
        z = np.random.default_rng(k).normal(size=(3, k))
        e = np.exp((z - z.max(1, keepdims=True)) / tm.temperature_)
        np.testing.assert_allclose(tm.predict_proba(z), e / e.sum(1, keepdims=True), rtol=1e-12)
        np.testing.assert_allclose(tm.predict(z), (e / e.sum(1, keepdims=True)).max(1), rtol=1e-12)
    with pytest.raises(ValueError, match=r"\(n, k\) logit matrix"):
        tm.predict(np.zeros((3, 1)))


@pytest.mark.parametrize("name", NAMES)
def test_to_dict_round_trips_through_json_bitwise(name):
    conf, correct = overconfident(n=2000, seed=3)
    cal = get_calibrator(name).fit(conf, correct)
    d = cal.to_dict()
    assert d["name"] == name
    text = json.dumps(d, allow_nan=False)
    back = from_dict(json.loads(text))
    assert type(back) is type(cal)
    q = np.concatenate([conf, [0.0, 1.0, 0.5, 1e-300]])
    assert np.array_equal(back.predict(q), cal.predict(q))
    assert back.to_dict() == d
    assert type(cal).from_dict(json.loads(text)).to_dict() == d


def test_multiclass_temperature_round_trip_and_checklist_key():
    logits, labels = overconfident_logits(n=800)
    t = TemperatureScaling().fit(logits, labels)
    d = json.loads(json.dumps(t.to_dict()))
    assert isinstance(d["temperature_"], float) and d["mode_"] == "multiclass" and d["n_classes_"] == 5
    back = from_dict(d)
    assert np.array_equal(back.predict(logits), t.predict(logits))
    assert np.array_equal(back.predict_proba(logits), t.predict_proba(logits))


def test_registry():
    assert set(CALIBRATORS) == set(NAMES) | {"platt_chance"}  # it needs n_options: tests/test_chance_platt.py
    for name, cls in CALIBRATORS.items():
        obj = get_calibrator(name)
        assert isinstance(obj, cls) and isinstance(obj, Calibrator) and obj.name == name
        assert not obj.is_fitted and obj.to_dict()["name"] == name
    h = get_calibrator("histogram", n_bins=5, strategy="uniform")
    assert h.get_params() == {"n_bins": 5, "strategy": "uniform"}
    with pytest.raises(ValueError, match="unknown calibrator 'tempreature'; known: beta, histogram"):
        get_calibrator("tempreature")
    with pytest.raises(ValueError, match="unknown calibrator"):
        from_dict({"name": "nope"})
    with pytest.raises(ValueError, match="'name'"):
        from_dict({"temperature_": 2.0})
    with pytest.raises(ValueError, match="incomplete state"):
        from_dict({"name": "platt", "a_": 1.0})
    with pytest.raises(ValueError, match="expected name 'beta'"):
        BetaCalibration.from_dict({"name": "platt"})


@pytest.mark.parametrize("name", NAMES)
def test_fitting_fails_loudly_on_one_class_and_too_few_samples(name):
    conf = np.linspace(0.3, 0.9, 40)
    with pytest.raises(ValueError, match="all 40 samples are correct"):
        get_calibrator(name).fit(conf, np.ones(40, bool))
    with pytest.raises(ValueError, match="all 40 samples are wrong"):
        get_calibrator(name).fit(conf, np.zeros(40, bool))
    cal = get_calibrator(name)
    with pytest.raises(ValueError, match="needs at least"):
        cal.fit([0.4], [1])
    with pytest.raises(ValueError, match="not fitted"):
        cal.predict([0.5])
    with pytest.raises(ValueError, match="x contains NaN"):
        get_calibrator(name).fit([0.1, np.nan, 0.5, 0.6, 0.7], [0, 1, 0, 1, 1])
    with pytest.raises(ValueError, match="x and correct have different lengths|x and y have different lengths"):
        get_calibrator(name).fit([0.1, 0.5, 0.6, 0.7], [0, 1, 1])


def test_temperature_refuses_a_meaningless_fit():
    rng = np.random.default_rng(2)
    conf = rng.uniform(0.6, 0.99, 500)
    noise = rng.random(500) < 0.5  # confidence unrelated to correctness: optimum T -> infinity
    with pytest.raises(ValueError, match="edge of bounds"):
        TemperatureScaling().fit(conf, noise)
    with pytest.raises(ValueError, match="one class only"):
        TemperatureScaling().fit(np.array([[2.0, 0.0], [3.0, 1.0]]), [0, 0])
    with pytest.raises(ValueError, match="padded"):
        TemperatureScaling().fit(np.array([[2.0, -np.inf], [3.0, 1.0], [0.0, 1.0]]), [1, 0, 0])
    with pytest.raises(ValueError, match="no finite logit"):
        TemperatureScaling().fit(np.array([[-np.inf, -np.inf], [3.0, 1.0]]), [0, 0])
    with pytest.raises(ValueError, match="bounds"):
        TemperatureScaling(bounds=(2.0, 3.0)).fit(conf, noise)


def test_platt_smoothing_keeps_separated_data_finite():
    conf = np.array([0.2, 0.3, 0.35, 0.8, 0.9, 0.95])
    correct = np.array([0, 0, 0, 1, 1, 1])
    p = PlattScaling().fit(conf, correct)
    assert math.isfinite(p.a_) and p.a_ > 0
    assert 0.5 < p.predict([0.9])[0] < 0.95  # Platt's prior: never certain from six points
    with pytest.raises(ValueError, match="perfectly separated"):
        PlattScaling(smooth_targets=False).fit(conf, correct)


def test_beta_is_monotone_and_contains_the_identity():
    rng = np.random.default_rng(4)
    conf = rng.uniform(0.01, 0.99, 20000)
    correct = rng.random(20000) < conf  # already calibrated: a = b = 1, c = 0
    b = BetaCalibration().fit(conf, correct)
    assert b.a_ == pytest.approx(1.0, abs=0.1) and b.b_ == pytest.approx(1.0, abs=0.1)
    assert b.c_ == pytest.approx(0.0, abs=0.1)
    grid = np.linspace(0, 1, 101)
    assert np.all(np.diff(b.predict(grid)) >= 0)
    with pytest.raises(ValueError, match="not positively related"):
        BetaCalibration().fit(conf, rng.random(20000) < 1 - conf)


def test_histogram_binning_outputs_observed_accuracies_and_merges_empty_bins():
    conf = np.array([0.1, 0.12, 0.15, 0.8, 0.85, 0.9, 0.95, 0.97])
    correct = np.array([0, 0, 1, 1, 0, 1, 1, 1])
    h = HistogramBinning(n_bins=5, strategy="uniform").fit(conf, correct)
    # uniform bins [0, .2) and [.8, 1]: the three empty bins in between are merged away
    assert len(h.values_) == 2 and len(h.edges_) == 1
    np.testing.assert_allclose(h.values_, [1 / 3, 4 / 5])
    np.testing.assert_allclose(h.predict([0.0, 0.5, 0.79, 0.8, 1.0]), [1 / 3, 1 / 3, 1 / 3, 4 / 5, 4 / 5])
    q = HistogramBinning(n_bins=4).fit(np.linspace(0, 1, 40), np.arange(40) >= 20)
    assert set(np.round(q.values_, 12)) <= {0.0, 1.0, 0.5}
    with pytest.raises(ValueError, match="n_bins"):
        HistogramBinning(n_bins=0)
    with pytest.raises(ValueError, match="strategy"):
        HistogramBinning(strategy="kmeans")


def test_isotonic_equals_scikit_learn():
    from sklearn.isotonic import IsotonicRegression

    conf, correct = overconfident(n=3000, seed=5)
    ours = IsotonicCalibrator().fit(conf, correct)
    ref = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(conf, correct.astype(float))
    q = np.linspace(0, 1, 1001)
    np.testing.assert_allclose(ours.predict(q), ref.predict(q), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name, field, bad", [
    ("temperature", "temperature_", -1.5),
    ("temperature", "temperature_", 1e-300),
    ("isotonic", "y_thresholds_", [0.2, 1.5]),
    ("histogram", "values_", [-0.1, 0.5]),
])
def test_a_damaged_loaded_state_names_its_field(name, field, bad):
    """Each calibrator checks its own loaded state (no caller branches on the name)."""
    from llmcal.calibrators import get_calibrator

    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, 400)
    y = (rng.uniform(size=400) < p).astype(float)
    cal = get_calibrator(name).fit(p, y)
    assert cal.state_problem() is None
    setattr(cal, field, np.asarray(bad) if isinstance(bad, list) else bad)
    problem = cal.state_problem()
    assert problem is not None and f"'state.{field}'" in problem


# ------------------------------------------------------------------ issue #15: no inversion, no silent failure
def _informative(n, strength, seed):
    """Confidences whose relation to correctness has sign and size ``strength`` (negative: inverted)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(1.0, 1.2, n)
    correct = rng.random(n) < sigmoid(strength * (z - 1.0))
    return sigmoid(z), correct


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("strength, seed", [(1.5, 0), (0.3, 1), (0.05, 2), (-0.4, 3), (-1.5, 4)])
def test_no_calibrator_inverts_the_ranking(name, strength, seed):
    """Every map is non-decreasing: fitted or refused, it never turns a ranking around."""
    conf, correct = _informative(600, strength, seed)
    try:
        cal = get_calibrator(name).fit(conf, correct)
    except ValueError as err:
        assert strength <= 0.3, (name, strength, str(err))  # only a weak or inverted signal may be refused
        return
    grid = np.linspace(0.0, 1.0, 2001)
    out = cal.predict(grid)
    assert np.all(np.diff(out) >= -1e-12), name
    before, after = M.auroc(conf, correct), M.auroc(cal.predict(conf), correct)
    # ties may move AUROC (a tie counts one half), but never across chance
    assert (after - 0.5) * (before - 0.5) >= -1e-12, (name, before, after)


def test_platt_refuses_a_negative_slope_and_a_loaded_one():
    conf, correct = _informative(800, -1.5, 5)
    with pytest.raises(ValueError, match=r"not positively related to correctness .*slope a = -\d"):
        PlattScaling().fit(conf, correct)
    p = PlattScaling().fit(*_informative(800, 1.5, 5))
    assert p.a_ > 0 and p.state_problem() is None
    p.a_ = -0.7
    assert "'state.a_'" in p.state_problem()


def test_histogram_pools_decreasing_bins_into_observed_accuracies():
    # bins of 4: accuracies 0.25, 0.75, 0.5, 1.0 -> the dip is pooled: 0.25, 0.625, 0.625, 1.0
    conf = np.repeat([0.1, 0.3, 0.6, 0.9], 4)
    correct = np.array([1, 0, 0, 0, 1, 1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 1])
    h = HistogramBinning(n_bins=4, strategy="uniform").fit(conf, correct)
    np.testing.assert_allclose(h.values_, [0.25, 0.625, 1.0])
    np.testing.assert_allclose(h.edges_, [0.25, 0.75])
    np.testing.assert_allclose(h.predict([0.1, 0.3, 0.6, 0.9]), [0.25, 0.625, 0.625, 1.0])
    from llmcal.calibrators.histogram import pool_adjacent_violators

    np.testing.assert_allclose(pool_adjacent_violators(np.array([3.0, 1.0, 1.0]), np.array([1.0, 1.0, 2.0])),
                               [1.5, 1.5, 1.5])
    np.testing.assert_allclose(pool_adjacent_violators(np.array([3.0, 1.0, 2.0]), np.array([1.0, 1.0, 2.0])),
                               [2.0, 2.0, 2.0])
    h.values_ = np.array([0.2, 0.9, 0.5])
    assert "decreasing" in h.state_problem()


def test_temperature_at_its_upper_bound_on_logits_is_fitted_and_flagged():
    """Option scores unrelated to the answer: the best T flattens them to chance, and says so."""
    rng = np.random.default_rng(7)
    logits = rng.normal(0.0, 30.0, (400, 4))
    labels = rng.integers(0, 4, 400)
    t = TemperatureScaling().fit(logits, labels)
    assert t.temperature_ == pytest.approx(1e4) and t.at_bound_ == "upper" and "chance" in t.note_
    np.testing.assert_allclose(t.predict(logits), 0.25, atol=0.01)
    d = json.loads(json.dumps(t.to_dict()))
    assert d["at_bound_"] == "upper" and from_dict(d).note_ == t.note_
    assert from_dict(d).state_problem() is None
    # an optimum well above the old bound of 100 is now found, not refused
    z = rng.normal(0.0, 1.0, (3000, 3))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = (rng.random((3000, 1)) > np.cumsum(p, 1)).sum(1)
    t2 = TemperatureScaling().fit(z * 300.0, y)
    assert t2.temperature_ == pytest.approx(300.0, rel=0.15) and not hasattr(t2, "at_bound_")
    assert "at_bound_" not in t2.to_dict()
