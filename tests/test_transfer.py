"""Calibration that travels (issue #15): apply-elsewhere round trips, the constant baseline and its
flag, label-free adaptation on synthetic shifted data with known answers, ``--signal auto`` for
multiple choice, and the ``mix`` task group.  No model needed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmcal import metrics as M
from llmcal.calibrators.calibration import Calibration
from llmcal.calibrators.unlabeled import (apply_logit_shift, atc_estimate, atc_threshold, doc_estimate,
                                          estimate_accuracy, logit_shift_for_mean, max_softmax,
                                          temperature_for_mean)
from llmcal.core.split import split_indices
from test_probe import make_run

FP_OTHER = "ffff000011112222"


# ------------------------------------------------------------------ synthetic shifted data
def softmax_draws(rng, n: int, scale: float, sharpness: float, k: int = 4):
    """Items whose true option probabilities are softmax(z), z ~ N(0, scale^2); the model's option
    log-likelihoods are ``sharpness * z`` (so the right temperature is ``sharpness``)."""
    z = rng.normal(size=(n, k)) * scale
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    u = rng.random(n)[:, None]
    y = (u > np.cumsum(p, axis=1)).sum(axis=1)  # (n,) a draw from each row of p
    return sharpness * z, np.minimum(y, k - 1)


def test_atc_threshold_and_estimate_on_a_worked_example():
    src = np.array([0.9, 0.8, 0.7, 0.6])
    ok = np.array([1, 1, 0, 0])
    # two of four right: the threshold sits between the 2nd and 3rd largest confidences
    assert atc_threshold(src, ok) == pytest.approx(0.75)
    assert atc_estimate(src, ok, np.array([0.95, 0.72, 0.5, 0.8])) == 0.5
    assert atc_threshold(src, np.ones(4)) == float("-inf")  # every answer right: everything is above
    assert atc_estimate(src, np.zeros(4), np.array([0.85, 0.9])) == 0.0  # none right: nothing above the top
    # DoC: source accuracy 0.5 + (mean target 0.6 - mean source 0.75)
    assert doc_estimate(src, ok, np.array([0.6, 0.6])) == pytest.approx(0.35)
    with pytest.raises(ValueError, match="unknown accuracy estimator 'nope'; known: atc, doc"):
        estimate_accuracy("nope", src, ok, src)
    with pytest.raises(ValueError, match=r"source: 4 confidences but 3 correctness labels"):
        atc_threshold(src, ok[:3])
    with pytest.raises(ValueError, match=r"target: confidences must be finite numbers in \[0, 1\]"):
        atc_estimate(src, ok, np.array([0.5, 1.5]))


def test_atc_recovers_the_target_accuracy_when_confidence_separates_right_from_wrong():
    """Known answer: right answers have confidence > 0.7 and wrong ones < 0.6 on both tasks, so the
    share above ATC's threshold *is* the accuracy, however far the target's accuracy moved (0.8 -> 0.3)."""
    rng = np.random.default_rng(0)

    def task(n, acc):
        ok = (np.arange(n) < int(acc * n)).astype(float)
        conf = np.where(ok == 1, rng.uniform(0.72, 0.99, n), rng.uniform(0.3, 0.58, n))
        return conf, ok

    s_conf, s_ok = task(500, 0.8)
    t_conf, t_ok = task(400, 0.3)
    assert atc_estimate(s_conf, s_ok, t_conf) == pytest.approx(t_ok.mean(), abs=1e-12)
    # DoC only moves the source accuracy by the change in mean confidence: not exact here
    assert abs(doc_estimate(s_conf, s_ok, t_conf) - t_ok.mean()) > 0.1
    # rescaling to the estimate (logit shift, ranking kept) puts the mean confidence on the true accuracy
    b = logit_shift_for_mean(t_conf, t_ok.mean())
    moved = apply_logit_shift(t_conf, b)
    assert moved.mean() == pytest.approx(t_ok.mean(), abs=1e-6)
    assert np.array_equal(np.argsort(moved, kind="stable"), np.argsort(t_conf, kind="stable"))
    assert M.ece(moved, t_ok, n_bins=1) < 1e-6 < M.ece(t_conf, t_ok, n_bins=1)


def test_doc_keeps_a_temperature_that_still_holds_under_covariate_shift():
    """Known answer: the target is harder (z scaled 2.0 -> 0.8) but P(right | logits) is unchanged,
    so the right temperature stays 3.0; DoC predicts the target accuracy and the temperature refitted
    to it stays close to 3."""
    from llmcal.calibrators.temperature import TemperatureScaling

    rng = np.random.default_rng(1)
    ls, ys = softmax_draws(rng, 4000, 2.0, 3.0)
    lt, yt = softmax_draws(rng, 4000, 0.8, 3.0)
    t = TemperatureScaling().fit(ls, ys).temperature_
    assert t == pytest.approx(3.0, rel=0.1)
    src_ok = (ls.argmax(1) == ys).astype(float)
    acc_t = float((lt.argmax(1) == yt).mean())
    est = doc_estimate(max_softmax(ls, t), src_ok, max_softmax(lt, t))
    assert est == pytest.approx(acc_t, abs=0.03) and abs(src_ok.mean() - acc_t) > 0.2
    t_new = temperature_for_mean(lt, est)
    assert max_softmax(lt, t_new).mean() == pytest.approx(est, abs=1e-6)
    assert t_new == pytest.approx(3.0, rel=0.12)


def test_temperature_for_mean_is_monotone_and_stops_at_its_bounds():
    rng = np.random.default_rng(2)
    ll, _ = softmax_draws(rng, 300, 1.0, 4.0)
    ll[:100, 3] = -np.inf  # 3-option items among 4-option ones
    targets = [0.45, 0.6, 0.8]
    ts = [temperature_for_mean(ll, m) for m in targets]
    assert ts[0] > ts[1] > ts[2]
    for m, t in zip(targets, ts):
        assert max_softmax(ll, t).mean() == pytest.approx(m, abs=1e-6)
    # under mean(1/k) no temperature reaches it: the upper bound, never an inverted ranking
    assert temperature_for_mean(ll, 0.1) == pytest.approx(100.0)
    assert temperature_for_mean(ll, 0.999999) == pytest.approx(0.05)


# ------------------------------------------------------------------ run folders
def calibrated_run(path, **kw):
    from llmcal.pipeline.config import RunConfig
    from llmcal.pipeline.run import calibrate_run

    run = make_run(path, **kw)
    calibrate_run(run, RunConfig(calibrators=("temperature", "isotonic"), bootstrap=20))
    return run


def test_transfer_round_trip_across_two_runs(tmp_path):
    """x's calibration.json applied unchanged to y's test part gives exactly what applying the saved
    Calibration by hand gives; y's in-task rows are y's own `llmcal calibrate` numbers; the constant
    is x's calibration-part accuracy; transfer.json is what was returned."""
    import llmcal
    from llmcal.pipeline.evaluate import metrics_with_ci
    from llmcal.records.run_dir import RunDir

    src = calibrated_run(tmp_path / "x", n=240, seed=0)
    tgt = calibrated_run(tmp_path / "y", n=200, tasks=("t3",), seed=5)
    r = llmcal.transfer(src.path, tgt.path, n_bootstrap=20)
    res = r.results
    assert res["split"] == {"seed": 0, "cal_fraction": 0.5, "n_cal": 100, "n_test": 100}
    samples = RunDir(tgt.path).read_samples()
    _, test = split_indices([s.task for s in samples], 0.5, 0)
    test_s = [samples[i] for i in test]
    y = np.array([s.correct for s in test_s], dtype=float)
    saved = Calibration.load_run_file(src.path / "calibration.json")
    for name in ("temperature", "isotonic"):
        by_hand = metrics_with_ci(saved.by_name[name].confidences(test_s), y, 15, 20, 0)
        row = res["transferred"][name]
        assert row["ece"] == by_hand["ece"] and row["brier"] == by_hand["brier"]
        assert row["ci95"]["ece"] == pytest.approx(by_hand["ci95"]["ece"])
        assert row["beats_constant_ece"] == (row["ece"] < res["constant"]["ece"])
        assert row["beats_constant_brier"] == (row["brier"] < res["constant"]["brier"])
        assert row["beats_constant"] == (row["beats_constant_ece"] and row["beats_constant_brier"])
    # the target's own fit, beside: exactly its results.json
    own = json.loads((tgt.path / "results.json").read_text())["calibrated_test"]
    assert res["in_task"]["temperature"]["ece"] == own["temperature"]["ece"]
    # the constant is the source's accuracy on its calibration part
    s_samples = RunDir(src.path).read_samples()
    s_cal, _ = split_indices([s.task for s in s_samples], 0.5, 0)
    assert res["constant"]["confidence"] == pytest.approx(np.mean([s_samples[i].correct for i in s_cal]))
    assert res["constant"]["ece"] == pytest.approx(abs(y.mean() - res["constant"]["confidence"]))
    # written atomically into the target folder and listed in its manifest
    assert json.loads((tgt.path / "transfer.json").read_text()) == res
    assert "transfer.json" in (tgt.path / ".llmcal-manifest.json").read_text()
    assert "constant = source accuracy" in r.table() and "in-task temperature" in r.table()


def test_transfer_to_itself_equals_the_in_task_fit_and_carries_combined(tmp_path):
    from llmcal.pipeline.config import ProbeConfig, RunConfig
    from llmcal.pipeline.run import probe_run
    from llmcal.pipeline.transfer import transfer

    run = calibrated_run(tmp_path / "x", n=240, seed=0)
    probe_run(run, RunConfig(probe=ProbeConfig(components="4"), bootstrap=0, quiet=True))
    res = transfer(run.path, run.path, n_bootstrap=0, write=False).results
    assert res["transferred"]["temperature"]["ece"] == res["in_task"]["temperature"]["ece"]
    # the probe's `combined`, applied to the same run, is the number results.json holds
    combined = json.loads((run.path / "results.json").read_text())["calibrated_test"]["combined"]
    assert res["transferred"]["combined"]["ece"] == pytest.approx(combined["ece"], abs=1e-12)
    assert res["transferred"]["combined"]["auroc"] == pytest.approx(combined["auroc"], abs=1e-12)


def test_transfer_refuses_what_cannot_apply(tmp_path):
    from llmcal.pipeline.transfer import transfer
    from llmcal.records.run_dir import RunDir

    src = calibrated_run(tmp_path / "x", n=80, seed=0)
    bare = make_run(tmp_path / "bare", n=40, seed=1)
    with pytest.raises(FileNotFoundError, match=r"bare/calibration\.json: no calibration\.json in the source run"):
        transfer(bare.path, src.path)
    other = make_run(tmp_path / "other", n=40, seed=1, fingerprint=FP_OTHER)
    with pytest.raises(ValueError, match=r"x/calibration\.json: calibration 'temperature' was fitted for another "
                                         r"model than .*other's: .*other/config\.json has weights 'ffff"):
        transfer(src.path, other.path)
    opened = make_run(tmp_path / "open", n=40, seed=1)
    cfg = RunDir(opened.path).config()
    RunDir(opened.path).write_config({**cfg, "kind": "open"})
    with pytest.raises(ValueError, match=r"x/calibration\.json: a multiple-choice calibration cannot be applied "
                                         r"to .*open, a free-form run"):
        transfer(src.path, opened.path)
    with pytest.raises(ValueError, match="--adapt: 'labels' is not one of: unlabeled"):
        transfer(src.path, bare.path, adapt="labels")


def test_constant_baseline_flags_a_calibration_that_does_not_beat_it():
    """An overconfident raw signal transferred unchanged loses to the constant and is flagged; a
    calibration fitted where it holds beats it and is not."""
    from llmcal.pipeline.transfer import evaluate_transfer

    rng = np.random.default_rng(3)
    samples = _mc_samples(rng, 600, sharpness=4.0)
    cal_idx, test_idx = split_indices([s.task for s in samples], 0.5, 0)
    cal = [samples[i] for i in cal_idx]
    cals = {"none": Calibration.none("option_prob"), "temperature": Calibration.fit(cal, "option_prob", "temperature")}
    res = evaluate_transfer(cals, cal, samples, cal_idx, test_idx, n_bootstrap=0)
    assert not res["transferred"]["none"]["beats_constant"]
    assert res["transferred"]["temperature"]["beats_constant"]
    assert res["worse_than_constant"] == ["transferred:none"]
    assert res["transferred"]["temperature"]["ece"] < res["constant"]["ece"] < res["transferred"]["none"]["ece"]


def _mc_samples(rng, n: int, sharpness: float, scale: float = 1.5, task: str = "t"):
    from llmcal.core.sample import Sample
    from llmcal.signals.mc import mc_signals

    ll, y = softmax_draws(rng, n, scale, sharpness)
    top = ll.max(axis=1, keepdims=True)
    ll = ll - top - np.log(np.exp(ll - top).sum(axis=1, keepdims=True))  # log-softmax: log-probabilities <= 0
    out = []
    for i in range(n):
        pred, sig = mc_signals(ll[i], np.ones(4, dtype=int))
        out.append(Sample.from_dict({
            "id": f"{task}-{i}", "task": task, "prompt": "q", "question": f"q{i}", "choices": list("abcd"),
            "reference": int(y[i]), "reference_text": "abcd"[y[i]], "prediction": int(pred),
            "prediction_text": "abcd"[pred], "correct": bool(pred == y[i]), "prediction_norm": int(pred),
            "correct_norm": bool(pred == y[i]), "option_logprobs": [float(x) for x in ll[i]],
            "option_ntokens": [1] * 4, "option_nchars": [4] * 4, "option_is_greedy": [False] * 4,
            "signals": sig, "meta": {}}))
    return out


def test_adapt_unlabeled_rescales_to_the_estimated_accuracy_without_reading_target_labels():
    from llmcal.pipeline.transfer import adapt_calibration

    rng = np.random.default_rng(4)
    src = _mc_samples(rng, 800, sharpness=3.0, scale=2.0, task="s")
    tgt = _mc_samples(rng, 800, sharpness=3.0, scale=0.8, task="t")
    cal = Calibration.fit(src, "option_prob", "temperature")
    a = adapt_calibration(cal, src, tgt, estimator="doc")
    assert a.info["method"] == "temperature" and a.calibration is not None
    assert a.confidences(tgt).mean() == pytest.approx(a.info["estimated_accuracy"], abs=1e-4)
    # the labels of the target are never read: flipping them changes nothing
    flipped = [s.__class__.from_dict({**s.to_dict(), "correct": not s.correct}) for s in tgt]
    b = adapt_calibration(cal, src, flipped, estimator="doc")
    assert b.info == a.info
    # the estimator may read a gauge of difficulty (Platt on another signal) instead of the calibration itself
    from llmcal.pipeline.transfer import parse_estimator

    name, gauge = parse_estimator("atc@option_prob_norm", src)
    assert name == "atc" and gauge.describe() == "platt on option_prob_norm"
    g = adapt_calibration(cal, src, tgt, name, reference=gauge)
    assert g.info["read"] == "platt on option_prob_norm" and g.info["estimated_accuracy"] == pytest.approx(
        atc_estimate(gauge.confidences(src), [s.correct for s in src], gauge.confidences(tgt)))
    with pytest.raises(ValueError, match=r"--estimator: 'mean'; expected atc, doc, atc_prior, optionally @SIGNAL"):
        parse_estimator("mean", src)
    # a calibrator without a temperature is moved by a logit shift instead
    iso = Calibration.fit(src, "option_prob", "isotonic")
    c = adapt_calibration(iso, src, tgt, estimator="atc")
    assert c.info["method"] == "logit_shift"
    assert c.confidences(tgt).mean() == pytest.approx(c.info["estimated_accuracy"], abs=1e-4)


def test_cli_calibrate_from_prints_the_table_and_refuses_bad_input(tmp_path, capsys):
    from llmcal.cli.main import main

    src = calibrated_run(tmp_path / "x", n=120, seed=0)
    tgt = make_run(tmp_path / "y", n=120, tasks=("t3",), seed=6)
    assert main(["calibrate", str(tgt.path), "--from", str(src.path), "--adapt", "unlabeled",
                 "--bootstrap", "20"]) == 0
    from llmcal.pipeline.transfer import DEFAULT_ESTIMATOR

    out = capsys.readouterr().out
    assert "transferred temperature" in out and f"temperature + unlabeled ({DEFAULT_ESTIMATOR['mc']}" in out
    assert f"written: {tgt.path / 'transfer.json'}" in out
    # every row's numbers start in the header's ECE column, however long the adapted row's label
    table = [ln for ln in out.splitlines() if ln.startswith(("confidence", "constant", "raw ", "transferred ",
                                                              "temperature + ", "isotonic + ", "in-task "))]
    ece_col = table[0].index("ECE") + len("ECE")  # right-aligned: the column ends where "ECE" does
    assert len(table) >= 6 and all(ln[ece_col - 1].isdigit() and ln[ece_col] == " " for ln in table[1:])
    res = json.loads((tgt.path / "transfer.json").read_text())
    assert res["adapt"] == "unlabeled" and set(res["adapted"]) == {"temperature", "isotonic"}
    assert not (tgt.path / "results.json").exists()  # --from leaves the target's own results alone
    assert main(["calibrate", str(tgt.path), "--adapt", "unlabeled"]) == 2
    assert "--adapt: needs --from SOURCE_RUN" in capsys.readouterr().err
    assert main(["calibrate", str(tgt.path), "--from", str(tmp_path / "nowhere")]) == 2
    assert "nowhere/calibration.json: no calibration.json" in capsys.readouterr().err


# ------------------------------------------------------------------ results.json of every run
def test_every_run_has_the_constant_baseline_and_a_flag_per_calibrator():
    from llmcal.pipeline.evaluate import evaluate

    rng = np.random.default_rng(5)
    samples = _mc_samples(rng, 400, sharpness=4.0)
    res, _ = evaluate(samples, calibrators=["temperature", "isotonic"], n_bootstrap=50)
    cal, test = split_indices([s.task for s in samples], 0.5, 0)
    y = np.array([s.correct for s in samples], dtype=float)
    base = res["baseline"]
    assert base["confidence"] == pytest.approx(y[cal].mean())
    assert base["constant"]["ece"] == pytest.approx(abs(y[test].mean() - y[cal].mean()))
    for name in ("temperature", "isotonic"):
        flag = base["calibrators"][name]
        assert flag["beats_constant_ece"] == (res["calibrated_test"][name]["ece"] < base["constant"]["ece"])
        assert flag["beats_constant_brier"] == (res["calibrated_test"][name]["brier"] < base["constant"]["brier"])
        lo, hi = res["calibrated_test"][name]["ci95"]["ece"]
        assert flag["interval_spans_constant"] == (lo <= base["constant"]["ece"] <= hi)


def test_signal_auto_for_multiple_choice_chooses_on_the_calibration_part_only():
    from llmcal.core.sample import Sample
    from llmcal.pipeline.evaluate import evaluate

    rng = np.random.default_rng(6)
    samples = _mc_samples(rng, 400, sharpness=3.0)
    res, cals = evaluate(samples, signal="auto", n_bootstrap=0)
    choice = res["signal_choice"]
    assert res["primary"]["signal"] == choice["chosen"] == cals["temperature"].signal
    assert set(choice["candidates"]) == set(samples[0].signals)
    ok = {k: v for k, v in choice["candidates"].items() if "cv_ece" in v}
    best = max(v["cv_auroc"] for v in ok.values())
    near = [k for k, v in ok.items() if v["cv_auroc"] >= best - 0.02]
    assert choice["chosen"] == min(near, key=lambda k: ok[k]["cv_ece"])
    assert "calibration part only" in choice["rule"]
    # the test part is never read: flipping every test label leaves the choice and its numbers alone
    _, test = split_indices([s.task for s in samples], 0.5, 0)
    flipped = list(samples)
    for i in test:
        d = samples[i].to_dict()
        flipped[i] = Sample.from_dict({**d, "correct": not d["correct"]})
    res2, _ = evaluate(flipped, signal="auto", n_bootstrap=0)
    assert res2["signal_choice"] == choice


def test_mix_task_group_is_balanced_and_spread_over_each_task(data_dir):
    import collections

    from llmcal.tasks.errors import TaskError
    from llmcal.tasks.registry import TASK_GROUPS, load_task, task_kind

    items = load_task("mix", data_dir=data_dir, limit=20)
    assert task_kind("mix") == "mc"
    assert collections.Counter(it.task for it in items) == {t: 20 for t in TASK_GROUPS["mix"]}
    assert len({it.id for it in items}) == len(items)
    # evenly spaced over each file: MMLU's 20 come from many subjects, not the first one or two
    assert len({it.meta.get("subject") for it in items if it.task == "mmlu"}) >= 10
    with pytest.raises(TaskError, match=r"task group 'mix': builtin has 600 items, fewer than the 700 taken"):
        load_task("mix", data_dir=data_dir, limit=700)


def test_free_form_transfer_leaves_out_answers_without_the_signal_and_counts_them():
    from llmcal.pipeline.transfer import evaluate_transfer
    from test_calibration_object import open_sample

    rng = np.random.default_rng(7)

    def task(n, shift, name):
        out = []
        for i in range(n):
            z = rng.normal()
            sig = {"mean_token_prob": float(1 / (1 + np.exp(-(2 * z + shift))))}
            if i % 5 == 0:
                sig["verbalized"] = 0.9
            out.append(open_sample(i, sig, bool(rng.random() < 1 / (1 + np.exp(-2 * z))),
                                   [] if i % 5 == 0 else ["verbalized"], task=name))
        return out

    src, tgt = task(300, 1.5, "s"), task(300, -0.5, "t")
    cals = {"platt": Calibration.fit(src, "mean_token_prob", "platt"),
            "verbalized": Calibration.fit([s for s in src if "verbalized" in s.signals], "verbalized", "histogram")}
    cal_idx, test_idx = split_indices([s.task for s in tgt], 0.5, 0)
    res = evaluate_transfer(cals, src, tgt, cal_idx, test_idx, adapt="unlabeled", n_bootstrap=0)
    assert res["estimator"] == "doc" and res["transferred"]["platt"]["n_missing"] == 0
    n_verb = sum("verbalized" in tgt[i].signals for i in test_idx)
    verb = res["transferred"]["verbalized"]
    assert verb["n"] == n_verb and verb["n_missing"] == 150 - n_verb
    # DoC read on the unlabeled calibration part of the target, with the source's labels
    a = res["adapted"]["platt"]["adaptation"]
    unlabeled = [tgt[i] for i in cal_idx]
    assert a["estimated_accuracy"] == pytest.approx(doc_estimate(
        cals["platt"].confidences(src), [s.correct for s in src], cals["platt"].confidences(unlabeled)))
    assert a["n_unlabeled"] == len(unlabeled)


# ------------------------------------------------------------------ the two-sample shift test
def test_domain_shift_is_chance_on_the_same_distribution_and_near_one_on_another():
    from llmcal.probe.shift import DomainShift

    rng = np.random.default_rng(0)
    d = 32
    same = [rng.normal(size=(300, d)) for _ in range(4)]
    null = DomainShift.test(*same)
    assert abs(null.auroc - 0.5) < 0.1 and null.share_unlike < 0.15  # ~5% flagged by construction
    mean_shift = np.zeros(d)
    mean_shift[:4] = 1.2  # another domain: a shift in a few directions (Bayes-optimal AUROC 0.955)
    src_fit, src_test = rng.normal(size=(300, d)), rng.normal(size=(300, d))
    tgt_fit, tgt_test = rng.normal(size=(300, d)) + mean_shift, rng.normal(size=(300, d)) + mean_shift
    shifted = DomainShift.test(src_fit, tgt_fit, src_test, tgt_test)
    assert shifted.auroc > 0.9 and shifted.share_unlike > 0.5
    assert "look unlike the calibration data" in shifted.verdict() and "AUROC" in shifted.verdict()
    assert "look like the calibration data" in null.verdict()
    with pytest.raises(ValueError, match="target_test needs at least 2 rows"):
        DomainShift.test(src_fit, tgt_fit, src_test, tgt_test[:1])


def test_transfer_reports_the_shift_of_the_target_questions(tmp_path):
    from llmcal.pipeline.transfer import transfer, transfer_table

    run = calibrated_run(tmp_path / "x", n=160, seed=0)
    res = transfer(run.path, run.path, n_bootstrap=0, write=False).results
    # the same questions on both sides: the classifier cannot tell them apart
    assert res["shift"]["method"] == "domain_classifier" and res["shift"]["auroc"] == pytest.approx(0.5)
    assert "shift: " in transfer_table(res) and "look like the calibration data" in transfer_table(res)


def test_calibrate_help_names_the_default_estimators():
    """The --estimator help states the defaults the code uses (it once named a default two versions old)."""
    from llmcal.cli.main import build_parser
    from llmcal.pipeline.transfer import DEFAULT_ESTIMATOR

    sub = next(a for a in build_parser()._actions if a.dest == "command" or getattr(a, "choices", None))
    calibrate = sub.choices["calibrate"]
    text = " ".join(calibrate.format_help().split())
    assert f"{DEFAULT_ESTIMATOR['mc']} for multiple choice" in text
    assert f"{DEFAULT_ESTIMATOR['open']} for free-form answers" in text
