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
from typing import Any, Mapping

from llmcal.report.view import interval, num, reduction_interval

ORDER = ("internal", "option_prob_norm", "margin", "entropy", "internal+temperature", "internal+platt",
         "internal+isotonic", "internal+beta", "internal+histogram", "external", "combined")

DESCRIPTIONS = {
    "internal": "raw option probability (softmax over the options' log-likelihoods), uncalibrated",
    "option_prob_norm": "raw, per-token log-likelihoods",
    "margin": "raw, top-1 minus top-2 option probability",
    "entropy": "raw, 1 - normalized entropy over the options",
    "internal+temperature": "temperature scaling of the option log-likelihoods, fitted on the calibration part",
    "external": "probe on {states} + cheap input/output features",
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


#: what each hidden-state position is, in the report's words
POSITION_WORDS = {"last_prompt": "the hidden state of the last prompt token",
                  "answer_mean": "the hidden states averaged over the answer's tokens"}
#: the metrics of the methods table whose values lie in [0, 1]
UNIT_RANGE = (0.0, 1.0)


def probe_positions(probe_results: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> list[str]:
    """The token positions the probe read: as set, else the default (the answer mean when the run kept it).

    A run measured with hidden layers keeps both positions and the probe's default is the
    answer mean (:func:`llmcal.probe.protocol.default_positions`); a run without them has
    no external probe.
    """
    settings = probe_results.get("settings") or {}
    if settings.get("positions"):
        return [str(p) for p in settings["positions"]]
    kept = (config or {}).get("hidden_positions")
    if kept:
        return ["answer_mean"] if "answer_mean" in kept else ["last_prompt"]
    return ["answer_mean"] if (config or {}).get("hidden_layers") else ["last_prompt"]


def states_phrase(positions: list[str]) -> str:
    return " and ".join(POSITION_WORDS.get(p, p) for p in positions)  # plain text: the template escapes it


def _same_numbers(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    keys = ("mean_confidence", "overconfidence", "ece", "brier", "auroc")
    return all(a.get(k) == b.get(k) for k in keys) and any(a.get(k) is not None for k in keys)


def _ordered(names) -> list[str]:
    names = list(names)
    first = [n for n in ORDER if n in names]
    return first + [n for n in names if n not in first]


def methods_rows(methods: Mapping[str, Any], states: str) -> list[dict[str, Any]]:
    """The methods table's rows, formatted; methods with identical numbers share a row ("a = b")."""
    shown: list[str] = []
    same: dict[str, list[str]] = {}
    for name in _ordered(methods):
        twin = next((k for k in shown if _same_numbers(methods[k], methods[name])), None)
        if twin is None:
            shown.append(name)
        else:  # an imported run with no per-token scores: option_prob_norm is option_prob
            same.setdefault(twin, []).append(name)
    rows = []
    for name in shown:
        m = methods[name]
        ci = m.get("ci95", {})
        vs = m.get("vs_internal") or {}
        desc = DESCRIPTIONS.get(name) or ("the same calibrator on option_prob alone" if name.startswith("internal+")
                                          else "")
        desc = desc.format(states=states)
        if same.get(name):
            desc += " (identical numbers: this run records no difference between them)"
        rows.append({
            "name": name, "same": same.get(name, []), "bold": name in ("internal", "external", "combined"),
            "description": desc, "mean_confidence": num(m.get("mean_confidence")),
            "overconfidence": num(m.get("overconfidence")),
            "cells": [{"value": num(m.get(k)), "interval": interval(ci.get(k), *UNIT_RANGE, fmt=num)}
                      for k in ("ece", "brier", "auroc")],
            "reductions": [{"value": _pct(vs.get(k)) if vs else "", "interval": reduction_interval(vs.get(f"{k}_ci95"))}
                           for k in ("ece_reduction", "overconfidence_reduction")],
        })
    return rows


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


def render_probe_section(probe_results: dict[str, Any], config: Mapping[str, Any] | None = None) -> str:
    """HTML comparing internal, external and combined confidence (see the module docstring).

    ``config``: the run's configuration, to say which hidden states the probe read when
    its settings left the position to the default.  The in-task part is the
    ``probe.html.j2`` template; the shift matrix and learning curve follow it.
    """
    if not probe_results:
        return ""
    from markupsafe import Markup

    from llmcal.report.html import environment

    methods = probe_results.get("methods") or {}
    states = states_phrase(probe_positions(probe_results, config))
    best, comb = probe_results.get("best_single"), methods.get("combined")
    weights = probe_results.get("combined_weights") or {}
    return environment().get_template("probe.html.j2").render(
        methods=methods_rows(methods, states) if methods else [], states=states,
        split=probe_results.get("split") or {}, settings=probe_results.get("settings") or {},
        best=best if best and comb else None, combined_auroc=num((comb or {}).get("auroc")),
        beats=bool(probe_results.get("combined_beats_best_single_auroc")),
        best_auroc=num(probe_results.get("best_single_auroc")),
        weights=[(k, num(v)) for k, v in weights.items()],
        shift=Markup(_shift_html(probe_results["shift"])) if probe_results.get("shift") else None,
        learning=Markup(_learning_html(probe_results["learning_curve"])) if probe_results.get("learning_curve")
        else None)
