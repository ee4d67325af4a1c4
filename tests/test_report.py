"""report.html: what it says (view), how it is laid out (Jinja2 templates), and how it looks in a real browser.

Runs are tiny synthetic ones evaluated by the real pipeline (``evaluate``), so every
section sees the results layout a run writes.  The browser tests need Debian's chromium
and chromium-driver and selenium; they skip, saying so, where one is missing.
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest

from llmcal.core.sample import Sample
from llmcal.pipeline.evaluate import evaluate
from llmcal.report import view
from llmcal.signals.mc import mc_signals

pytest.importorskip("jinja2")
pytest.importorskip("matplotlib")

VIEWPORT = 1280


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def mc_samples(n: int, seed: int = 0, subjects=("algebra", "anatomy", "astronomy")) -> list[Sample]:
    """Overconfident 4-option answers with MMLU-like subjects in ``meta``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        logprobs = -np.abs(rng.normal(size=4) * 3.0) - 1.0
        ntok = rng.integers(1, 5, size=4)
        pred, sig = mc_signals(logprobs, ntok)
        right = rng.random() < max(0.05, sig["option_prob"] - 0.2)  # less often right than it says
        ref = pred if right else (pred + 1 + int(rng.integers(0, 3))) % 4
        out.append(Sample.from_dict({
            "id": f"mmlu-{i}", "task": "mmlu", "question": f"Question {i} about something rather long " * 2,
            "choices": ["a", "b", "c", "d"], "reference": int(ref), "reference_text": "abcd"[ref],
            "prediction": int(pred), "prediction_text": "abcd"[pred], "correct": bool(pred == ref),
            "prediction_norm": int(pred), "correct_norm": bool(pred == ref),
            "option_logprobs": [float(x) for x in logprobs], "option_ntokens": [int(x) for x in ntok],
            "option_nchars": [int(x) * 4 for x in ntok], "option_is_greedy": [False] * 4, "signals": sig,
            "meta": {"subject": subjects[i % len(subjects)]}}))
    return out


OPEN_SIGNALS = ("mean_token_prob", "seq_prob", "verbalized", "agreement")


def open_samples(n: int, seed: int = 1) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        z = rng.normal()
        right = bool(rng.random() < _sigmoid(1.5 * z))
        sig = {name: float(np.clip(_sigmoid(z + rng.normal() * 0.7 + 1.0), 0.01, 0.99)) for name in OPEN_SIGNALS}
        out.append(Sample.from_dict({
            "id": f"nq-{i}", "task": "nq_open", "kind": "open", "question": f"who wrote book {i}?",
            "answers": [f"author {i}"], "grader": "contains", "prediction_text": f"author {i if right else i + 1}",
            "correct": right, "finish_reason": "stop", "n_tokens": 3, "signals": sig, "missing": [],
            "meta": {}, "cost": {"greedy": {"seconds": 0.1, "forward_passes": 0, "gen_tokens": 0},
                                 "verbalized": {"seconds": 0.1, "forward_passes": 0, "gen_tokens": 8},
                                 "agreement": {"seconds": 0.3, "forward_passes": 0, "gen_tokens": 24, "samples": 3},
                                 "ptrue": {"seconds": 0.05, "forward_passes": 1, "gen_tokens": 0}}}))
    return out


@functools.lru_cache(maxsize=None)
def _evaluated(kind: str, n: int) -> str:
    samples = mc_samples(n) if kind == "mc" else open_samples(n)
    results, _ = evaluate(samples, n_bootstrap=50)
    results["versions"] = {"llmcal": "test"}
    return json.dumps(results)


def mc_results(n: int = 120) -> dict:
    """A fresh copy (tests edit it) of an evaluated synthetic multiple-choice run."""
    return json.loads(_evaluated("mc", n))


def open_results(n: int = 60) -> dict:
    return json.loads(_evaluated("open", n))


MC_CONFIG = {"name": "synthetic-mc", "model_desc": "tiny synthetic", "tasks": ["mmlu"], "style": "mmlu",
             "dtype": "float32", "chat": False}
OPEN_CONFIG = {"name": "synthetic-open", "model_desc": "tiny synthetic", "tasks": ["nq_open"], "dtype": "float32",
               "chat": True}


# ------------------------------------------------------------------ what the report says


def test_interval_is_clipped_to_the_metric_range_or_says_too_few_items():
    assert view.interval([0.153, 0.249], 0.0, 1.0) == "0.153 – 0.249"
    assert view.interval([-0.05, 0.2], 0.0, 1.0) == "0.000 – 0.200"  # a bootstrap tail below 0 is clipped
    assert view.interval([0.02, 0.97], 0.0, 1.0) == "too few items"  # covers nearly all of [0, 1]
    assert view.interval([None, None], 0.0, 1.0) == "" and view.interval(None) == ""
    assert view.interval([0.5, 3.0], 0.0, None) == "0.500 – 3.000"  # NLL: no upper bound
    # the probe section's relative reductions: never "[-3239%, +98%]"
    assert view.reduction_interval([-32.39, 0.98]) == "too few items"
    assert view.reduction_interval([0.41, 0.93]) == "+41% – +93%"


def test_cost_rows_count_the_generations_of_verbalized_and_agreement():
    rows = {r["family"]: r for r in view.cost_rows(open_results(20))}
    assert rows["verbalized"]["generations"] == "1" and rows["verbalized"]["extra_calls"] == "1"
    assert rows["agreement"]["generations"] == "3" and rows["agreement"]["extra_calls"] == "3"
    assert rows["ptrue"]["scoring"] == "1" and rows["ptrue"]["generations"] == "0"
    assert rows["greedy"]["extra_calls"] == "the answer itself"


def test_levels_and_per_subtask_are_in_results_and_add_up():
    res = mc_results()
    lv = res["levels"]
    assert lv["thresholds"] == {"high": 0.9, "abstain": 0.75} and lv["confidence"] == "temperature"
    for k in ("raw", "calibrated"):
        assert sum(lv[k][level]["n"] for level in ("high", "medium", "low")) == res["split"]["n_test"]
        assert math.isclose(sum(lv[k][level]["share"] for level in ("high", "medium", "low")), 1.0)
    assert lv["raw"]["high"]["label"] == "very sure" and lv["raw"]["low"]["label"] == "can't answer safely"
    subs = res["per_subtask"]["mmlu"]
    assert set(subs) == {"algebra", "anatomy", "astronomy"}
    assert sum(s["n"] for s in subs.values()) == 120
    acc = sum(s["accuracy"] * s["n"] for s in subs.values()) / 120
    assert math.isclose(acc, res["per_task"]["mmlu"]["accuracy"])


def test_headline_says_before_after_and_the_verdict():
    res = mc_results()
    h = view.headline(res)
    ece_b, ece_a = res["signals_test"]["option_prob"]["ece"], res["calibrated_test"]["temperature"]["ece"]
    assert ece_a < ece_b  # the synthetic model is overconfident, temperature helps
    assert h["before"] == f"{100 * ece_b:.1f}%" and h["after"] == f"{100 * ece_a:.1f}%"
    assert h["how"] == f"temperature scaling, T = {res['calibrated_test']['temperature']['params']['temperature_']:.2f}"
    assert h["change"] == f"{100 * (ece_b - ece_a) / ece_b:.0f}% lower"
    assert h["colour"] == view._meter(ece_a) and h["colour_before"] == view._meter(ece_b)
    worse = json.loads(json.dumps(res))
    worse["calibrated_test"]["temperature"]["ece"] = ece_b + 0.1
    assert view.headline(worse)["verdict"].startswith("temperature made it worse")


def test_report_renders_both_kinds_with_every_section():
    from llmcal.report.html import render_html

    mc = mc_results()
    mc["transfer"] = {"arc_easy": {"ece": 0.12, "auroc": 0.7}, "note": "fitted on mmlu"}
    mc["shift"] = {"share_unlike": 0.25, "threshold": 0.8}
    page = render_html(mc, MC_CONFIG)
    for anchor in ("id=\"headline\"", "very sure", "can't answer safely", "Checklist", "reliability diagram",
                   "Per subtask", "astronomy", "Transfer to other tasks", "25% of the test questions",
                   "fitted on mmlu"):
        assert anchor in page, anchor
    assert "[-" not in page  # no raw bracketed intervals
    op = render_html(open_results(), OPEN_CONFIG)
    for anchor in ("Free-form answers", "id=\"headline\"", "Checklist", "reliability diagram", "Cost per item",
                   "extra generations", "very sure"):
        assert anchor in op, anchor
    # escaped, not injected
    mc["overconfident_wrong"][0]["question"] = "<script>alert(1)</script>"
    assert "<script>alert" not in render_html(mc, MC_CONFIG)


def test_reliability_bins_are_merged_to_a_minimum_count():
    from llmcal import metrics as M
    from llmcal.metrics.plot import merge_sparse_bins

    rng = np.random.default_rng(3)
    x = rng.random(50)
    y = (rng.random(50) < x).astype(float)
    d = M.reliability_data(x, y, n_bins=15)
    m = merge_sparse_bins(d, 10)
    assert m.n == 50 and all(c >= 10 for c in m.counts)
    assert m.edges[0] == 0.0 and m.edges[-1] == 1.0
    # a merged bin is the bin its items would have formed
    lo, hi = m.edges[0], m.edges[1]
    inside = (x >= lo) & (x < hi)
    assert math.isclose(m.accuracy[0], y[inside].mean()) and math.isclose(m.mean_confidence[0], x[inside].mean())
    assert merge_sparse_bins(d, 1000).n_bins == 1
    fig = M.plot_reliability(d, min_count=10)
    legend = fig.axes[0].get_legend()
    assert f"ECE {d.ece():.3f}" in " ".join(t.get_text() for t in legend.get_texts())  # the run's own ECE


_SAME = {"mean_confidence": 0.7, "overconfidence": 0.1, "ece": 0.1, "brier": 0.2, "auroc": 0.6,
         "ci95": {"ece": [0.05, 0.15]}}
#: results["probe"] of an imported-like run: two methods with identical numbers, a useless reduction interval
PROBE = {"methods": {"internal": dict(_SAME), "option_prob_norm": dict(_SAME),
                     "combined": {**_SAME, "auroc": 0.7, "vs_internal": {"ece_reduction": 0.3,
                                                                        "ece_reduction_ci95": [-32.4, 0.98]}}},
         "split": {"n_cal": 10, "n_test": 10}, "settings": {"positions": None}}


def test_probe_section_merges_identical_rows_and_names_the_states_it_reads():
    from llmcal.report.probe_section import render_probe_section

    probe = json.loads(json.dumps(PROBE))
    page = render_probe_section(probe, {"hidden_layers": ["-1"]})
    assert "internal</b> = option_prob_norm" in page and page.count("<tr>") == 3  # header + 2 rows
    assert "averaged over the answer" in page and "last prompt token" not in page
    assert "too few items" in page and "-3239%" not in page
    assert "last prompt token" in render_probe_section({**probe, "settings": {"positions": ["last_prompt"]}})


# ------------------------------------------------------------------ in a real browser


@pytest.fixture(scope="module")
def browser():
    from served import headless_chrome  # tests/ is on sys.path

    drv = headless_chrome(VIEWPORT, 900, "--hide-scrollbars")
    yield drv
    drv.quit()


WIDTHS_JS = """
const vw = document.documentElement.clientWidth;
const tables = Array.from(document.querySelectorAll('table')).filter(t => t.offsetParent !== null);
return {vw: vw, scroll: document.documentElement.scrollWidth,
        tables: tables.map(t => [t.closest('section') ? t.closest('section').id : '', t.getBoundingClientRect().right])};
"""


@pytest.mark.parametrize("kind", ["mc", "open"])
def test_report_fits_1280px_in_chromium(browser, tmp_path, kind):
    from llmcal.report.html import render_html

    results, config = (mc_results(), MC_CONFIG) if kind == "mc" else (open_results(), OPEN_CONFIG)
    if kind == "mc":
        results["probe"] = json.loads(json.dumps(PROBE))
        results["transfer"] = {t: {"ece": 0.1, "auroc": 0.7, "accuracy": 0.5} for t in ("arc_easy", "sciq", "piqa")}
    results["overconfident_wrong"][0]["prediction"] = "a very long answer " * 40  # long text must wrap
    page = tmp_path / f"report_{kind}.html"
    page.write_text(render_html(results, config))
    browser.set_window_size(VIEWPORT, 900)
    browser.get(page.as_uri())
    browser.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")
    got = browser.execute_script(WIDTHS_JS)
    assert got["vw"] <= VIEWPORT and got["tables"], got
    too_wide = [(sec, right) for sec, right in got["tables"] if right > got["vw"]]
    assert not too_wide, f"tables wider than the {got['vw']} px viewport: {too_wide}"
    assert got["scroll"] <= got["vw"], f"the page scrolls sideways: {got['scroll']} > {got['vw']}"
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(VIEWPORT, min(height + 100, 8000))
    shot = tmp_path / f"report_{kind}.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


# ------------------------------------------------------------------ the terminal


def test_terminal_colours_only_the_verdict(monkeypatch):
    import re

    from llmcal.report import terminal

    con = terminal.console(record=True, force_terminal=True, color_system="standard", width=140)
    monkeypatch.setattr(terminal, "console", lambda: con)
    res = mc_results()
    terminal.print_summary(res, "runs/[x]")
    ansi = con.export_text(styles=True, clear=False)
    coloured = [t for t in re.findall(r"\x1b\[[0-9;]*3[1-7]m([^\x1b]+)", ansi) if t.strip()]
    verdict = view.headline(res)["verdict"]
    assert coloured == [f"\u25cf {verdict}"], coloured  # one coloured piece: the verdict, no cyan numbers
    plain = con.export_text()
    assert "runs/[x]" in plain and f"ECE {view.headline(res)['before']} ->" in plain


def test_identical_confidences_share_one_row():
    res = mc_results()
    res["signals_test"]["option_prob_norm"] = dict(res["signals_test"]["option_prob"])  # as an lm-eval import has
    names = [r["name"] for r in view.metric_rows(res) if r["group"] == "raw"]
    assert "option_prob = option_prob_norm" in names and "option_prob_norm" not in names
    assert len(names) == len(res["signals_test"]) - 1
