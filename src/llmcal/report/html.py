"""A self-contained ``report.html``: plots embedded as base64 PNG, no network needed.

One report for both kinds of run (both write one results layout). Sections: the
checklist, the metrics table (raw signals and calibrated, with 95% bootstrap
intervals), reliability diagrams before/after with bin counts, the risk-coverage
curve, the confidence filter, per-task numbers, the most overconfident wrong answers,
and the run's configuration; a free-form run adds every signal raw against
recalibrated, the served signal, and what each signal family cost per item.
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

import numpy as np

from llmcal.report.checklist import checklist

TABLE_METRICS = ("accuracy", "mean_confidence", "overconfidence", "ece", "ace", "mce", "ece_10_bin",
                 "brier", "nll", "auroc", "aurc", "selective_acc@10", "selective_cov_acc_area")


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _reliability_png(results: dict[str, Any]) -> str | None:
    from llmcal.metrics import ReliabilityData, plot_reliability

    rel = results.get("reliability", {})
    if not rel:
        return None
    datas, labels = [], []
    for label, d in rel.items():
        datas.append(ReliabilityData(
            edges=np.asarray(d["edges"], dtype=float),
            counts=np.asarray(d["counts"], dtype=float),
            mean_confidence=np.array([np.nan if v is None else v for v in d["mean_confidence"]], dtype=float),
            accuracy=np.array([np.nan if v is None else v for v in d["accuracy"]], dtype=float),
        ))
        labels.append("before (raw)" if label == "raw" else f"after ({label})")
    fig = plot_reliability(datas, labels=labels, title="Reliability: accuracy against confidence")
    return _png(fig)


def _risk_coverage_png(results: dict[str, Any]) -> str | None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rc = results.get("risk_coverage", {})
    if not rc:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, d in rc.items():
        ax.plot(d["coverage"], d["risk"], label="raw" if label == "raw" else label)
    ax.set_xlabel("coverage (fraction answered, most confident first)")
    ax.set_ylabel("risk (error rate among answered)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Risk-coverage")
    return _png(fig)


def _fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.4f}"
    return html.escape(str(x))


def _metrics_table(results: dict[str, Any]) -> str:
    rows = []
    head = "".join(f"<th>{html.escape(m)}</th>" for m in TABLE_METRICS)
    groups = [(f"signal: {k}", v) for k, v in results["signals_test"].items()]
    groups += [(f"calibrated: {k}", v) for k, v in results["calibrated_test"].items()]
    for label, vals in groups:
        cells = []
        for m in TABLE_METRICS:
            v = vals.get(m)
            ci = vals.get("ci95", {}).get(m)
            txt = _fmt(v)
            if ci and ci[0] is not None:
                txt += f"<br><small>[{ci[0]:.3f}, {ci[1]:.3f}]</small>"
            cells.append(f"<td>{txt}</td>")
        rows.append(f"<tr><th>{html.escape(label)}</th>{''.join(cells)}</tr>")
    return f"<div class='scroll'><table><tr><th></th>{head}</tr>{''.join(rows)}</table></div>"


def page_head(config: dict[str, Any]) -> str:
    """The document head and style every llmcal report page shares."""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>llmcal report: {html.escape(str(config.get('name', '')))}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right;vertical-align:top}th{background:#f4f4f4}td.l,th.l{text-align:left}"
        ".scroll{overflow-x:auto}dt{font-weight:bold;margin-top:0.8em}.muted{color:#666}img{max-width:100%}"
        "</style></head><body>"
    )


def model_and_tasks(config: dict[str, Any]) -> str:
    """The report's first line: which model, on which tasks."""
    e = html.escape
    return (f"Model <b>{e(str(config.get('model_desc', config.get('model'))))}</b> &middot; tasks "
            f"<b>{e(', '.join(config.get('tasks', [])))}</b>")


def _open_sections(results: dict[str, Any]) -> list[str]:
    """A free-form run's extra sections: each signal raw and recalibrated, the served signal, the costs."""
    e = html.escape
    parts = [
        "<h2>Every signal, raw and recalibrated (test part)</h2><p class='muted'>Raw: the signal as the model "
        "gives it; recalibrated: fitted on the calibration part. Missing: items where the signal could not be "
        "read (an unparseable verbalized reply), left out of that signal's metrics.</p>",
        "<table><tr><th class='l'>signal</th><th>AUROC</th><th>ECE raw</th><th>ECE recalibrated</th>"
        "<th>Brier recalibrated</th><th>missing</th></tr>",
    ]
    for name, sig in results.get("signals", {}).items():
        raw, cal = sig.get("raw", {}), sig.get("calibrated", {})
        parts.append(f"<tr><td class='l'>{e(name)}</td><td>{_fmt(raw.get('auroc'))}</td><td>{_fmt(raw.get('ece'))}</td>"
                     f"<td>{_fmt(cal.get('ece'))}</td><td>{_fmt(cal.get('brier'))}</td>"
                     f"<td>{sig.get('n_missing', 0)}</td></tr>")
    parts.append("</table>")
    if results.get("serving"):
        sv = results["serving"]
        parts.append(f"<p>Served confidence: <b>{e(str(sv.get('signal')))}</b> recalibrated with "
                     f"{e(str(sv.get('calibrator')))}.</p>")
    parts.append("<h2>Cost per item</h2><table><tr><th class='l'>signal family</th><th>seconds</th>"
                 "<th>extra forward passes</th><th>extra generated tokens</th></tr>")
    for fam, c in results.get("cost", {}).items():
        parts.append(f"<tr><td class='l'>{e(fam)}</td><td>{_fmt(c.get('seconds'))}</td>"
                     f"<td>{_fmt(c.get('forward_passes'))}</td><td>{_fmt(c.get('gen_tokens'))}</td></tr>")
    parts.append("</table>")
    return parts


def render_html(results: dict[str, Any], config: dict[str, Any]) -> str:
    e = html.escape
    is_open = results.get("kind") == "open"
    how = ("free-form answers" + (" (chat template)" if config.get("chat") else " (plain prompt)") if is_open else
           f"prompt style {e(str(config.get('style')))}" + (" (chat template)" if config.get("chat") else ""))
    parts = [
        page_head(config),
        "<h1>" + ("Free-form answers: when" if is_open else "When") + " the model says it is sure, is it right?</h1>",
        f"<p class='muted'>{model_and_tasks(config)} &middot; {how} &middot; dtype {e(str(config.get('dtype')))} &middot; "
        f"{results['overall']['n']} items ({results['split']['n_cal']} calibration / "
        f"{results['split']['n_test']} test, seed {results['split']['seed']}) &middot; llmcal "
        f"{e(str(results.get('versions', {}).get('llmcal', '')))}</p>",
        "<h2>Checklist</h2><dl>",
    ]
    for q, a in checklist(results):
        parts.append(f"<dt>{e(q)}</dt><dd>{e(a)}</dd>")
    parts.append("</dl>")
    parts.append("<h2>Metrics on the test part</h2><p class='muted'>95% bootstrap intervals below the values. "
                 "ECE: 15 equal-width bins, L1; ACE: 15 equal-mass bins; MCE: max gap; ece_10_bin: HELM's "
                 "10 equal-mass bins.</p>")
    parts.append(_metrics_table(results))
    if is_open:
        parts.extend(_open_sections(results))
    if results.get("probe"):
        from llmcal.report.probe_section import render_probe_section

        parts.append(render_probe_section(results["probe"]))
    rel = _reliability_png(results)
    rc = _risk_coverage_png(results)
    parts.append("<h2>Reliability and risk-coverage</h2><div>")
    if rel:
        parts.append(f"<img alt='reliability diagram' src='data:image/png;base64,{rel}'>")
    if rc:
        parts.append(f"<img alt='risk-coverage curve' src='data:image/png;base64,{rc}'>")
    parts.append("</div>")
    parts.append("<h2>Confidence filter</h2><table><tr><th class='l'>confidence</th><th>threshold</th>"
                 "<th>coverage</th><th>answered</th><th>accuracy answered</th><th>accuracy all</th></tr>")
    for label, f in results["filter"].items():
        parts.append(f"<tr><td class='l'>{e(label)}</td><td>{f['threshold']:.2f}</td><td>{_fmt(f['coverage'])}</td>"
                     f"<td>{f['answered']}</td><td>{_fmt(f['accuracy_answered'])}</td><td>{_fmt(f['accuracy_all'])}</td></tr>")
    parts.append("</table>")
    second = ("grader", "grader") if is_open else ("accuracy (length-normalized)", "accuracy_norm")
    parts.append("<h2>Per task</h2><table><tr><th class='l'>task</th><th>n</th><th>accuracy</th>"
                 f"<th>{second[0]}</th><th>mean confidence</th><th>ECE</th></tr>")
    for task, t in results["per_task"].items():
        parts.append(f"<tr><td class='l'>{e(task)}</td><td>{t['n']}</td><td>{_fmt(t.get('accuracy'))}</td>"
                     f"<td>{_fmt(t.get(second[1]))}</td><td>{_fmt(t.get('mean_confidence'))}</td>"
                     f"<td>{_fmt(t.get('ece'))}</td></tr>")
    parts.append("</table>")
    parts.append("<h2>Most overconfident wrong answers (test part)</h2><table><tr><th class='l'>question</th>"
                 "<th class='l'>answered</th><th class='l'>correct</th><th>raw</th><th>calibrated</th></tr>")
    for w in results.get("overconfident_wrong", []):
        parts.append(f"<tr><td class='l'>{e(w['question'])}</td><td class='l'>{e(w['prediction'])}</td>"
                     f"<td class='l'>{e(w['reference'])}</td><td>{_fmt(w['raw_confidence'])}</td>"
                     f"<td>{_fmt(w['calibrated_confidence'])}</td></tr>")
    parts.append("</table>")
    if results.get("calibrator_errors"):
        parts.append("<h2>Calibrators that could not be fitted</h2><ul>")
        for k, v in results["calibrator_errors"].items():
            parts.append(f"<li><b>{e(k)}</b>: {e(v)}</li>")
        parts.append("</ul>")
    parts.append("<h2>Configuration</h2><pre>" + e(json.dumps(config, indent=2, sort_keys=True)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
