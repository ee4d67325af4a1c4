"""``combined`` anchored on the best single signal (issue #15): known-answer synthetic tests.

Fitted on a pool of source tasks, the stacker is a ridge toward the internal signal with the best
within-task AUROC; a penalized input (the probe, another signal) enters only when its
leave-one-task-out gain exceeds one standard error.  No model needed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmcal import metrics as M
from llmcal.probe.combine import ANCHOR_PENALTIES, Combiner, one_se_choice
from llmcal.probe.models import sigmoid


def pool(n_tasks: int = 5, n: int = 300, probe_strength: float = 0.0, seed: int = 0):
    """``n_tasks`` tasks of ``n`` 4-option items.  Correctness follows a latent ``a`` (what
    ``option_prob_norm`` reads, noisily) plus ``probe_strength`` times a latent ``b`` (what the probe
    reads); each task has its own base rate.  The other three signals are noise."""
    rng = np.random.default_rng(seed)
    N = n_tasks * n
    groups = np.repeat(np.arange(n_tasks), n)
    offset = rng.normal(scale=0.7, size=n_tasks)[groups]
    a, b = rng.normal(size=N), rng.normal(size=N)
    y = (rng.random(N) < sigmoid(1.2 * a + probe_strength * b + offset)).astype(float)
    signals = {"option_prob": sigmoid(rng.normal(size=N)), "option_prob_norm": sigmoid(a + 0.3 * rng.normal(size=N)),
               "margin": sigmoid(rng.normal(size=N)), "entropy": sigmoid(rng.normal(size=N))}
    probe = b + 0.2 * rng.normal(size=N)
    return signals, probe, y, np.full(N, 4), groups


def within_task_auroc(conf, y, groups):
    return float(np.mean([M.auroc(conf[groups == g], y[groups == g]) for g in np.unique(groups)]))


def test_one_se_rule_known_answers():
    base = np.array([0.60, 0.62, 0.58, 0.61])
    # a steady gain of 0.02 on every task: far above its (zero) standard error
    assert one_se_choice({math.inf: base, 1.0: base + 0.02}, math.inf) == 1.0
    # a gain on average, but one task loses a lot: within noise, so the simplest model stays
    assert one_se_choice({math.inf: base, 1.0: base + np.array([0.05, 0.05, 0.05, -0.12])}, math.inf) == math.inf
    # every candidate worse: the base
    assert one_se_choice({math.inf: base, 0.1: base - 0.01}, math.inf) == math.inf
    # among eligible candidates the largest mean gain wins
    got = one_se_choice({math.inf: base, 1.0: base + 0.01, 0.1: base + np.array([0.03, 0.031, 0.029, 0.03])}, math.inf)
    assert got == 0.1


def test_anchor_alone_when_the_probe_does_not_carry_across_tasks():
    """A probe whose relation to correctness flips sign from task to task (hidden states that name the
    task): pooled it looks useful, on a held-out task it is a coin toss -- the anchor alone is kept."""
    rng = np.random.default_rng(1)
    n_tasks, n = 5, 300
    N = n_tasks * n
    g = np.repeat(np.arange(n_tasks), n)
    sign = np.array([1, -1, 1, -1, 1])[g]
    a, b = rng.normal(size=N), rng.normal(size=N)
    y = (rng.random(N) < sigmoid(1.2 * a + sign * b + rng.normal(scale=0.7, size=n_tasks)[g])).astype(float)
    signals = {"option_prob": sigmoid(rng.normal(size=N)), "option_prob_norm": sigmoid(a + 0.3 * rng.normal(size=N)),
               "margin": sigmoid(rng.normal(size=N)), "entropy": sigmoid(rng.normal(size=N))}
    k = np.full(N, 4)
    comb = Combiner("platt").fit(signals, b, y, n_options=k, groups=g)
    assert comb.cv_["param"] == "anchor_penalty"
    assert comb.cv_["anchor"] == "logit_option_prob_norm"
    assert comb.cv_["chosen"] == "inf" and len(comb.cv_["cv_task_auroc"]) == len(ANCHOR_PENALTIES)
    w = comb.weights()
    assert w["logit_option_prob_norm"] > 0
    assert all(w[name] == 0.0 for name in ("logit_option_prob", "logit_margin", "logit_entropy", "probe_logit"))
    # with every item at 4 options, combined ranks exactly as the anchor does
    c = comb.predict(signals, b, n_options=k)
    assert within_task_auroc(c, y, g) == pytest.approx(within_task_auroc(signals["option_prob_norm"], y, g), abs=1e-12)


def test_noise_inputs_cost_the_anchor_nothing():
    signals, _, y, k, g = pool(probe_strength=0.0, seed=1)
    probe = np.random.default_rng(9).normal(size=len(y))  # a probe that knows nothing
    comb = Combiner("platt").fit(signals, probe, y, n_options=k, groups=g)
    assert comb.cv_["anchor"] == "logit_option_prob_norm"
    te_signals, _, te_y, te_k, te_g = pool(n_tasks=3, probe_strength=0.0, seed=6)
    te_probe = np.random.default_rng(10).normal(size=len(te_y))
    c = comb.predict(te_signals, te_probe, n_options=te_k)
    assert within_task_auroc(c, te_y, te_g) > within_task_auroc(te_signals["option_prob_norm"], te_y, te_g) - 0.01


def test_a_probe_that_helps_on_every_task_is_taken_and_beats_the_anchor():
    signals, probe, y, k, g = pool(probe_strength=1.2, seed=2)
    comb = Combiner("platt").fit(signals, probe, y, n_options=k, groups=g)
    assert comb.cv_["chosen"] != "inf"
    assert comb.weights()["probe_logit"] > 0
    te_signals, te_probe, te_y, te_k, te_g = pool(n_tasks=3, probe_strength=1.2, seed=3)
    c = comb.predict(te_signals, te_probe, n_options=te_k)
    assert within_task_auroc(c, te_y, te_g) > within_task_auroc(te_signals["option_prob_norm"], te_y, te_g) + 0.05


def test_anchored_combiner_round_trip_and_serving_path():
    signals, probe, y, k, g = pool(probe_strength=1.0, seed=4)
    comb = Combiner("platt").fit(signals, probe, y, n_options=k, groups=g)
    meta, arrays = comb.to_dict()
    assert meta["anchor"] is True and meta["cv"]["param"] == "anchor_penalty"
    back = Combiner.from_dict(meta, arrays)
    np.testing.assert_allclose(back.predict(signals, probe, n_options=k), comb.predict(signals, probe, n_options=k),
                               atol=1e-12)
    one = back.predict_one({s: float(v[7]) for s, v in signals.items()}, float(probe[7]), n_options=4)
    assert one == pytest.approx(float(comb.predict(signals, probe, n_options=k)[7]), abs=1e-9)


def test_without_groups_or_with_a_fixed_C_the_plain_stacker_is_kept():
    signals, probe, y, k, g = pool(probe_strength=1.0, seed=5)
    plain = Combiner("platt").fit(signals, probe, y, n_options=k)  # one pool, no task labels
    assert plain.cv_["param"] == "C"
    fixed = Combiner("platt", C=1.0).fit(signals, probe, y, n_options=k, groups=g)
    assert fixed.C == 1.0 and fixed.cv_.get("param") != "anchor_penalty"
    off = Combiner("platt", anchor=False).fit(signals, probe, y, n_options=k, groups=g)
    assert off.cv_["param"] == "C"
