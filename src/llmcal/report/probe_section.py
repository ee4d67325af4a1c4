"""The report's section comparing internal, external and combined confidence side by side.

``render_probe_section(results["probe"])`` returns an HTML fragment (no
``<html>``/``<body>``; the page's CSS applies).  Input: the dict ``llmcal
combine`` stores under ``results.json["probe"]`` (``methods``, ``split``,
``best_single``, ``combined_weights``, ``per_task``), optionally with a
``shift`` matrix and a ``learning_curve`` from ``llmcal probe --shift``
(``probe_shift.json``'s keys of the same names).
"""

from __future__ import annotations

import html
from typing import Any

ORDER = ("internal", "option_prob_norm", "margin", "entropy", "internal+temperature", "internal+platt",
         "internal+isotonic", "internal+beta", "internal+histogram", "external", "combined")

DESCRIPTIONS = {
    "internal": "raw option probability (softmax over the options' log-likelihoods), uncalibrated",
    "option_prob_norm": "raw, per-token log-likelihoods",
    "margin": "raw, top-1 minus top-2 option probability",
    "entropy": "raw, 1 - normalized entropy over the options",
    "internal+temperature": "temperature scaling of the option log-likelihoods, fitted on the calibration part",
    "external": "probe on the hidden state of the last prompt token + cheap input/output features",
    "combined": "logistic stack of the internal signals and the probe, then a calibrator",
}


def _f(x: Any, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "n/a"
    if isinstance(x, (int, float)):
        return f"{x:.{nd}f}"
    return html.escape(str(x))


def _pct(x: Any) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:+.0f}%"


def _ci(ci: Any, fmt=_f) -> str:
    if not ci or ci[0] is None:
        return ""
    return f"<br><small>[{fmt(ci[0])}, {fmt(ci[1])}]</small>"


def _ordered(names) -> list[str]:
    names = list(names)
    first = [n for n in ORDER if n in names]
    return first + [n for n in names if n not in first]


def _methods_table(methods: dict[str, Any]) -> str:
    head = ("<tr><th class='l'>confidence</th><th>mean confidence</th><th>overconfidence</th><th>ECE</th>"
            "<th>Brier</th><th>AUROC</th><th>ECE vs internal</th><th>|overconfidence| vs internal</th></tr>")
    rows = []
    for name in _ordered(methods):
        m = methods[name]
        ci = m.get("ci95", {})
        vs = m.get("vs_internal") or {}
        desc = DESCRIPTIONS.get(name) or ("the same calibrator on option_prob alone" if name.startswith("internal+")
                                          else "")
        label = f"<b>{html.escape(name)}</b>" if name in ("internal", "external", "combined") else html.escape(name)
        rows.append(
            f"<tr><td class='l'>{label}<br><small class='muted'>{html.escape(desc)}</small></td>"
            f"<td>{_f(m.get('mean_confidence'))}</td><td>{_f(m.get('overconfidence'))}</td>"
            f"<td>{_f(m.get('ece'))}{_ci(ci.get('ece'))}</td><td>{_f(m.get('brier'))}{_ci(ci.get('brier'))}</td>"
            f"<td>{_f(m.get('auroc'))}{_ci(ci.get('auroc'))}</td>"
            f"<td>{_pct(vs.get('ece_reduction')) if vs else ''}{_ci(vs.get('ece_reduction_ci95'), _pct)}</td>"
            f"<td>{_pct(vs.get('overconfidence_reduction')) if vs else ''}"
            f"{_ci(vs.get('overconfidence_reduction_ci95'), _pct)}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _shift_html(shift: dict[str, Any]) -> str:
    tasks = shift.get("tasks", [])
    cells = shift.get("cells", {})
    parts = ["<h3>Across tasks (fitted on the row's calibration part, tested on the column's test part)</h3>",
             "<p class='muted'>Each cell: AUROC of <b>combined</b> (best single signal below), and ECE of the raw "
             "internal option probability &rarr; combined with the relative reduction. The diagonal is "
             "in-task; 'all but X' rows fit on every other task.</p>",
             "<table><tr><th class='l'>fitted on \\ tested on</th>"
             + "".join(f"<th>{html.escape(t)}</th>" for t in tasks) + "</tr>"]
    for src, row in cells.items():
        tds = []
        for t in tasks:
            c = row.get(t)
            if not c:
                tds.append("<td></td>")
                continue
            comb = c["methods"].get("combined", {})
            internal = c["methods"].get("internal", {})
            red = (comb.get("vs_internal") or {}).get("ece_reduction")
            ok = c.get("combined_beats_best_single_auroc") and red is not None and red >= 0.4
            style = "" if ok else " style='background:#fff1e6'"
            tds.append(f"<td{style}>AUROC {_f(comb.get('auroc'))}<br><small>best single "
                       f"{_f(c.get('best_single_auroc'))} ({html.escape(str(c.get('best_single')))}); chosen on "
                       f"calibration {_f(c.get('source_best_single_auroc'))}</small><br>"
                       f"ECE {_f(internal.get('ece'))}&rarr;{_f(comb.get('ece'))} ({_pct(red)})</td>")
        parts.append(f"<tr><th class='l'>{html.escape(src)}</th>{''.join(tds)}</tr>")
    parts.append("</table><p class='muted'>Shaded: combined misses a target (AUROC not above the best single "
                 "signal, or ECE reduced by less than 40%).</p>")
    for group, g in (shift.get("summary") or {}).items():
        beats = html.escape(str(g.get("combined_beats_best_single_auroc")))
        beats_src = html.escape(str(g.get("combined_beats_source_best_single_auroc")))
        parts.append(f"<h4>{html.escape(group.replace('_', ' '))}: mean over {g.get('n_cells')} cells "
                     f"(combined above the best single AUROC of the test part in {beats}, above the single "
                     f"signal best on the calibration part in {beats_src})"
                     "</h4><table><tr><th class='l'>confidence</th><th>AUROC</th><th>ECE</th><th>Brier</th>"
                     "<th>overconfidence</th><th>ECE vs internal</th></tr>")
        for name in _ordered(g.get("mean", {})):
            m = g["mean"][name]
            r = (g.get("mean_reduction_vs_internal") or {}).get(name) or {}
            parts.append(f"<tr><td class='l'>{html.escape(name)}</td><td>{_f(m.get('auroc'))}</td>"
                         f"<td>{_f(m.get('ece'))}</td><td>{_f(m.get('brier'))}</td>"
                         f"<td>{_f(m.get('overconfidence'))}</td>"
                         f"<td>{_pct(r.get('ece_reduction')) if r else ''}</td></tr>")
        parts.append("</table>")
        fails = [f for f in g.get("cells_failing") or [] if "ECE" in f.get("why", "")]
        if fails:
            parts.append("<p>ECE reduced by less than 40% in these cells (accuracy of the task fitted on "
                         "&rarr; task tested on: the combined confidence carries the first task's base rate):</p>"
                         "<ul>" + "".join(
                             f"<li>{html.escape(f['cell'])}: ECE {_f(f['internal_ece'])} &rarr; "
                             f"{_f(f['combined_ece'])} (accuracy {_f(f['source_accuracy'])} &rarr; "
                             f"{_f(f['target_accuracy'])})</li>" for f in fails) + "</ul>")
    return "".join(parts)


def _learning_html(lc: dict[str, Any]) -> str:
    parts = ["<h3>Learning curve: metrics against the number of calibration items</h3>"]
    for setting, label in (("in_task", "in-task (pooled tasks)"),
                           ("leave_one_task_out", "leave-one-task-out (mean over held-out tasks)")):
        curve = lc.get(setting)
        if not curve:
            continue
        methods = _ordered(dict.fromkeys(m for row in curve.values() for m in row))
        parts.append(f"<h4>{label}</h4><table><tr><th>n</th>"
                     + "".join(f"<th>{html.escape(m)}<br>AUROC</th>" for m in methods)
                     + "".join(f"<th>{html.escape(m)}<br>ECE</th>" for m in methods) + "</tr>")
        for n, row in curve.items():
            def cell(m: str, k: str) -> str:
                v = row.get(m, {}).get(k)
                if isinstance(v, dict):
                    return _f(v.get("mean")) + (f"<br><small>&plusmn;{_f(v.get('sd'))}</small>"
                                                if (v.get("sd") or 0) >= 5e-4 else "")
                return _f(v)
            parts.append(f"<tr><td>{html.escape(str(n))}</td>"
                         + "".join(f"<td>{cell(m, 'auroc')}</td>" for m in methods)
                         + "".join(f"<td>{cell(m, 'ece')}</td>" for m in methods) + "</tr>")
        parts.append("</table>")
    return "".join(parts)


def render_probe_section(probe_results: dict[str, Any]) -> str:
    """HTML comparing internal, external and combined confidence (see the module docstring)."""
    if not probe_results:
        return ""
    e = html.escape
    parts = ["<h2>Internal, external and combined confidence</h2>"]
    split = probe_results.get("split") or {}
    settings = probe_results.get("settings") or {}
    methods = probe_results.get("methods") or {}
    if methods:
        parts.append(
            "<p class='muted'>The <b>internal</b> signal is the model's own option probability. The <b>external</b> "
            "probe reads the hidden state of the last prompt token (captured in the same forward pass that "
            "scored the options; no extra model call) together with cheap input/output features, and predicts "
            "whether the answer is right (Kadavath et al. 2022; Azaria &amp; Mitchell 2023; Liu et al. 2024). "
            "<b>combined</b> stacks both with a logistic regression and calibrates the result. Everything is "
            f"fitted on the calibration part ({e(str(split.get('n_cal', '?')))} items) and measured on the "
            f"test part ({e(str(split.get('n_test', '?')))} items); 95% bootstrap intervals below the values; "
            f"probe: {e(str(settings.get('probe', 'logistic')))}, calibrator "
            f"{e(str(settings.get('calibrator', 'platt')))}.</p>")
        parts.append(_methods_table(methods))
        best = probe_results.get("best_single")
        comb = methods.get("combined")
        if best and comb:
            verdict = "higher than" if probe_results.get("combined_beats_best_single_auroc") else "not above"
            parts.append(f"<p>AUROC of combined {_f(comb.get('auroc'))} is {verdict} the best single signal "
                         f"({e(str(best))}, {_f(probe_results.get('best_single_auroc'))}).</p>")
        w = probe_results.get("combined_weights")
        if w:
            parts.append("<p class='muted'>Stacker weights (per unit of each input's logit): "
                         + ", ".join(f"{e(k)} {_f(v)}" for k, v in w.items()) + ".</p>")
    if probe_results.get("shift"):
        parts.append(_shift_html(probe_results["shift"]))
    if probe_results.get("learning_curve"):
        parts.append(_learning_html(probe_results["learning_curve"]))
    return "\n".join(parts)
