"""The checklist's honest advice (issue #15): each "do NOT deploy" case, the "too small to tell"
case, the deploy case, and "Which temperature fixes it?" never answered by another calibrator --
for multiple-choice and free-form runs.  Results come from ``evaluate`` on synthetic samples; a case
that needs a given relation between numbers sets them in a copy and says so."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from llmcal.pipeline.evaluate import evaluate
from llmcal.report.checklist import checklist, deploy_verdict
from test_transfer import _mc_samples


def answers(results) -> dict[str, str]:
    return dict(checklist(results))


@pytest.fixture(scope="module")
def good():
    """A strongly overconfident but informative signal, 1000 items: temperature fixes it, and beats
    the constant on the held-out part by a margin no interval spans."""
    res, _ = evaluate(_mc_samples(np.random.default_rng(0), 1000, sharpness=4.0), n_bootstrap=100)
    return res


def test_deploy_when_it_beats_raw_and_the_constant(good):
    t = good["calibrated_test"]["temperature"]
    assert t["brier"] < good["baseline"]["constant"]["brier"] and t["ece"] < good["signals_test"]["option_prob"]["ece"]
    verdict = answers(good)["Should you deploy the fitted calibration?"]
    assert verdict.startswith("Yes: deploy temperature (calibration.json)")
    assert f"Brier {t['brier']:.3f} against {good['baseline']['constant']['brier']:.3f}" in verdict
    assert "Which temperature fixes it, and by how much?" in answers(good)


def test_do_not_deploy_when_nothing_was_fitted():
    samples = _mc_samples(np.random.default_rng(1), 200, sharpness=4.0)
    samples = [s.__class__.from_dict({**s.to_dict(), "correct": True, "correct_norm": True, "reference": s.prediction,
                                      "reference_text": s.prediction_text}) for s in samples]  # one class only
    res, cals = evaluate(samples, calibrators=["temperature", "platt"], n_bootstrap=0)
    assert not cals and set(res["calibrator_errors"]) == {"temperature", "platt"}
    a = answers(res)
    assert a["Should you deploy the fitted calibration?"].startswith(
        "Do NOT deploy: no calibrator could be fitted, so there is nothing to deploy")
    fix = a["Which temperature fixes it, and by how much?"]
    assert fix.startswith("No temperature: temperature scaling could not be fitted (")
    assert "No calibrator could be fitted: platt:" in fix
    assert "deploy the fitted calibrator" not in " ".join(a.values())


def test_do_not_deploy_when_calibration_made_ece_worse(good):
    res = copy.deepcopy(good)
    raw = res["signals_test"]["option_prob"]["ece"]
    res["calibrated_test"]["temperature"]["ece"] = raw + 0.022  # the case: worse than before calibrating
    verdict = deploy_verdict(res)
    assert verdict == (f"Do NOT deploy: calibration made the held-out ECE worse ({100 * raw:.1f}% -> "
                       f"{100 * (raw + 0.022):.1f}% on {res['split']['n_test']} questions); keep the raw "
                       "confidence or calibrate on questions closer to your use.")


def test_do_not_deploy_when_it_does_not_beat_the_constant(good):
    res = copy.deepcopy(good)
    t = res["calibrated_test"]["temperature"]
    res["baseline"]["constant"]["brier"] = t["brier"] - 0.01  # the case: a constant scores better
    res["calibrated_test"]["temperature"]["ci95"]["brier"] = [t["brier"] - 0.005, t["brier"] + 0.005]
    verdict = deploy_verdict(res)
    assert verdict.startswith("Do NOT deploy: temperature does not beat a constant confidence of")
    assert "tells right from wrong no better than the base rate" in verdict and "too small" not in verdict
    # and when the held-out interval holds the constant's score, it says the part is too small to tell
    res["calibrated_test"]["temperature"]["ci95"]["brier"] = [t["brier"] - 0.02, t["brier"] + 0.02]
    assert f"The held-out part ({res['split']['n_test']} questions) is too small to tell them apart" \
        in deploy_verdict(res)


def test_too_small_to_tell_when_the_interval_spans_the_constant():
    """200 items of a weak signal: temperature's held-out Brier is under the constant's, but its
    interval holds the constant's value."""
    res, _ = evaluate(_mc_samples(np.random.default_rng(4), 200, sharpness=2.0, scale=0.6), n_bootstrap=200)
    t, c = res["calibrated_test"]["temperature"], res["baseline"]["constant"]
    lo, hi = t["ci95"]["brier"]
    assert t["brier"] < c["brier"] and lo <= c["brier"] <= hi  # what this case is
    assert res["baseline"]["calibrators"]["temperature"]["brier_interval_spans_constant"]
    assert deploy_verdict(res).startswith("Too few held-out questions to tell: temperature's Brier")


def test_a_failed_temperature_is_not_answered_by_platt(good):
    res = copy.deepcopy(good)
    res["calibrated_test"]["platt"] = res["calibrated_test"].pop("temperature")
    res["calibrated_test"]["platt"]["params"] = {"name": "platt", "a_": 1.2, "b_": -0.3}
    res["primary"]["calibrator"] = "platt"
    res["calibrator_errors"] = {"temperature": "TemperatureScaling: the NLL optimum is at the edge of bounds"}
    fix = answers(res)["Which temperature fixes it, and by how much?"]
    assert fix.startswith("No temperature: temperature scaling could not be fitted (TemperatureScaling: the NLL")
    assert "Instead, the platt calibrator, fitted on" in fix and "T =" not in fix


def test_free_form_runs_get_the_same_advice():
    from test_calibration_object import open_sample

    rng = np.random.default_rng(2)
    samples = []
    for i in range(300):
        z = rng.normal()
        right = bool(rng.random() < 1 / (1 + np.exp(-2 * z)))
        samples.append(open_sample(i, {"mean_token_prob": float(1 / (1 + np.exp(-(2 * z + 2.0))))}, right, []))
    res, _ = evaluate(samples, n_bootstrap=100)
    assert res["kind"] == "open" and "platt" in res["baseline"]["calibrators"]
    verdict = answers(res)["Should you deploy the fitted calibration?"]
    assert verdict.startswith(("Yes: deploy platt", "Too few held-out questions to tell: platt's"))
    # one class only: nothing fitted, said plainly
    dead = [open_sample(i, {"mean_token_prob": 0.9}, True, []) for i in range(40)]
    res, _ = evaluate(dead, n_bootstrap=0)
    assert answers(res)["Should you deploy the fitted calibration?"].startswith("Do NOT deploy: no calibrator")
    fix = answers(res)["Which calibrator fixes it, and by how much?"]
    assert fix.startswith("No calibrator could be fitted: platt")
