"""The one fitted-calibration object: fitting on either signal form, any number of options, the
JSON round trip, both calibration.json layouts, and agreement with what evaluate reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmcal.calibrators import Calibration, CalibrationSet, MissingSignalError, TemperatureScaling, get_calibrator
from llmcal.core.sample import Sample
from llmcal.pipeline.evaluate import evaluate
from llmcal.signals.mc import mc_signals, softmax


def mc_sample(i: int, ll, ntok, right: bool, task: str = "t") -> Sample:
    ll = np.asarray(ll, dtype=float)
    k = len(ll)
    pred, sig = mc_signals(ll, np.asarray(ntok))
    ref = pred if right else (pred + 1) % k
    return Sample.from_dict({
        "id": f"{task}-{i}", "task": task, "prompt": f"Question: q{i}\nAnswer:", "question": f"q{i}",
        "choices": [f"c{j}" for j in range(k)], "reference": ref, "reference_text": f"c{ref}", "prediction": pred,
        "prediction_text": f"c{pred}", "correct": bool(pred == ref), "prediction_norm": pred,
        "correct_norm": bool(pred == ref), "option_logprobs": [float(x) for x in ll],
        "option_ntokens": [int(x) for x in ntok], "option_nchars": [3 * int(x) for x in ntok],
        "option_is_greedy": [False] * k, "signals": sig, "meta": {},
    })


def overconfident_mc(n: int, k: int = 4, seed: int = 0, task: str = "t") -> list[Sample]:
    """Sharp option log-likelihoods (3x too sharp), right about half the time; varied option lengths."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        z = rng.normal(size=k)
        true_p = softmax(z)
        right_idx = rng.choice(k, p=true_p)
        ll = 3.0 * z - 3.0 * z.max() - rng.uniform(0.1, 2.0)  # <= 0
        ntok = rng.integers(1, 8, size=k)
        pred = int(np.argmax(ll))
        out.append(mc_sample(i, ll, ntok, right=bool(right_idx == pred), task=task))
    return out


def open_sample(i: int, signals: dict, right: bool, missing=(), task: str = "o") -> Sample:
    return Sample.from_dict({
        "id": f"{task}-{i}", "task": task, "kind": "open", "prompt": "Q", "question": f"q{i}", "answers": ["A"],
        "grader": "exact", "prediction_text": "A" if right else "B", "correct": right, "signals": signals,
        "missing": list(missing), "meta": {}, "cost": {"tokens": {"seconds": 0.01}},
    })


def old_temperature_formula(samples: list[Sample], t: float) -> np.ndarray:
    """What ask/serve/pairs/probe computed by hand before: softmax(ll / T) at the prediction."""
    return np.array([softmax(np.asarray(s.option_logprobs) / t)[s.prediction] for s in samples])


# ------------------------------------------------------------------ temperature, any number of options
def test_temperature_fitted_on_four_options_matches_the_old_formula_and_takes_two_or_five():
    fit = overconfident_mc(400, k=4, seed=1)
    cal = Calibration.fit(fit, "option_prob", "temperature", seed=0, cal_fraction=0.5)
    assert cal.uses_logits and cal.kind == "mc" and cal.calibrator == "temperature"
    # T is the one TemperatureScaling finds on the -inf padded option log-likelihood matrix
    logits = np.array([s.option_logprobs for s in fit])
    direct = TemperatureScaling().fit(logits, np.array([s.reference for s in fit]))
    t = cal.state.temperature_
    assert t == direct.temperature_ and t > 1.5  # over-sharp log-likelihoods: T softens them
    np.testing.assert_allclose(cal.confidences(fit), old_temperature_formula(fit, t), rtol=1e-12)
    for k in (2, 5):
        other = overconfident_mc(30, k=k, seed=k)
        np.testing.assert_allclose(cal.confidences(other), old_temperature_formula(other, t), rtol=1e-12)
        s = other[0]
        assert cal.confidence(s) == pytest.approx(old_temperature_formula([s], t)[0], rel=1e-12)
        probs = cal.option_probs(s)
        assert probs.shape == (k,)
        np.testing.assert_allclose(probs, softmax(np.asarray(s.option_logprobs) / t), rtol=1e-12)
    # a mix of 2-, 4- and 5-option items in one call (padded with -inf inside)
    mixed = overconfident_mc(5, k=2, seed=7) + overconfident_mc(5, k=5, seed=8) + fit[:5]
    np.testing.assert_allclose(cal.confidences(mixed), old_temperature_formula(mixed, t), rtol=1e-12)


def test_fresh_answer_score_for_ask_and_serve():
    cal = Calibration.fit(overconfident_mc(300, seed=2), "option_prob", "temperature")
    ll = np.array([-1.0, -2.5, -4.0])
    pred, signals = mc_signals(ll, np.ones(3))
    score, probs = cal.score(signals, ll)
    t = cal.state.temperature_
    assert score == pytest.approx(softmax(ll / t)[pred]) and probs == pytest.approx(softmax(ll / t))
    # a binary calibrator moves only the prediction's probability; the rest keeps its proportions
    platt = Calibration.fit(overconfident_mc(300, seed=2), "option_prob", "platt")
    score, probs = platt.score(signals, ll)
    assert not platt.uses_logits and probs[pred] == score and probs.sum() == pytest.approx(1.0)
    raw = softmax(ll)
    assert probs[1] / probs[2] == pytest.approx(raw[1] / raw[2])
    # no calibration: the raw option distribution and option_prob
    none = Calibration.none()
    score, probs = none.score(signals, ll)
    assert score == signals["option_prob"] and probs == pytest.approx(raw)
    # free form: no option log-likelihoods, no option probabilities
    assert Calibration.none("mean_token_prob", "open").score({"mean_token_prob": 0.4}) == (0.4, None)


# ------------------------------------------------------------------ signals
def test_fit_on_option_prob_norm_differs_from_option_prob():
    samples = overconfident_mc(400, seed=3)
    a = Calibration.fit(samples, "option_prob", "temperature")
    b = Calibration.fit(samples, "option_prob_norm", "temperature")
    assert a.uses_logits and not b.uses_logits and b.state.mode_ == "binary"  # binary form on another signal
    ca, cb = a.confidences(samples), b.confidences(samples)
    assert not np.allclose(ca, cb)
    # binary temperature on option_prob_norm: sigmoid(logit(p) / T)
    p = np.array([s.signals["option_prob_norm"] for s in samples])
    np.testing.assert_allclose(cb, get_calibrator("temperature").fit(p, [s.correct for s in samples]).predict(p))
    platt_norm = Calibration.fit(samples, "option_prob_norm", "platt").confidences(samples)
    assert not np.allclose(platt_norm, Calibration.fit(samples, "option_prob", "platt").confidences(samples))


def test_missing_signal_error_names_the_sample_and_signal():
    cal = Calibration.fit([open_sample(i, {"mean_token_prob": 0.2 + 0.006 * i}, i % 3 != 0) for i in range(100)],
                          "mean_token_prob", "platt")
    assert cal.kind == "open" and cal.fitted_on["n"] == 100 and cal.fitted_on["tasks"] == ["o"]
    bad = open_sample(7, {"seq_prob": 0.5}, True, missing=["mean_token_prob"], task="nq")
    with pytest.raises(MissingSignalError, match=r"sample 'nq-7' has no 'mean_token_prob' signal \(recorded missing"):
        cal.confidence(bad)
    with pytest.raises(MissingSignalError, match=r"'nq-7'.*platt on mean_token_prob"):
        cal.confidences([open_sample(1, {"mean_token_prob": 0.5}, True), bad])
    # temperature on the option log-likelihoods cannot score a free-form answer
    t = Calibration.fit(overconfident_mc(100, seed=4), "option_prob", "temperature")
    with pytest.raises(MissingSignalError, match="sample 'nq-7' has no option log-likelihoods"):
        t.confidence(bad)


# ------------------------------------------------------------------ files
@pytest.mark.parametrize("name", ["temperature", "platt", "isotonic", "histogram", "beta", "none"])
def test_round_trip_gives_identical_confidences(tmp_path, name):
    samples = overconfident_mc(300, seed=5)
    cal = Calibration.fit(samples, "option_prob", name, threshold=0.6, context={"style": "cloze"},
                          fingerprint={"model": "m", "weights": "abc"}, seed=3, cal_fraction=0.5, run="runs/x")
    d = json.loads(json.dumps(cal.to_dict(), allow_nan=False))
    assert d["calibration_version"] == 2 and d["calibrator"] == name and d["signal"] == "option_prob"
    assert d["fitted_on"] == {"n": 300, "tasks": ["t"], "seed": 3, "cal_fraction": 0.5, "run": "runs/x"}
    back = Calibration.from_dict(d)
    assert np.array_equal(back.confidences(samples), cal.confidences(samples))
    assert back.to_dict() == cal.to_dict() and back.threshold == 0.6 and back.fingerprint["weights"] == "abc"
    loaded = Calibration.load(cal.save(tmp_path / "cal.json"))
    assert np.array_equal(loaded.confidences(samples), cal.confidences(samples))
    assert loaded.mismatch({"model": "m", "weights": "abd"}) == "weights 'abd' (calibrated for 'abc')"
    assert loaded.mismatch({"model": "m", "weights": "abc"}) is None


def test_from_dict_errors_name_the_field():
    with pytest.raises(ValueError, match="x.json: field 'calibration_version'"):
        Calibration.from_dict({"signal": "option_prob", "calibrator": "none", "calibration_version": "2"},
                              where="x.json")
    with pytest.raises(ValueError, match="newer llmcal"):
        Calibration.from_dict({"signal": "option_prob", "calibrator": "none", "calibration_version": 99})
    with pytest.raises(ValueError, match="has no fitted state"):
        Calibration(signal="option_prob", calibrator="platt")
    with pytest.raises(ValueError, match="field 'state'"):
        Calibration.from_dict({"calibration_version": 2, "signal": "option_prob", "calibrator": "platt",
                               "state": {"name": "platt", "a_": 1.0}})


def test_old_calibration_json_layouts_still_load(tmp_path):
    # a multiple-choice run before calibration_version 2
    old_mc = {"schema_version": 1, "signal": "option_prob", "primary": "temperature", "threshold": 0.7,
              "style": "letters", "chat": True, "model_args": {"dtype": "float32"},
              "calibrators": {"temperature": {"name": "temperature", "version": 1, "bounds": [0.01, 100.0],
                                              "temperature_": 2.0, "mode_": "multiclass", "n_classes_": 4},
                              "platt": get_calibrator("platt").fit([0.2, 0.4, 0.6, 0.9], [0, 1, 0, 1]).to_dict()}}
    (tmp_path / "calibration.json").write_text(json.dumps(old_mc))
    cset = Calibration.load_run_file(tmp_path / "calibration.json")
    assert cset.primary_name == "temperature" and set(cset.by_name) == {"temperature", "platt"}
    assert cset.threshold == 0.7 and cset.context["style"] == "letters" and cset.generation is None
    three = mc_sample(0, [-1.0, -2.5, -4.0], [1, 1, 1], True)  # fitted on 4 options, applied to 3
    assert cset.primary.confidence(three) == pytest.approx(softmax(np.array([-1.0, -2.5, -4.0]) / 2.0)[0])
    assert Calibration.load(tmp_path / "calibration.json").calibrator == "temperature"
    # and an open run's: its free-form calibration is the primary
    iso = get_calibrator("isotonic").fit(np.linspace(0, 1, 50), np.arange(50) % 3 == 0)
    old_open = {"schema_version": 1, "kind": "open", "threshold": 0.75, "chat": False, "model_args": {},
                "generation": {"signal": "min_token_prob", "calibrator": iso.to_dict(), "cal_auroc": 0.7}}
    cset = CalibrationSet.from_dict(old_open)
    assert cset.primary is cset.generation and cset.kind == "open"
    g = cset.generation
    assert (g.signal, g.calibrator, g.context["chat"], g.fitted_on["cal_auroc"]) == ("min_token_prob", "isotonic",
                                                                                       False, 0.7)
    # round trip through the new layout keeps everything
    path = cset.save(tmp_path / "new.json")
    d = json.loads(path.read_text())
    assert d["calibration_version"] == 2 and d["primary"] == "isotonic" and "generation" not in d
    again = CalibrationSet.load(path)
    s = open_sample(0, {"min_token_prob": 0.33}, True)
    assert again.generation.confidence(s) == g.confidence(s)
    # an old multiple-choice run with a generation entry keeps it apart from the primary
    with_gen = dict(old_mc, generation={"signal": "mean_token_prob", "calibrator": iso.to_dict()})
    cset = CalibrationSet.from_dict(with_gen)
    assert cset.primary.kind == "mc" and cset.generation.kind == "open" and cset.generation.context["chat"] is True
    assert "generation" in CalibrationSet.from_dict(cset.to_dict()).to_dict()


# ------------------------------------------------------------------ agreement with evaluate
def _mc_run() -> list[Sample]:
    return overconfident_mc(120, seed=11, task="a") + overconfident_mc(90, k=2, seed=12, task="b") + \
        overconfident_mc(60, k=5, seed=13, task="c")


def test_confidence_equals_what_evaluate_reports_for_the_test_split():
    samples = _mc_run()
    results, cals = evaluate(samples, calibrators=["temperature", "platt"], n_bootstrap=0)
    assert results["kind"] == "mc" and results["primary"] == {"signal": "option_prob", "calibrator": "temperature"}
    from llmcal.core.split import split_indices

    cal_idx, test_idx = split_indices([s.task for s in samples], 0.5, 0)
    test = [samples[i] for i in test_idx]
    for name, cal in cals.items():
        conf = cal.confidences(test)
        assert results["calibrated_test"][name]["mean_confidence"] == pytest.approx(conf.mean(), rel=1e-12)
        assert results["calibrated_test"][name]["params"] == cal.state.to_dict()
        assert cal.fitted_on["n"] == len(cal_idx) and cal.fitted_on["tasks"] == ["a", "b", "c"]
    primary = cals["temperature"]
    by_id = {s.id: s for s in samples}
    for row in results["overconfident_wrong"]:
        assert row["calibrated_confidence"] == primary.confidence(by_id[row["id"]])
    f = results["filter"]["calibrated"]
    assert f["answered"] == int((primary.confidences(test) >= 0.75).sum())


def test_evaluate_calibrates_the_chosen_signal():
    samples = _mc_run()
    results, cals = evaluate(samples, calibrators=["temperature", "isotonic"], signal="option_prob_norm",
                             n_bootstrap=0, run_config={"model_desc": "tiny", "style": "cloze", "chat": False,
                                                        "backend": {"backend": "hf", "fingerprint": "f00"},
                                                        "model_args": {"dtype": "float32", "batch_size": 8}},
                             run_path="runs/r")
    assert results["primary"]["signal"] == "option_prob_norm"
    t = cals["temperature"]
    assert t.signal == "option_prob_norm" and not t.uses_logits
    assert t.fingerprint == {"model": "tiny", "backend": "hf", "weights": "f00"}
    assert t.context == {"style": "cloze", "chat": False, "model_args": {"dtype": "float32"}}
    assert t.fitted_on["run"] == "runs/r" and t.fitted_on["seed"] == 0
    raw = results["signals_test"]["option_prob_norm"]
    assert results["filter"]["raw"]["accuracy_all"] == pytest.approx(raw["accuracy"])
    default, _ = evaluate(samples, calibrators=["temperature"], n_bootstrap=0)
    assert default["calibrated_test"]["temperature"]["ece"] != results["calibrated_test"]["temperature"]["ece"]
    with pytest.raises(ValueError, match="signal 'nope': not recorded"):
        evaluate(samples, signal="nope", n_bootstrap=0)


def test_open_run_has_the_same_layout_plus_its_signal_table():
    rng = np.random.default_rng(5)
    samples = []
    for i in range(160):
        z = rng.normal()
        right = bool(rng.random() < 1 / (1 + np.exp(-2 * z)))
        sig = {"mean_token_prob": float(1 / (1 + np.exp(-(z + 1.5 + rng.normal())))),
               "seq_prob": float(rng.uniform(0.05, 0.95))}
        missing = ["verbalized"] if i % 4 == 0 else []
        if not missing:  # a verbalized confidence that ranks answers the wrong way
            sig["verbalized"] = 0.9 if (not right) ^ (rng.random() < 0.2) else 0.6
        samples.append(open_sample(i, sig, right, missing, task=("x", "y")[i % 2]))
    results, cals = evaluate(samples, n_bootstrap=0)
    mc_keys = {"split", "overall", "per_task", "signals_test", "calibrated_test", "calibrator_errors", "primary",
               "filter", "risk_control", "reliability", "risk_coverage", "overconfident_wrong", "metric_specs",
               "kind"}
    assert mc_keys <= set(results) and {"signals", "missing", "cost", "serving"} <= set(results)
    assert results["kind"] == "open" and results["missing"]["verbalized"] == 40
    assert results["signals"]["verbalized"]["n_missing"] == 40
    # default: platt on the token signal that ranks best on the calibration part
    assert results["primary"] == {"signal": "mean_token_prob", "calibrator": "platt"}
    assert results["serving"]["signal"] == "mean_token_prob" and set(cals) == {"platt"}
    assert results["signals"]["mean_token_prob"]["calibrated"] == {
        k: v for k, v in results["calibrated_test"]["platt"].items() if k != "params"}
    # binary temperature when asked for
    res_t, cals_t = evaluate(samples, calibrators=["temperature"], signal="mean_token_prob", n_bootstrap=0)
    assert cals_t["temperature"].state.mode_ == "binary" and res_t["primary"]["calibrator"] == "temperature"
    # a signal with missing values is calibrated where present; a calibrator that cannot fit is reported
    # (temperature cannot shrink an inverted signal, Platt refuses a negative slope), and the next one
    # listed becomes the primary
    res_v, cals_v = evaluate(samples, calibrators=["temperature", "platt", "isotonic"], signal="verbalized",
                             n_bootstrap=0)
    assert "edge of bounds" in res_v["calibrator_errors"]["temperature"] and set(cals_v) == {"isotonic"}
    assert "not positively related to correctness" in res_v["calibrator_errors"]["platt"]
    assert res_v["primary"] == {"signal": "verbalized", "calibrator": "isotonic"}
    n_test_with = res_v["signals_test"]["verbalized"]["n"]
    assert res_v["calibrated_test"]["isotonic"]["n"] == n_test_with < res_v["split"]["n_test"]
    assert res_v["filter"]["raw"]["answered"] + res_v["filter"]["raw"]["abstained"] == n_test_with


# ------------------------------------------------------------------ issue #15
def test_temperature_norm_scales_the_per_token_log_likelihoods_of_the_prediction():
    samples = overconfident_mc(300, seed=11)
    cal = Calibration.fit(samples, "option_prob", "temperature_norm")
    assert cal.uses_logits and cal.per_token and cal.state.mode_ == "multiclass"
    per_tok = [np.asarray(s.option_logprobs) / np.maximum(s.option_ntokens, 1) for s in samples]
    direct = TemperatureScaling().fit(np.array(per_tok), np.array([s.reference for s in samples]))
    t = cal.state.temperature_
    assert t == direct.temperature_
    # the confidence is the calibrated probability of the prediction (the summed argmax), not the top one
    want = np.array([softmax(z / t)[s.prediction] for z, s in zip(per_tok, samples)])
    np.testing.assert_allclose(cal.confidences(samples), want, rtol=1e-12)
    assert any(int(np.argmax(z)) != s.prediction for z, s in zip(per_tok, samples))
    s0 = samples[0]
    np.testing.assert_allclose(cal.option_probs(s0), softmax(per_tok[0] / t), rtol=1e-12)
    score, probs = cal.score(s0.signals, s0.option_logprobs, s0.option_ntokens)
    assert score == pytest.approx(want[0], rel=1e-12) and probs.sum() == pytest.approx(1.0)
    with pytest.raises(MissingSignalError, match="token count for each option"):
        cal.score(s0.signals, s0.option_logprobs)
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert np.array_equal(back.confidences(samples), cal.confidences(samples))
    # at T = 1 it is option_prob_norm
    cal.state.temperature_ = 1.0
    np.testing.assert_allclose(cal.confidences(samples), [s.signals["option_prob_norm"] for s in samples],
                               rtol=1e-12)


def test_a_tasks_split_does_not_depend_on_the_other_tasks_in_the_run():
    from llmcal.core.split import split_indices

    a = ["arc_easy"] * 37
    alone_cal, alone_test = split_indices(a, 0.5, 3)
    for pool in (["sciq"] * 20 + a, a + ["builtin"] * 50 + ["aardvark"] * 9, ["zz"] * 5 + a + ["sciq"] * 11):
        pool_cal, pool_test = split_indices(pool, 0.5, 3)
        off = pool.index("arc_easy")
        mine = lambda idx: idx[(idx >= off) & (idx < off + len(a))] - off  # noqa: E731
        assert np.array_equal(mine(pool_cal), alone_cal) and np.array_equal(mine(pool_test), alone_test)
        assert len(pool_cal) + len(pool_test) == len(pool) and not set(pool_cal) & set(pool_test)
    # the seed and the task name both move it; the fraction is kept per task
    assert not np.array_equal(split_indices(a, 0.5, 4)[0], alone_cal)
    assert not np.array_equal(split_indices(["sciq"] * 37, 0.5, 3)[0], alone_cal)
    assert len(alone_cal) == round(37 * 0.5)
