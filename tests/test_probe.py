"""The external probe: planted-signal recovery, the refusal on a mismatched model, the artifact
round trip, the stacked combination, and the commands on a tiny run folder.  No model needed."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from llmcal import metrics as M
from llmcal.core.sample import Sample
from llmcal.probe.artifact import ProbeArtifact, ProbeMismatchError
from llmcal.probe.combine import Combiner
from llmcal.probe.features import ModelInfo, load_run_features
from llmcal.probe.models import LogisticProbe, MLPProbe, cross_fit_logits, sigmoid
from llmcal.records.run_dir import RunDir
from llmcal.signals.mc import mc_signals

HIDDEN = 48
N_LAYERS = 6
FP = "abc123def4567890"


# ------------------------------------------------------------------ synthetic data
def planted(n: int, d: int = 200, dim: int = 7, strength: float = 2.5, seed: int = 0):
    """Isotropic features, P(right) = sigmoid(strength * x[:, dim]): a signal on one coordinate."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (rng.random(n) < sigmoid(strength * X[:, dim])).astype(float)
    return X, y


def test_logistic_probe_recovers_planted_coordinate():
    X, y = planted(1200, d=40)
    probe = LogisticProbe(n_hidden=X.shape[1], n_components=None, seed=0).fit(X[:600], y[:600])
    w = probe.coef_
    assert int(np.argmax(np.abs(w))) == 7
    assert w[7] > 0
    # the planted weight dominates the others by a wide margin
    assert abs(w[7]) > 4 * np.sort(np.abs(w))[-2]
    oracle = M.auroc(sigmoid(2.5 * X[600:, 7]), y[600:])
    got = M.auroc(probe.predict_proba(X[600:]), y[600:])
    assert got > oracle - 0.03 and got > 0.85
    # C was chosen by cross-validation on the training rows, among the grid
    assert probe.cv_["chosen"] in probe.Cs and len(probe.cv_["cv_log_loss"]) == len(probe.Cs)
    # and the probabilities are calibrated on held-out rows
    assert M.ece(probe.predict_proba(X[600:]), y[600:]) < 0.08


def test_pca_probe_finds_signal_in_a_high_variance_direction():
    """Hidden states have a few dominant directions; a planted signal along one survives the PCA."""
    rng = np.random.default_rng(1)
    n, d = 900, 300
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    z = rng.normal(size=n)  # the latent "knows the answer"
    H = rng.normal(size=(n, d)) + 6.0 * z[:, None] * u[None, :]
    y = (rng.random(n) < sigmoid(2.5 * z)).astype(float)
    cheap = rng.normal(size=(n, 3))  # uninformative cheap features
    X = np.concatenate([H, cheap], axis=1)
    probe = LogisticProbe(n_hidden=d, n_components=8).fit(X[:500], y[:500])
    got = M.auroc(probe.predict_proba(X[500:]), y[500:])
    assert got > M.auroc(sigmoid(z[500:]), y[500:]) - 0.04
    # the folded weights point along the planted direction
    cos = abs(probe.coef_[:d] @ u) / np.linalg.norm(probe.coef_[:d])
    assert cos > 0.8


def test_mlp_probe_recovers_planted_signal():
    X, y = planted(900, d=30, dim=3, strength=3.0, seed=2)
    probe = MLPProbe(n_hidden=0, n_components=None, epochs=100, penalties=(1e-2, 1e-1), n_folds=3, seed=0)
    probe.fit(X[:500], y[:500])
    assert probe.cv_["chosen"] in (1e-2, 1e-1)
    got = M.auroc(probe.predict_proba(X[500:]), y[500:])
    assert got > 0.8
    # numpy inference equals the folded torch network's: no torch needed to predict
    assert probe.W1_.shape == (30, probe.hidden)


def test_probe_refuses_one_class_and_bad_shapes():
    X, _ = planted(50, d=5, dim=1)
    with pytest.raises(ValueError, match="all 50 training answers are right"):
        LogisticProbe().fit(X, np.ones(50))
    probe = LogisticProbe(n_components=None).fit(*planted(80, d=5, dim=1))
    with pytest.raises(ValueError, match=r"expected \(n, 5\) features"):
        probe.predict_proba(np.zeros((3, 6)))


def test_cross_fit_logits_are_out_of_fold():
    """In-sample logits of an over-flexible probe are overconfident; out-of-fold ones are not."""
    X, y = planted(300, d=250, dim=0, strength=1.0, seed=3)
    probe = LogisticProbe(C=100.0, n_components=None)
    inside = probe.fit(X, y, tune=False).logit(X)
    oof = cross_fit_logits(probe, X, y, n_folds=5, seed=0)
    assert M.auroc(sigmoid(inside), y) > 0.99  # memorized
    assert M.auroc(sigmoid(oof), y) < 0.85     # honest


def test_combined_beats_each_input_when_they_carry_different_information():
    rng = np.random.default_rng(4)
    n = 1600
    a, b = rng.normal(size=n), rng.normal(size=n)
    y = (rng.random(n) < sigmoid(1.5 * a + 1.5 * b)).astype(float)
    p_internal = sigmoid(3 * a + 1)  # an overconfident internal signal that knows a
    signals = {"option_prob": p_internal, "option_prob_norm": p_internal, "margin": p_internal,
               "entropy": p_internal}
    probe_logits = 1.5 * b  # a probe that knows b
    tr, te = slice(0, 800), slice(800, None)
    comb = Combiner("platt").fit({k: v[tr] for k, v in signals.items()}, probe_logits[tr], y[tr])
    c = comb.predict({k: v[te] for k, v in signals.items()}, probe_logits[te])
    auc_c = M.auroc(c, y[te])
    assert auc_c > M.auroc(p_internal[te], y[te]) + 0.05
    assert auc_c > M.auroc(sigmoid(probe_logits[te]), y[te]) + 0.05
    assert M.ece(c, y[te]) < 0.5 * M.ece(p_internal[te], y[te])
    w = comb.weights()
    assert w["probe_logit"] > 0


# ------------------------------------------------------------------ a tiny run folder
def make_run(path, n: int = 240, tasks=("t1", "t2"), fingerprint: str | None = FP, name: str = "tiny-model",
             hidden_size: int = HIDDEN, layers=(-1, 3), seed: int = 0, n_layers: int = N_LAYERS,
             answer_mean: bool = False) -> RunDir:
    """A run folder as ``llmcal measure`` writes it, with a planted correctness signal in the hidden rows.

    With ``answer_mean`` the rows also hold the answer-mean position, and the
    signal is planted there only (the last-prompt slots are noise).
    """
    rng = np.random.default_rng(seed)
    run = RunDir(path)
    backend = {"backend": "hf", "model": name, "n_layers": n_layers, "hidden_size": hidden_size,
               "hidden_layers": list(layers), "dtype": "float32"}
    if fingerprint:
        backend["fingerprint"] = fingerprint
    run.start({"model": "hf", "tasks": list(tasks), "hidden_layers": ["-1", "3"], "model_args": {},
               "backend": backend, "model_desc": name}, ["model"])
    u = rng.normal(size=hidden_size)
    u /= np.linalg.norm(u)
    samples, hidden = [], []
    for i in range(n):
        task = tasks[i % len(tasks)]
        z = rng.normal()
        logprobs = rng.normal(size=4) * 2.0 - 10.0
        ntok = rng.integers(1, 6, size=4)
        pred, sig = mc_signals(logprobs, ntok)
        right = rng.random() < sigmoid(2.0 * z + (0.8 if task == "t1" else -0.4))
        ref = pred if right else (pred + 1 + int(rng.integers(0, 3))) % 4
        h = rng.normal(size=(len(layers), hidden_size)) + 5.0 * z * u[None, :]
        if answer_mean:
            h = np.concatenate([rng.normal(size=(len(layers), hidden_size)), h])
        hidden.append(h.astype(np.float32))
        samples.append(Sample.from_dict({
            "id": f"{task}-{i}", "task": task, "prompt": "Question: q" + "x" * int(rng.integers(5, 50)),
            "question": f"q{i}", "choices": ["a", "b", "c", "d"], "reference": int(ref),
            "reference_text": "abcd"[ref], "prediction": int(pred), "prediction_text": "abcd"[pred],
            "correct": bool(pred == ref), "prediction_norm": int(pred), "correct_norm": bool(pred == ref),
            "option_logprobs": [float(x) for x in logprobs], "option_ntokens": [int(x) for x in ntok],
            "option_nchars": [int(x) * 4 for x in ntok], "option_is_greedy": [False] * 4, "signals": sig,
            "meta": {}, "hidden_row": i,
        }))
    run.append(samples, np.stack(hidden), ["last_prompt", "answer_mean"] if answer_mean else None)
    return run


def _probe_parser() -> argparse.ArgumentParser:
    from llmcal.cli.probe_commands import add_parsers

    parser = argparse.ArgumentParser(prog="llmcal")
    add_parsers(parser.add_subparsers(dest="command"))
    return parser


def test_run_features_and_design_matrix(tmp_path):
    run = make_run(tmp_path / "r", n=20)
    rf = load_run_features(run.path, compute_fingerprint=False)
    assert rf.model.layers == [6, 3] and rf.model.fingerprint == FP
    assert rf.hidden.shape == (20, 2, HIDDEN)
    from llmcal.probe.features import CHEAP_FEATURES, design_matrix

    X = design_matrix(rf, [3], use_cheap=True)
    assert X.shape == (20, HIDDEN + len(CHEAP_FEATURES))
    np.testing.assert_array_equal(X[:, :HIDDEN], rf.hidden[:, 1, :])
    with pytest.raises(ValueError, match="not kept"):
        design_matrix(rf, [2])


def test_answer_mean_position_is_read_where_it_was_stored(tmp_path):
    from llmcal.probe.features import design_matrix
    from llmcal.probe.protocol import ProbeSettings, fit_all

    run = make_run(tmp_path / "r", n=400, answer_mean=True)
    assert run.hidden_positions() == ["last_prompt", "answer_mean"]
    rf = load_run_features(run.path, compute_fingerprint=False)
    assert rf.hidden.shape == (400, 4, HIDDEN) and rf.positions == ["last_prompt", "answer_mean"]
    X = design_matrix(rf, [3], use_cheap=False, positions=["answer_mean"])
    np.testing.assert_array_equal(X, rf.hidden[:, 3, :])  # slot = position 1 * 2 kept layers + layer index 1
    cal, test = rf.subset(np.arange(0, 400, 2)), rf.subset(np.arange(1, 400, 2))
    aurocs = {}
    for pos in (["last_prompt"], ["answer_mean"]):
        f = fit_all(cal, ProbeSettings(n_components=8, use_cheap=False, positions=pos))
        aurocs[pos[0]] = M.auroc(f.artifact.predict(test)["external"], test.correct)
    # the planted signal is found only where it was planted
    assert aurocs["answer_mean"] > 0.8 and abs(aurocs["last_prompt"] - 0.5) < 0.12
    art = fit_all(cal, ProbeSettings(n_components=8, positions=["answer_mean"])).artifact
    back = ProbeArtifact.load(art.save(tmp_path / "art"))
    assert back.positions == ["answer_mean"]
    samples = run.read_samples()
    full = back.predict(rf)
    one = back.predict_one(samples[5], rf.hidden[5], rf.model.layers, rf.positions)
    assert one["combined"] == pytest.approx(full["combined"][5], abs=1e-9)
    # a run without the answer-mean position cannot feed this probe
    plain = load_run_features(make_run(tmp_path / "p", n=10).path, compute_fingerprint=False)
    with pytest.raises(ValueError, match=r"positions \['answer_mean'\] were not kept"):
        back.predict(plain)


def test_artifact_round_trip_and_refusal_on_another_model(tmp_path):
    from llmcal.probe.protocol import ProbeSettings, fit_all

    run = make_run(tmp_path / "r", n=200)
    rf = load_run_features(run.path, compute_fingerprint=False)
    f = fit_all(rf, ProbeSettings(n_components=8))
    path = f.artifact.save(tmp_path / "art")
    assert path.name == "probe.json" and (tmp_path / "art" / "probe.npz").exists()
    meta = json.loads(path.read_text())
    assert meta["model"] == {"name": "tiny-model", "fingerprint": FP, "n_layers": N_LAYERS,
                             "hidden_size": HIDDEN, "layers": [6, 3]}
    assert meta["layers"] == [6, 3] and meta["probe"]["kind"] == "logistic"
    back = ProbeArtifact.load(path)
    a, b = f.artifact.predict(rf), back.predict(rf)
    assert set(a) == {"external", "combined"}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])  # bitwise

    # another model's activations: refused with a clear reason
    other = load_run_features(make_run(tmp_path / "o1", n=10, fingerprint="ffff000011112222").path,
                              compute_fingerprint=False)
    with pytest.raises(ProbeMismatchError, match="weight fingerprint ffff000011112222 .probe: abc123def4567890"):
        back.predict(other)
    renamed = load_run_features(make_run(tmp_path / "o2", n=10, name="other-model").path, compute_fingerprint=False)
    with pytest.raises(ProbeMismatchError, match="model name 'other-model'"):
        back.predict(renamed)
    wider = load_run_features(make_run(tmp_path / "o3", n=10, hidden_size=HIDDEN + 16).path,
                              compute_fingerprint=False)
    with pytest.raises(ProbeMismatchError, match=f"hidden size {HIDDEN + 16}"):
        back.predict(wider)
    fewer = load_run_features(make_run(tmp_path / "o4", n=10, layers=(-1,)).path, compute_fingerprint=False)
    with pytest.raises(ProbeMismatchError, match=r"layers \[3\] not kept"):
        back.predict(fewer)
    unknown = ModelInfo("tiny-model", None, N_LAYERS, HIDDEN, [6, 3])
    with pytest.raises(ProbeMismatchError, match="no weight fingerprint"):
        back.check_model(unknown)
    # the command refuses too (main() turns the ValueError into exit status 2)
    args = _probe_parser().parse_args(["probe", str(tmp_path / "o1"), "--apply", str(path), "--quiet",
                                       "--no_fingerprint"])
    from llmcal.cli.probe_commands import cmd_probe

    with pytest.raises(ProbeMismatchError):
        cmd_probe(args)


def test_probe_and_combine_commands_on_a_run_folder(tmp_path):
    from llmcal.cli.main import main
    from llmcal.cli.probe_commands import cmd_combine, cmd_probe
    from llmcal.report.probe_section import render_probe_section

    run = make_run(tmp_path / "r", n=400)
    assert main(["calibrate", str(run.path), "--bootstrap", "0", "--quiet"]) == 0
    parser = _probe_parser()
    assert cmd_probe(parser.parse_args(["probe", str(run.path), "--bootstrap", "50", "--quiet"])) == 0
    assert (run.path / "probe.json").exists() and (run.path / "probe.npz").exists()
    pr = json.loads((run.path / "probe_results.json").read_text())
    assert pr["split"]["n_test"] == 200
    m = pr["methods"]
    # the planted hidden-state signal: the probe ranks far better than the (random) internal signal
    assert m["external"]["auroc"] > m["internal"]["auroc"] + 0.2
    assert m["combined"]["auroc"] > pr["best_single_auroc"] - 0.02
    assert m["combined"]["vs_internal"]["ece_reduction"] > 0.4
    lo, hi = m["combined"]["vs_internal"]["ece_reduction_ci95"]
    assert lo <= m["combined"]["vs_internal"]["ece_reduction"] <= hi

    assert cmd_combine(parser.parse_args(["combine", str(run.path), "--bootstrap", "50", "--quiet"])) == 0
    results = json.loads((run.path / "results.json").read_text())
    assert "combined" in results["calibrated_test"] and "external" in results["signals_test"]
    assert results["calibrated_test"]["combined"]["ci95"]["ece"][0] is not None
    assert results["probe"]["split"] == {"cal_fraction": 0.5, "seed": 0, "n_cal": 200, "n_test": 200}
    # scored on the same test items as the calibrators: identical accuracy
    assert results["calibrated_test"]["combined"]["accuracy"] == results["calibrated_test"]["temperature"]["accuracy"]
    html = render_probe_section(results["probe"])
    assert "combined" in html and "external" in html and "<table>" in html

    # applying the saved artifact to the same model's run works
    assert cmd_probe(parser.parse_args(["probe", str(run.path), "--apply", str(run.path / "probe.json"),
                                        "--bootstrap", "0", "--quiet", "--out", str(tmp_path / "a.json")])) == 0
    assert "combined" in json.loads((tmp_path / "a.json").read_text())["methods"]


def test_shift_matrix_and_learning_curve(tmp_path):
    from llmcal.cli.probe_commands import cmd_probe
    from llmcal.report.probe_section import render_probe_section

    r1 = make_run(tmp_path / "a", n=160, tasks=("t1",), seed=1)
    r2 = make_run(tmp_path / "b", n=160, tasks=("t2",), seed=2)
    r3 = make_run(tmp_path / "c", n=160, tasks=("t3",), seed=3)
    args = _probe_parser().parse_args(["probe", "--shift", str(r1.path), str(r2.path), str(r3.path),
                                       "--bootstrap", "20", "--quiet", "--sizes", "50,80",
                                       "--repeats", "1", "--out", str(tmp_path / "shift"), "--components", "4"])
    assert cmd_probe(args) == 0
    out = json.loads((tmp_path / "shift" / "probe_shift.json").read_text())
    sh = out["shift"]
    assert sh["tasks"] == ["t1", "t2", "t3"]
    assert set(sh["cells"]) == {"t1", "t2", "t3", "all but t1", "all but t2", "all but t3"}
    assert set(sh["cells"]["t1"]) == {"t1", "t2", "t3"} and set(sh["cells"]["all but t2"]) == {"t2"}
    cell = sh["cells"]["t1"]["t2"]["methods"]["combined"]
    assert {"auroc", "ece", "brier", "overconfidence", "ci95", "vs_internal"} <= set(cell)
    assert set(sh["summary"]) == {"pairwise_shift", "leave_one_task_out", "in_task"}
    assert sh["summary"]["pairwise_shift"]["n_cells"] == 6
    lc = out["learning_curve"]
    assert set(lc["in_task"]) == {"50", "80"} and set(lc["leave_one_task_out"]) == {"50", "80"}
    md = (tmp_path / "shift" / "probe_shift.md").read_text()
    assert "Task-shift matrix" in md and "Learning curve" in md
    html = render_probe_section({"shift": sh, "learning_curve": lc})
    assert "all but t1" in html and "Learning curve" in html


def test_probe_step_adds_combined_when_asked(tmp_path):
    from llmcal.cli.main import main
    from llmcal.pipeline.config import ProbeConfig, RunConfig
    from llmcal.pipeline.run import probe_run

    run = make_run(tmp_path / "r", n=160)
    assert main(["calibrate", str(run.path), "--bootstrap", "0", "--quiet"]) == 0
    assert probe_run(run, RunConfig(bootstrap=0, quiet=True)) is None  # not asked: nothing happens
    assert not (run.path / "probe.json").exists()
    res = probe_run(run, RunConfig(probe=ProbeConfig(components="4"), bootstrap=0, quiet=True))
    assert res["settings"]["n_components"] == 4
    results = json.loads((run.path / "results.json").read_text())
    assert "combined" in results["calibrated_test"] and results["probe"]["settings"]["n_components"] == 4
