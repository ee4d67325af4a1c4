"""The HTML report of an open-ended run: every signal side by side, and what each cost."""

from __future__ import annotations

import html
import json
from typing import Any


def _f(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def render_open_html(results: dict[str, Any], config: dict[str, Any]) -> str:
    e = html.escape
    from llmcal.report.html import model_and_tasks, page_head

    parts = [
        page_head(config),
        "<h1>Free-form answers: when the model says it is sure, is it right?</h1>",
        f"<p class='muted'>{model_and_tasks(config)} &middot; accuracy {_f(results['overall']['accuracy'])} on "
        f"{results['overall']['n']} items ({results['split']['n_cal']} calibration / {results['split']['n_test']} "
        "test)</p>",
        "<h2>Signals on the test part</h2><p class='muted'>Raw: the signal as the model gives it; recalibrated: "
        "fitted on the calibration part. Missing: items where the signal could not be read (an unparseable "
        "verbalized reply), left out of that signal's metrics.</p>",
        "<table><tr><th class='l'>signal</th><th>AUROC</th><th>ECE raw</th><th>ECE recalibrated</th>"
        "<th>Brier recalibrated</th><th>missing</th></tr>",
    ]
    for name, s in results["signals"].items():
        raw, cal = s.get("raw", {}), s.get("calibrated", {})
        parts.append(f"<tr><td class='l'>{e(name)}</td><td>{_f(raw.get('auroc'))}</td><td>{_f(raw.get('ece'))}</td>"
                     f"<td>{_f(cal.get('ece'))}</td><td>{_f(cal.get('brier'))}</td><td>{s.get('n_missing', 0)}</td></tr>")
    parts.append("</table>")
    if results.get("serving"):
        sv = results["serving"]
        parts.append(f"<p>Served confidence: <b>{e(sv['signal'])}</b> recalibrated with {e(sv['calibrator'])} "
                     "(the free signal with the best calibration-part AUROC).</p>")
    parts.append("<h2>Cost per item</h2><table><tr><th class='l'>signal family</th><th>seconds</th>"
                 "<th>extra forward passes</th><th>extra generated tokens</th></tr>")
    for fam, c in results.get("cost", {}).items():
        parts.append(f"<tr><td class='l'>{e(fam)}</td><td>{_f(c.get('seconds'))}</td>"
                     f"<td>{_f(c.get('forward_passes'))}</td><td>{_f(c.get('gen_tokens'))}</td></tr>")
    parts.append("</table><h2>Per task</h2><table><tr><th class='l'>task</th><th>n</th><th>accuracy</th>"
                 "<th class='l'>grader</th></tr>")
    for task, t in results["per_task"].items():
        parts.append(f"<tr><td class='l'>{e(task)}</td><td>{t['n']}</td><td>{_f(t['accuracy'])}</td>"
                     f"<td class='l'>{e(str(t.get('grader')))}</td></tr>")
    parts.append("</table><h2>Configuration</h2><pre>" + e(json.dumps(config, indent=2, sort_keys=True)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
