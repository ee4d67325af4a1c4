"""llmcal.metrics: behaviour, edge cases and error messages (reference values: test_metrics_reference.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

import llmcal.metrics as M
from llmcal.metrics.binning import bin_index, uniform_bin_index, uniform_edges

BINARY_METRICS = [
    M.ece, M.ace, M.mce, M.rmsce, M.ece_10_bin, M.ece_1_bin, M.overconfidence, M.overconfidence_error,
    M.brier_score, M.nll, M.auroc, M.auprc, M.aurc, M.risk_coverage_curve, M.accuracy_at_coverage,
    M.selective_acc_at_10, M.selective_cov_acc_area, M.reliability_data, M.summarize, M.accuracy,
    M.mean_confidence,
]


def sample(n=500, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random(n)
    return x, rng.random(n) < x


# --- input validation ---------------------------------------------------------------------


@pytest.mark.parametrize("fn", BINARY_METRICS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad, match", [
    ([0.2, float("nan"), 0.5], r"confidence contains NaN \(first at index 1\)"),
    ([0.2, float("inf"), 0.5], r"confidence contains inf"),
    ([0.2, 1.5, 0.5], r"confidence must be in \[0, 1\]; found 1.5 at index 1"),
    ([-0.1, 0.5, 0.5], r"confidence must be in \[0, 1\]; found -0.1 at index 0"),
])
def test_bad_confidence_is_a_clear_value_error(fn, bad, match):
    with pytest.raises(ValueError, match=match):
        fn(bad, [1, 0, 1])


@pytest.mark.parametrize("fn", BINARY_METRICS, ids=lambda f: f.__name__)
def test_bad_correct_and_lengths_are_clear_value_errors(fn):
    with pytest.raises(ValueError, match=r"correct must be 0/1 or bool; found 2 at index 1"):
        fn([0.2, 0.3, 0.5], [1, 2, 0])
    with pytest.raises(ValueError, match=r"correct must be 0/1 or bool; found 0.5"):
        fn([0.2, 0.3, 0.5], [1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match=r"correct must be 0/1 or bool; found NaN"):
        fn([0.2, 0.3, 0.5], [1.0, float("nan"), 0.0])
    with pytest.raises(ValueError, match=r"correct must be 0/1 or bool; found -1"):
        fn([0.2, 0.3, 0.5], [1, -1, 0])
    if fn not in (M.accuracy, M.mean_confidence):  # these accept a single argument
        with pytest.raises(ValueError, match=r"confidence and correct have different lengths \(3 vs 2\)"):
            fn([0.2, 0.3, 0.5], [1, 0])
    with pytest.raises(ValueError, match=r"confidence must be 1-D"):
        fn([[[0.2, 0.3]]], [1, 0])
    with pytest.raises(ValueError, match=r"confidence is empty"):
        fn([], [])


def test_bad_options_name_themselves():
    x, y = sample(20)
    with pytest.raises(ValueError, match="n_bins"):
        M.ece(x, y, n_bins=0)
    with pytest.raises(ValueError, match="n_bins"):
        M.ece(x, y, n_bins=2.5)
    with pytest.raises(ValueError, match="strategy"):
        M.ece(x, y, strategy="equal")
    with pytest.raises(ValueError, match="norm"):
        M.ece(x, y, norm="l3")
    with pytest.raises(ValueError, match="coverage"):
        M.accuracy_at_coverage(x, y, 0.0)


def test_multiclass_validation():
    p = np.array([[0.7, 0.3], [0.4, 0.6]])
    with pytest.raises(ValueError, match=r"probs rows must sum to 1; row 1"):
        M.toplabel_ece(np.array([[0.7, 0.3], [0.4, 0.4]]), [0, 1])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\); found 2 at index 1"):
        M.toplabel_ece(p, [0, 2])
    with pytest.raises(ValueError, match="probs and labels have different lengths"):
        M.classwise_ece(p, [0, 1, 1])
    with pytest.raises(ValueError, match="probs contains NaN"):
        M.brier_score(np.array([[np.nan, 1.0], [0.5, 0.5]]), [0, 1])


def test_inputs_of_other_types_are_accepted():
    x = [0.1, 0.8, 0.95, 0.3]
    y = [0, 1, 1, 1]
    ref = M.ece(np.array(x), np.array(y, dtype=bool))
    assert M.ece(x, y) == ref
    assert M.ece(np.array(x, dtype=np.float32), np.array(y, dtype=np.int8)) == pytest.approx(ref, abs=1e-7)
    assert M.ece(np.array(x), np.array(y, dtype=float)) == ref
    assert M.ece(np.array(x), np.array(y, dtype=np.uint8)) == ref


# --- binning --------------------------------------------------------------------------------


def test_uniform_bin_index_is_exactly_the_edges_rule():
    rng = np.random.default_rng(3)
    specials = [np.linspace(0, 1, 1001), np.round(rng.random(2000) * 60) / 60, rng.random(5000)]
    for b in (1, 2, 3, 7, 10, 15, 20, 30, 100):
        e = uniform_edges(b)
        near = np.concatenate([e, np.nextafter(e, 2.0), np.nextafter(e, -1.0)])
        x = np.clip(np.concatenate(specials + [near]), 0.0, 1.0)
        idx = bin_index(x, e)
        assert np.array_equal(uniform_bin_index(x, b), idx)
        c = rng.random(len(x)) < 0.5
        s = M.bin_stats(x, c, b)
        assert np.array_equal(s.counts, np.bincount(idx, minlength=b))
        assert np.array_equal(s.sum_correct, np.bincount(idx[c], minlength=b))
        np.testing.assert_allclose(s.sum_confidence, np.bincount(idx, weights=x, minlength=b), rtol=1e-13)


def test_zero_and_one_go_to_first_and_last_bin():
    for b in (1, 5, 15):
        rd = M.reliability_data([0.0, 1.0, 1.0], [0, 1, 1], n_bins=b)
        assert len(rd.counts) == b and len(rd.edges) == b + 1
        assert rd.counts[0] >= 1 and rd.counts[-1] >= 2 and rd.counts.sum() == 3
    assert M.ece([1.0, 1.0], [1, 1]) == 0.0
    assert M.ece([0.0, 0.0], [0, 0]) == 0.0
    assert M.ece([1.0], [0]) == 1.0
    assert M.ece([-0.0, 0.5], [0, 1]) == M.ece([0.0, 0.5], [0, 1])


def test_empty_bins_carry_no_weight():
    x = np.array([0.05, 0.05, 0.95, 0.95])
    y = np.array([0, 0, 1, 1])
    assert M.ece(x, y, n_bins=10) == pytest.approx(0.05)
    assert M.mce(x, y, n_bins=10) == pytest.approx(0.05)
    rd = M.reliability_data(x, y, n_bins=10)
    assert rd.counts.tolist() == [2, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    assert np.isnan(rd.accuracy[1:9]).all() and np.isnan(rd.mean_confidence[1:9]).all()
    d = rd.to_dict()
    assert d["accuracy"][1] is None and d["accuracy"][0] == 0.0 and d["counts"][0] == 2
    json.dumps(d, allow_nan=False)
    back = M.ReliabilityData.from_dict(json.loads(json.dumps(d)))
    assert np.array_equal(back.counts, rd.counts) and np.array_equal(back.edges, rd.edges)
    np.testing.assert_array_equal(back.accuracy, rd.accuracy)


def test_quantile_bins_have_equal_mass_and_survive_ties():
    x = np.linspace(0.01, 0.99, 1000)
    rd = M.reliability_data(x, x > 0.5, n_bins=10, strategy="quantile")
    assert rd.counts.tolist() == [100] * 10
    tied = np.array([1.0] * 80 + [0.5] * 20)
    rd = M.reliability_data(tied, np.arange(100) % 2 == 0, n_bins=10, strategy="quantile")
    assert rd.counts.sum() == 100 and rd.counts[-1] == 80
    assert M.ace(tied, np.arange(100) % 2 == 0) == pytest.approx(0.8 * 0.5)


# --- calibration metrics ----------------------------------------------------------------------


def test_ece_known_values():
    x = [0.9, 0.9, 0.9, 0.9, 0.6, 0.6]
    y = [1, 1, 1, 0, 1, 0]
    # bin [0.8667, 0.9333): conf 0.9, acc 0.75; bin [0.6, 0.6667): conf 0.6, acc 0.5
    assert M.ece(x, y) == pytest.approx(4 / 6 * 0.15 + 2 / 6 * 0.1)
    assert M.mce(x, y) == pytest.approx(0.15)
    assert M.rmsce(x, y) == pytest.approx(math.sqrt(4 / 6 * 0.15**2 + 2 / 6 * 0.1**2))
    assert M.overconfidence(x, y) == pytest.approx(0.8 - 4 / 6)
    assert M.ece_1_bin(x, y) == pytest.approx(0.8 - 4 / 6)
    assert M.ece(x, y, n_bins=1) == pytest.approx(M.ece_1_bin(x, y))
    assert M.overconfidence_error(x, y) == pytest.approx(4 / 6 * 0.9 * 0.15 + 2 / 6 * 0.6 * 0.1)
    assert M.overconfidence_error([0.2, 0.2], [1, 1]) == 0.0  # underconfident: no overconfidence error
    assert M.overconfidence([0.2, 0.2], [1, 1]) == pytest.approx(-0.8)
    assert M.accuracy(y) == pytest.approx(4 / 6) == M.accuracy(x, y)
    assert M.mean_confidence(x) == pytest.approx(0.8)


def test_norms_are_ordered():
    x, y = sample(3000, seed=5)
    x = x**0.5
    assert M.ece(x, y) <= M.rmsce(x, y) <= M.mce(x, y)


def test_toplabel_and_classwise_on_a_tiny_matrix():
    p = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([0, 0, 1])
    # top-label: confidences 0.8 (right), 0.7 (wrong), 0.6 (wrong)
    assert M.toplabel_ece(p, labels) == pytest.approx(M.ece([0.8, 0.7, 0.6], [1, 0, 0]))
    expected = np.mean([M.ece(p[:, 0], labels == 0), M.ece(p[:, 1], labels == 1)])
    assert M.classwise_ece(p, labels) == pytest.approx(expected)
    assert M.brier_score(p, labels) == pytest.approx(np.mean([0.08, 0.98, 0.72]))
    assert M.nll(p, labels) == pytest.approx(-np.mean(np.log([0.8, 0.3, 0.4])))


def test_nll_is_finite_for_confident_mistakes():
    v = M.nll([1.0, 0.0], [0, 1])
    assert math.isfinite(v) and v == pytest.approx(-math.log(np.finfo(float).eps), rel=1e-6)
    assert M.nll([1.0, 0.0], [1, 0]) == pytest.approx(0.0, abs=1e-15)


# --- discrimination and selective prediction --------------------------------------------------------


def test_auroc_one_class_warns_and_returns_nan():
    with pytest.warns(UserWarning, match="AUROC is undefined when every prediction is correct"):
        assert math.isnan(M.auroc([0.2, 0.9], [1, 1]))
    with pytest.warns(UserWarning, match="every prediction is wrong"):
        assert math.isnan(M.auroc([0.2, 0.9], [0, 0]))
    with pytest.warns(UserWarning, match="AUPRC"):
        assert math.isnan(M.auprc([0.2, 0.9], [0, 0]))
    assert M.auprc([0.2, 0.9], [1, 1]) == 1.0
    with pytest.warns(UserWarning):
        s = M.summarize([0.2, 0.9, 0.5], [1, 1, 1])
    assert math.isnan(s["auroc"]) and s["accuracy"] == 1.0


def test_auroc_values():
    assert M.auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert M.auroc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert M.auroc([0.5] * 6, [0, 1, 0, 1, 1, 0]) == 0.5
    assert M.auroc([0.1, 0.5, 0.5, 0.9], [0, 1, 0, 1]) == pytest.approx((1 + 1 + 1 + 0.5) / 4)


def test_risk_coverage_curve_most_confident_first_with_ties_averaged():
    cov, risk = M.risk_coverage_curve([0.1, 0.9, 0.9], [1, 1, 0])
    np.testing.assert_allclose(cov, [1 / 3, 2 / 3, 1.0])
    # the two tied 0.9s: half right in expectation at k=1 and k=2; then the 0.1 (right)
    np.testing.assert_allclose(risk, [0.5, 0.5, 1 / 3])
    cov, risk = M.risk_coverage_curve([0.2, 0.7, 0.9, 0.4], [0, 1, 0, 1])
    np.testing.assert_allclose(risk, [1.0, 0.5, 1 / 3, 0.5])
    assert M.aurc([0.2, 0.7, 0.9, 0.4], [0, 1, 0, 1]) == pytest.approx(np.mean([1.0, 0.5, 1 / 3, 0.5]))
    assert M.aurc([0.9, 0.1], [1, 0]) == pytest.approx(0.25)  # the best order: risk 0, then 1/2


def test_accuracy_at_coverage_and_helm_selective():
    x = np.arange(1, 21) / 21
    y = np.arange(20) >= 10  # the ten most confident are right
    assert M.accuracy_at_coverage(x, y, 0.5) == 1.0
    assert M.accuracy_at_coverage(x, y, 1.0) == 0.5
    assert M.accuracy_at_coverage(x, y, 0.55) == pytest.approx(10 / 11)
    assert M.accuracy_at_coverage(x, y, 0.3) == 1.0  # 0.3 * 20 = 6.000000000000001 -> 6, not 7
    # HELM: accs[int(0.1 * n)] -> the top 3 of 20
    assert M.selective_acc_at_10(x, y) == 1.0
    assert M.selective_acc_at_10([0.9, 0.2, 0.5], [0, 1, 1]) == 0.0  # n < 10: the top one
    assert M.selective_cov_acc_area(x, y) == pytest.approx(1.0 - M.aurc(x, y))


# --- summarize, specs ---------------------------------------------------------------------------


def test_summarize_has_every_spec_key_and_matches_the_functions():
    x, y = sample(700, seed=2)
    s = M.summarize(x, y)
    required = {"n", "accuracy", "mean_confidence", "overconfidence", "overconfidence_error", "ece", "ace", "mce",
                "rmsce", "ece_10_bin", "ece_1_bin", "brier", "nll", "auroc", "auprc", "aurc", "selective_acc@10",
                "selective_cov_acc_area"}
    assert required <= set(s) and set(s) == set(M.METRIC_SPECS)
    assert s["n"] == 700
    for name, fn in M.METRIC_FUNCTIONS.items():
        assert s[name] == pytest.approx(fn(x, y), rel=1e-12, abs=1e-15), name
    assert all(isinstance(v, (int, float)) for v in s.values())
    s20 = M.summarize(x, y, n_bins=20)
    assert s20["ece"] == pytest.approx(M.ece(x, y, n_bins=20))


def test_metric_specs_are_json_and_complete():
    text = json.dumps(M.METRIC_SPECS, allow_nan=False)
    specs = json.loads(text)
    for name, spec in specs.items():
        assert isinstance(spec["higher_is_better"], bool), name
        assert spec["bootstrap"] in ("vectorized", "loop")
    assert specs["ece"]["binning"] == {"n_bins": 15, "strategy": "uniform", "norm": "l1"}
    assert specs["ace"]["binning"]["strategy"] == "quantile"
    assert specs["mce"]["binning"]["norm"] == "max" and specs["rmsce"]["binning"]["norm"] == "l2"
    assert specs["ece_10_bin"]["binning"]["n_bins"] == 10
    assert specs["auroc"]["higher_is_better"] and not specs["ece"]["higher_is_better"]
    assert M.metric_specs(10)["ece"]["binning"]["n_bins"] == 10


# --- bootstrap ---------------------------------------------------------------------------------


def test_bootstrap_is_seeded_and_brackets_the_point():
    x, y = sample(400, seed=1)
    a = M.bootstrap_ci("accuracy", x, y, n_resamples=300, seed=7)
    assert a == M.bootstrap_ci("accuracy", x, y, n_resamples=300, seed=7)
    assert a != M.bootstrap_ci("accuracy", x, y, n_resamples=300, seed=8)
    point, lo, hi = a
    assert point == M.accuracy(y) and lo < point < hi
    assert hi - lo == pytest.approx(2 * 1.96 * math.sqrt(point * (1 - point) / 400), rel=0.2)
    p, lo, hi = M.bootstrap_ci("ece", x, y, n_resamples=300)
    assert p == M.ece(x, y) and 0 <= lo <= hi <= 1


@pytest.mark.parametrize("name", sorted(M.METRIC_SPECS))
def test_bootstrap_vectorized_path_equals_loop_on_the_same_resamples(name):
    rng = np.random.default_rng(11)
    x = np.round(rng.random(300) ** 0.5, 2)  # ties
    x[:20] = 1.0
    y = rng.random(300) < x
    fast = M.bootstrap_distribution(name, x, y, n_resamples=40, seed=3)
    slow = M.bootstrap_distribution(name, x, y, n_resamples=40, seed=3, vectorized=False)
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12)


def test_stratified_resamples_are_n_uniform_draws():
    x, y = sample(500, seed=4)
    counts = np.zeros(500)
    for idx in M.bootstrap_resamples("ece", x, y, n_resamples=400, seed=0):
        assert idx.shape[1] == 500
        counts += np.bincount(idx.ravel(), minlength=500)
    # every prediction drawn about 400 times (Poisson-like spread), none left out systematically
    assert counts.min() > 300 and counts.max() < 520 and counts.sum() == 400 * 500
    strat = M.bootstrap_distribution("ece", x, y, n_resamples=1500, seed=1)
    flat = M.bootstrap_distribution(lambda a, b: M.ece(a, b), x, y, n_resamples=1500, seed=1)
    assert strat.mean() == pytest.approx(flat.mean(), abs=0.003)
    assert strat.std() == pytest.approx(flat.std(), rel=0.12)


def test_bootstrap_callables_nan_and_errors():
    x, y = sample(200, seed=9)
    p, lo, hi = M.bootstrap_ci(lambda a, b: float(np.mean(a)), x, y, n_resamples=100)
    assert lo < p < hi
    with pytest.warns(UserWarning):
        p, lo, hi = M.bootstrap_ci("auroc", [0.2, 0.9, 0.4], [1, 1, 1], n_resamples=20)
    assert math.isnan(p) and math.isnan(lo) and math.isnan(hi)
    with pytest.raises(ValueError, match="unknown name 'eces'"):
        M.bootstrap_ci("eces", x, y)
    with pytest.raises(ValueError, match="alpha"):
        M.bootstrap_ci("ece", x, y, alpha=1.5)
    with pytest.raises(ValueError, match="n_resamples"):
        M.bootstrap_ci("ece", x, y, n_resamples=0)


# --- plot ------------------------------------------------------------------------------------------


def test_importing_metrics_does_not_import_matplotlib():
    code = "import sys, llmcal.metrics, llmcal.calibrators; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plot_reliability_shows_curves_and_counts(tmp_path):
    pytest.importorskip("matplotlib")
    x, y = sample(600, seed=6)
    before = M.reliability_data(x**0.3, y, n_bins=10)
    after = M.reliability_data(x, y, n_bins=10)
    fig = M.plot_reliability(before, title="one")
    ax_rel, ax_cnt = fig.axes
    assert ax_rel.get_title() == "one"
    heights = [p for p in ax_cnt.patches]  # the count histogram (stairs)
    assert heights and ax_cnt.get_ylabel() == "count"
    texts = {t.get_text() for t in ax_cnt.texts}
    assert {str(int(c)) for c in before.counts if c} <= texts  # every count is written on its bin
    fig = M.plot_reliability([before, after], labels=["raw", "calibrated"])
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.startswith("raw (ECE") for t in labels) and any(t.startswith("calibrated") for t in labels)
    fig.savefig(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="labels"):
        M.plot_reliability([before, after], labels=["only one"])


def test_plot_reliability_into_given_axes():
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    out = M.plot_reliability(M.reliability_data(*sample(100)), ax=ax)
    assert out is fig and len(fig.axes) == 2  # the caller's axes plus the twin for counts


def test_metrics_run_warning_free_on_normal_input():
    x, y = sample(300)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        M.summarize(x, y)
        M.bootstrap_ci("auroc", x, y, n_resamples=50)
