"""The shift score (issue #15): shrunk covariance against scikit-learn, Mahalanobis and RMD against
their formulas, the out-of-fold threshold, in- vs out-of-pool on planted data, and the artifact
round trip.  Synthetic hidden states only; no model."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from llmcal.probe.features import ModelInfo, RunFeatures
from llmcal.probe.shift import ShiftScorer, in_vs_out_auroc
from llmcal.signals.density import GaussianDensity, ledoit_wolf, stored_value

D = 24
LAYERS = [2, 4]
POSITIONS = ["last_prompt", "answer_mean"]


def features(tasks: dict[str, int], shift: dict[str, float] | None = None, seed: int = 0) -> RunFeatures:
    """Hidden rows (n, 4, D): each task a Gaussian cloud with its own mean; ``shift`` moves a task away."""
    rng = np.random.default_rng(seed)
    names, rows = [], []
    scale = np.linspace(0.5, 2.0, D)  # anisotropic: Mahalanobis differs from Euclidean
    for t, n in tasks.items():
        centre = np.random.default_rng(zlib.crc32(t.encode())).normal(0.0, 0.7, D)
        centre += (shift or {}).get(t, 0.0) * (scale < 1.0)  # moved along the directions the pool varies least
        rows.append(centre + rng.normal(size=(n, len(POSITIONS) * len(LAYERS), D)) * scale)
        names += [t] * n
    hidden = np.concatenate(rows).astype(np.float32)
    n = len(names)
    model = ModelInfo("tiny", "fp", 6, D, list(LAYERS))
    return RunFeatures(ids=[f"{t}-{i}" for i, t in enumerate(names)], tasks=np.array(names),
                       correct=(rng.random(n) < 0.5).astype(float), signals={}, cheap=np.zeros((n, 0)),
                       hidden=hidden, model=model, option_logprobs=[[0.0, -1.0]] * n,
                       references=np.zeros(n, dtype=np.int64), positions=list(POSITIONS))


def test_ledoit_wolf_equals_scikit_learn():
    from sklearn.covariance import LedoitWolf

    X = np.random.default_rng(1).normal(size=(60, 30)) @ np.random.default_rng(2).normal(size=(30, 30))
    mean, cov, s = ledoit_wolf(X)
    ref = LedoitWolf().fit(X)
    np.testing.assert_allclose(cov, ref.covariance_, rtol=1e-10, atol=1e-12)
    assert s == pytest.approx(ref.shrinkage_, rel=1e-10) and 0 < s < 1
    np.testing.assert_allclose(mean, X.mean(0))
    with pytest.raises(ValueError, match="at least 2 rows"):
        ledoit_wolf(X[:1])


def test_mahalanobis_and_rmd_match_their_formulas():
    rng = np.random.default_rng(3)
    H = rng.normal(size=(200, 8)) * np.arange(1, 9)
    g = np.array(["a", "b"] * 100)
    H[g == "b"] += 3.0
    dens = GaussianDensity.fit(H, g)
    q = rng.normal(size=(5, 8)) * 2
    mu = {c: H[g == c].mean(0) for c in "ab"}
    _, tied, _ = ledoit_wolf(H - np.stack([mu[c] for c in g]))
    P = np.linalg.inv(tied)
    want = np.min([[(x - mu[c]) @ P @ (x - mu[c]) for c in "ab"] for x in q], axis=1) / 8
    np.testing.assert_allclose(dens.mahalanobis(q), want, rtol=1e-8)
    bm, bc, _ = ledoit_wolf(H)
    bg = np.array([(x - bm) @ np.linalg.inv(bc) @ (x - bm) for x in q]) / 8
    np.testing.assert_allclose(dens.relative_mahalanobis(q), want - bg, rtol=1e-7, atol=1e-10)
    # the stored signal values: one-to-one, higher = more typical
    assert stored_value(0.0, "mahalanobis") == 1.0 and stored_value(2.0, "mahalanobis") < stored_value(1.0, "mahalanobis")
    assert stored_value(0.0, "rmd") == 0.5 and stored_value(-1.0, "rmd") > 0.5
    with pytest.raises(ValueError, match="unknown shift method"):
        dens.score(q, "euclid")
    with pytest.raises(ValueError, match="fewer than 2 items"):
        GaussianDensity.fit(H[:3], ["a", "a", "b"])


@pytest.mark.parametrize("method, min_auroc, min_share", [("mahalanobis", 0.97, 0.85)])
def test_the_score_tells_a_new_task_from_the_pool_and_flags_about_five_percent_of_the_pool(method, min_auroc,
                                                                                          min_share):
    pool = features({"a": 300, "b": 300, "c": 300}, seed=4)
    fit = pool.subset(np.arange(0, 900, 2))
    held = pool.subset(np.arange(1, 900, 2))  # new questions of the pool's own tasks
    new = features({"z": 300}, shift={"z": 2.0}, seed=5)  # a task the pool never saw
    sc = ShiftScorer.fit(fit, method=method)
    assert sc.position == "last_prompt" and sc.layers == [2, 4] and sc.n_fit == 450
    # (RMD, which subtracts the background distance, is at chance on this far shift and below it on
    # the real tasks -- docs/benchmarks.md -- so only its formula is tested, above)
    assert in_vs_out_auroc(sc, held, new) > min_auroc
    inside, outside = sc.summary(held), sc.summary(new)
    assert inside["share_unlike"] == pytest.approx(0.05, abs=0.04)  # the out-of-fold 95% quantile
    assert outside["share_unlike"] > min_share
    assert set(inside) >= {"share_unlike", "threshold", "method"} and inside["method"] == method
    assert inside["fitted_on"] == ["a", "b", "c"]
    # one answer at a time, from the row as a run stores it
    flags = [sc.in_distribution(r) for r in new.hidden[:50]]
    assert all(isinstance(f, bool) for f in flags) and np.mean(flags) == pytest.approx(1 - np.mean(
        sc.scores(new.subset(np.arange(50))) > sc.threshold))
    with pytest.raises(ValueError, match="not kept"):
        ShiftScorer.fit(fit, layers=[3])
    one = [sc.score_row(r) for r in held.hidden[:10]]  # the one-answer path equals the batch one
    np.testing.assert_allclose(one, sc.scores(held.subset(np.arange(10))), rtol=1e-4)


def test_the_shift_score_travels_with_the_probe_artifact(tmp_path):
    from llmcal.probe.artifact import ProbeArtifact
    from llmcal.probe.models import LogisticProbe

    rf = features({"a": 120, "b": 120}, seed=6)
    X = rf.hidden[:, 0, :].astype(np.float64)
    y = (X[:, 0] > 0).astype(float)
    probe = LogisticProbe(n_components=None, n_folds=3).fit(X, y)
    art = ProbeArtifact(model=rf.model, layers=[], use_cheap=False, probe=probe, shift=ShiftScorer.fit(rf))
    back = ProbeArtifact.load(art.save(tmp_path / "p"))
    assert back.shift is not None and back.shift.to_json() == art.shift.to_json()
    np.testing.assert_array_equal(back.shift.scores(rf), art.shift.scores(rf))
    assert [back.in_distribution(r) for r in rf.hidden[:20]] == [art.in_distribution(r) for r in rf.hidden[:20]]
    # another row layout is read through its own positions and layers
    swapped = rf.hidden[:5][:, [1, 0, 3, 2]]
    assert [art.in_distribution(r, kept_layers=[4, 2]) for r in swapped] == \
        [art.in_distribution(r) for r in rf.hidden[:5]]
    assert ProbeArtifact(model=rf.model, layers=[], use_cheap=False, probe=probe).in_distribution(rf.hidden[0]) is None
