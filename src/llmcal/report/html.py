"""A self-contained ``report.html``: Jinja2 templates, plots embedded as base64 PNG, no network needed.

One base template (``templates/base.html.j2``) for both kinds of run, since both write one
results layout; ``mc.html.j2`` and ``open.html.j2`` extend it.  Sections, in reading order:
the headline card (ECE before -> after and the verdict, coloured like the confidence
meter), the confidence levels ("very sure" / "unsure" / "can't answer safely") with the
share of answers and the accuracy at each, the checklist, the reliability diagram and the
risk-coverage curve, the metrics with 95% bootstrap intervals, the kind's own sections (a
free-form run: every signal raw against recalibrated, the served signal, the real cost of
each signal family), the probe section, the optional ``transfer`` and ``shift`` results,
the confidence filter, per task and per subtask, the most overconfident wrong answers, the
configuration.  The page fits 1280 px without sideways scrolling.

Everything shown is computed in :mod:`llmcal.report.view`; the templates lay it out and
escape it (autoescape on).
"""

from __future__ import annotations

import base64
import io
import json
from functools import lru_cache
from typing import Any, Mapping

from llmcal.report import view
from llmcal.report.checklist import checklist

#: a reliability-diagram point stands for at least this many answers (sparser bins are merged)
MIN_BIN_COUNT = 10


@lru_cache(maxsize=1)
def environment():
    """The Jinja2 environment of the report templates (package data, autoescaped)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("llmcal.report", "templates"),
                             autoescape=jinja2.select_autoescape(("html", "j2")), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["num"] = view.num
    env.filters["key_value_rows"] = view.key_value_rows
    return env


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _reliability_png(results: Mapping[str, Any]) -> str | None:
    from llmcal.metrics import ReliabilityData, plot_reliability

    rel = results.get("reliability") or {}
    if not rel:
        return None
    datas = [ReliabilityData.from_dict(d) for d in rel.values()]
    labels = ["before (raw)" if label == "raw" else f"after ({label})" for label in rel]
    fig = plot_reliability(datas, labels=labels, title="Reliability: accuracy against confidence",
                           min_count=MIN_BIN_COUNT)
    return _png(fig)


def _risk_coverage_png(results: Mapping[str, Any]) -> str | None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rc = results.get("risk_coverage") or {}
    if not rc:
        return None
    fig = Figure(figsize=(5.5, 4.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, d in rc.items():
        ax.plot(d["coverage"], d["risk"], label="before (raw)" if label == "raw" else f"after ({label})")
    ax.set_xlabel("coverage (fraction answered, most confident first)")
    ax.set_ylabel("risk (error rate among answered)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=fig.transFigure, fontsize=8,
              frameon=False, ncol=2)
    ax.set_title("Risk-coverage")
    return _png(fig)


def _filters(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"label": label, "threshold": view.num(f.get("threshold"), 2), "coverage": view.pct(f.get("coverage")),
             "answered": f.get("answered"), "accuracy_answered": view.pct(f.get("accuracy_answered")),
             "accuracy_all": view.pct(f.get("accuracy_all"))} for label, f in (results.get("filter") or {}).items()]


def _open_signals(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    specs = results.get("metric_specs") or {}
    rows = []
    for name, sig in (results.get("signals") or {}).items():
        raw, cal = sig.get("raw") or {}, sig.get("calibrated") or {}
        rows.append({"name": name, "auroc": view.num(raw.get("auroc")),
                     "auroc_interval": view.metric_interval(raw, "auroc", specs),
                     "ece_raw": view.num(raw.get("ece")), "ece_raw_interval": view.metric_interval(raw, "ece", specs),
                     "ece_cal": view.num(cal.get("ece")), "ece_cal_interval": view.metric_interval(cal, "ece", specs),
                     "brier_cal": view.num(cal.get("brier")), "missing": sig.get("n_missing", 0)})
    return rows


def _checklist_pairs(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The checklist as (question, answer) pairs, whether it returns pairs or dicts."""
    out = []
    for entry in checklist(dict(results)):
        if isinstance(entry, Mapping):
            out.append((str(entry.get("question", "")), str(entry.get("answer", ""))))
        else:
            q, a = entry[0], entry[1]
            out.append((str(q), str(a)))
    return out


def _shift(results: Mapping[str, Any]) -> dict[str, Any] | None:
    sh = results.get("shift")
    if not sh:
        return None
    share = sh.get("share_unlike") if isinstance(sh, Mapping) else None
    rest = {k: v for k, v in sh.items() if k != "share_unlike"} if isinstance(sh, Mapping) else sh
    return {"share_unlike": view.pct(share, 0) if view.is_number(share) else None, "table": rest or {}}


def _probe_html(results: Mapping[str, Any], config: Mapping[str, Any]):
    if not results.get("probe"):
        return None
    from markupsafe import Markup

    from llmcal.report.probe_section import render_probe_section

    return Markup(render_probe_section(results["probe"], config))


def context(results: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the templates show, formatted (see :mod:`llmcal.report.view`)."""
    is_open = results.get("kind") == "open"
    chat = " (chat template)" if config.get("chat") else (" (plain prompt)" if is_open else "")
    how = "free-form answers" + chat if is_open else f"prompt style {config.get('style')}{chat}"
    return {
        "config": config, "how": how, "model": str(config.get("model_desc", config.get("model"))),
        "tasks": ", ".join(map(str, config.get("tasks", []))), "overall": results["overall"],
        "split": results["split"], "version": str((results.get("versions") or {}).get("llmcal", "")),
        "head": view.headline(results), "levels": view.level_rows(results), "checklist": _checklist_pairs(results),
        "min_bin_count": MIN_BIN_COUNT,
        "plots": {"reliability": _reliability_png(results), "risk_coverage": _risk_coverage_png(results)},
        "metrics": {"main": view.metric_rows(results, view.MAIN_METRICS),
                    "main_headers": [h for _, h in view.MAIN_METRICS],
                    "more": view.metric_rows(results, view.MORE_METRICS),
                    "more_headers": [h for _, h in view.MORE_METRICS]},
        "probe": _probe_html(results, config), "transfer": results.get("transfer"), "shift": _shift(results),
        "filters": _filters(results), "per_task": results["per_task"],
        "second_column": ({"header": "grader", "key": "grader"} if is_open else
                          {"header": "accuracy (length-normalized)", "key": "accuracy_norm"}),
        "per_subtask": view.per_subtask_rows(results), "wrong": results.get("overconfident_wrong", []),
        "open_signals": _open_signals(results) if is_open else [], "serving": results.get("serving"),
        "costs": view.cost_rows(results) if is_open else [],
        "config_json": json.dumps(config, indent=2, sort_keys=True, default=str),
    }


def render_html(results: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """The report page of one run (``results.json`` and the run's ``config``)."""
    template = "open.html.j2" if results.get("kind") == "open" else "mc.html.j2"
    return environment().get_template(template).render(**context(results, config))


__all__ = ["render_html", "context", "environment", "MIN_BIN_COUNT"]
