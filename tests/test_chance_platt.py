"""platt_chance: Platt floored at chance (the 3PL with c = 1/k) recovers its parameters, keeps its
floor, travels between tasks with different numbers of options, and fails loudly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import minimize

import llmcal.metrics as M
from llmcal.calibrators import Calibration, ChancePlatt, PlattScaling, from_dict
from llmcal.calibrators.base import logit, sigmoid
from llmcal.calibrators.chance_platt import floored, skill_logit
from test_calibration_object import mc_sample, open_sample

A, B = 0.6, -0.8  # the true slope and intercept of skill above chance


def three_pl(n: int, ks, seed: int = 0, a: float = A, b: float = B):
    """Answers whose correctness follows the 3PL exactly: conf p (an overconfident reading of skill),
    k options each, correct ~ Bernoulli(1/k + (1 - 1/k) sigmoid(a logit(u) + b))."""
    rng = np.random.default_rng(seed)
    k = rng.choice(np.asarray(ks, dtype=float), n)
    u = sigmoid(rng.normal(1.5, 1.5, n))  # confidence above chance, (n,)
    p = 1.0 / k + (1.0 - 1.0 / k) * u
    truth = floored(a * logit(u) + b, k)
    return p, rng.random(n) < truth, k, truth


def test_it_recovers_the_parameters_and_matches_a_generic_optimizer():
    p, c, k, _ = three_pl(20000, (2, 4, 5))
    cal = ChancePlatt(smooth_targets=False).fit(p, c, k)
    assert cal.a_ == pytest.approx(A, abs=0.05) and cal.b_ == pytest.approx(B, abs=0.08)
    z = skill_logit(p, k)

    def nll(w):
        q = np.clip(floored(w[0] * z + w[1], k), 1e-15, 1 - 1e-15)
        return -np.sum(c * np.log(q) + (1 - c) * np.log1p(-q))

    ref = minimize(nll, [1.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 5000})
    np.testing.assert_allclose([cal.a_, cal.b_], ref.x, atol=2e-4)
    assert nll([cal.a_, cal.b_]) <= ref.fun + 1e-6


def test_the_floor_is_chance_and_the_map_never_inverts_the_ranking():
    p, c, k, _ = three_pl(3000, (2, 4))
    cal = ChancePlatt().fit(p, c, k)
    grid = np.linspace(0.0, 1.0, 201)
    for kk in (2, 3, 4, 10):
        out = cal.predict(grid, np.full(grid.shape, kk))
        assert out.min() >= 1.0 / kk - 1e-12 and out.max() <= 1.0
        assert np.all(np.diff(out) >= -1e-15)  # non-decreasing in the confidence
    same_k = k == 4
    assert M.auroc(cal.predict(p[same_k], k[same_k]), c[same_k]) == pytest.approx(M.auroc(p[same_k], c[same_k]))


def test_fitted_on_four_options_it_carries_to_two_where_platt_learns_the_pool_base_rate():
    """The known answer: the same skill on a 2-option task is right more often; the floor knows it."""
    p4, c4, k4, _ = three_pl(6000, (4,), seed=1)
    p2, c2, k2, truth2 = three_pl(6000, (2,), seed=2)
    chance = ChancePlatt().fit(p4, c4, k4).predict(p2, k2)
    platt = PlattScaling().fit(p4, c4).predict(p2)
    assert abs(chance.mean() - c2.mean()) < 0.02
    assert np.max(np.abs(chance - truth2)) < 0.05  # close to the true probability of each answer
    assert M.ece(chance, c2) < 0.03
    assert M.ece(platt, c2) > 3 * M.ece(chance, c2)


def test_it_refuses_confidence_unrelated_or_inverted_and_bad_option_counts():
    p, c, k, _ = three_pl(2000, (4,))
    with pytest.raises(ValueError, match="not positively related"):
        ChancePlatt().fit(p, ~c, k)
    with pytest.raises(ValueError, match="needs the number of options"):
        ChancePlatt().fit(p, c)
    with pytest.raises(ValueError, match=r"n_options\[3\] = 1.0"):
        ChancePlatt().fit(p, c, np.where(np.arange(len(p)) == 3, 1, k))
    with pytest.raises(ValueError, match="n_options has 5 entries for 2000"):
        ChancePlatt().fit(p, c, k[:5])
    cal = ChancePlatt().fit(p, c, k)
    with pytest.raises(ValueError, match=r"n_options\[0\] = 2.5"):
        cal.predict(p[:2], [2.5, 4])
    with pytest.raises(ValueError, match="not fitted"):
        ChancePlatt().predict(p, k)


def test_json_round_trip_and_a_hand_edited_negative_slope_is_refused(tmp_path):
    p, c, k, _ = three_pl(1000, (2, 4))
    cal = ChancePlatt().fit(p, c, k)
    back = from_dict(json.loads(cal.to_json()))
    assert isinstance(back, ChancePlatt) and back.a_ == cal.a_ and back.b_ == cal.b_
    np.testing.assert_array_equal(back.predict(p, k), cal.predict(p, k))
    samples = mixed_samples(200, seed=4)
    fitted = Calibration.fit(samples, "option_prob_norm", "platt_chance")
    path = fitted.save(tmp_path / "cal.json")
    d = json.loads(path.read_text())
    d["state"]["a_"] = -0.5
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"cal.json: field 'state.a_': -0.5 is negative"):
        Calibration.load(path)


def mixed_samples(n: int, seed: int) -> list:
    """Multiple-choice samples with 2 or 4 options, right more often when the model is surer."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = 2 if i % 2 else 4
        ll = -np.abs(rng.normal(0, 2.0, k))
        p = np.exp(ll - ll.max()); p = p.max() / p.sum()
        out.append(mc_sample(i, ll, [1] * k, right=bool(rng.random() < 0.2 + 0.7 * p), task=f"k{k}"))
    return out


def test_through_calibration_each_sample_brings_its_own_option_count():
    samples = mixed_samples(400, seed=3)
    cal = Calibration.fit(samples, "option_prob_norm", "platt_chance")
    conf = cal.confidences(samples)
    k = np.array([len(s.option_logprobs) for s in samples], dtype=float)
    p = np.array([s.signals["option_prob_norm"] for s in samples])
    np.testing.assert_allclose(conf, cal.state.predict(p, k), rtol=1e-12)
    assert np.all(conf >= 1.0 / k - 1e-12)
    again = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_allclose(again.confidences(samples), conf, rtol=1e-12)
    # a fresh answer (llmcal ask, serve): its options give k
    s = samples[1]
    got, probs = cal.score(s.signals, s.option_logprobs, s.option_ntokens)
    assert got == pytest.approx(conf[1]) and probs.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="needs their number"):
        cal.score({"option_prob_norm": 0.7})


def test_a_free_form_run_is_refused_with_the_reason():
    open_samples = [open_sample(i, {"mean_token_prob": 0.3 + 0.01 * i}, bool(i % 2)) for i in range(20)]
    with pytest.raises(ValueError, match="needs multiple-choice answers; this run is free-form"):
        Calibration.fit(open_samples, "mean_token_prob", "platt_chance")


def test_the_probe_refuses_it_and_names_what_it_can_use():
    from llmcal.pipeline.config import ProbeConfig
    from llmcal.pipeline.probe_step import probe_settings

    with pytest.raises(ValueError, match=r"--calibrator: platt_chance reads each answer's number of options.*"
                                         r"choose among beta, histogram, isotonic, platt, temperature"):
        probe_settings(ProbeConfig(calibrator="platt_chance"), model=None)
