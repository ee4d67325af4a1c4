"""What the report shows, computed from a results dict: numbers formatted, intervals clipped, rows in order.

The templates (``report/templates/*.html.j2``) only lay these out; every decision about
what a number means lives here, where it is tested without a browser:

* an interval is clipped to its metric's range (``metric_specs[m]["range"]``), and when
  it still covers most of that range it reads "too few items" instead of two numbers
  that say nothing ("[-3239%, +98%]");
* the headline: ECE before -> after with the verdict and the colour of the meter
  (green calibrated, yellow close, red not), the same colours as the confidence levels;
* the confidence levels ("very sure" / "unsure" / "can't answer safely", from
  ``results["levels"]``) with the share of answers and the accuracy at each;
* the cost table of a free-form run counts what each family really adds: a
  verbalized confidence is one more generation, agreement is k more.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

#: the main metrics table: (key, header); the other metrics go in the second table
MAIN_METRICS = (("accuracy", "accuracy"), ("mean_confidence", "mean conf."), ("ece", "ECE"), ("ace", "ACE"),
                ("mce", "MCE"), ("brier", "Brier"), ("nll", "NLL"), ("auroc", "AUROC"), ("aurc", "AURC"))
MORE_METRICS = (("overconfidence", "overconfidence"), ("ece_10_bin", "ECE (HELM, 10 equal-mass)"),
                ("rmsce", "RMS-CE"), ("auprc", "AUPRC"), ("selective_acc@10", "accuracy of the top 10%"),
                ("selective_cov_acc_area", "area under coverage-accuracy"))
#: two confidences with all of these equal are the same numbers, shown as one row ("a = b")
SAME_NUMBERS = ("n", "accuracy", "mean_confidence", "ece", "brier", "nll", "auroc")
#: an interval covering more than this fraction of the metric's range says nothing
USELESS_INTERVAL = 0.9
#: ECE at or below this is "calibrated" (the checklist's wording), up to twice it "close"
CALIBRATED_ECE = 0.05
LEVEL_ORDER = ("high", "medium", "low")
LEVEL_COLOURS = {"high": "green", "medium": "yellow", "low": "red"}


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def num(x: Any, nd: int = 3) -> str:
    """A number as the report prints it; None, NaN and non-numbers read "n/a"."""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{nd}f}" if is_number(x) else "n/a"


def pct(x: Any, nd: int = 1, signed: bool = False) -> str:
    if not is_number(x):
        return "n/a"
    return f"{100 * x:+.{nd}f}%" if signed else f"{100 * x:.{nd}f}%"


def interval(ci: Any, lo_bound: float | None = None, hi_bound: float | None = None, fmt=num) -> str:
    """``"0.153 – 0.249"`` clipped to [lo_bound, hi_bound]; "" when absent; "too few items" when useless."""
    if not ci or len(ci) != 2 or not (is_number(ci[0]) and is_number(ci[1])):
        return ""
    lo, hi = float(ci[0]), float(ci[1])
    if lo_bound is not None:
        lo, hi = max(lo, lo_bound), max(hi, lo_bound)
    if hi_bound is not None:
        lo, hi = min(lo, hi_bound), min(hi, hi_bound)
    if lo_bound is not None and hi_bound is not None and hi - lo > USELESS_INTERVAL * (hi_bound - lo_bound):
        return "too few items"
    return f"{fmt(lo)} – {fmt(hi)}"


def metric_interval(vals: Mapping[str, Any], metric: str, specs: Mapping[str, Any]) -> str:
    rng = (specs.get(metric) or {}).get("range") or (None, None)
    return interval((vals.get("ci95") or {}).get(metric), rng[0], rng[1])


def reduction_interval(ci: Any) -> str:
    """A relative reduction's interval (at most +100%); a lower end under -100% means too few items."""
    if not ci or len(ci) != 2 or not (is_number(ci[0]) and is_number(ci[1])):
        return ""
    if ci[0] < -1.0:
        return "too few items"
    return interval(ci, -1.0, 1.0, lambda v: pct(v, 0, signed=True))


def metric_rows(results: Mapping[str, Any], metrics=MAIN_METRICS) -> list[dict[str, Any]]:
    """One row per confidence (raw signals, then calibrated): each cell its value and interval."""
    specs = results.get("metric_specs") or {}
    primary = results.get("primary") or {}
    rows: list[dict[str, Any]] = []
    groups = [("raw", k, v) for k, v in (results.get("signals_test") or {}).items()]
    groups += [("calibrated", k, v) for k, v in (results.get("calibrated_test") or {}).items()]
    for group, name, vals in groups:
        is_primary = name == (primary.get("calibrator") if group == "calibrated" else primary.get("signal"))
        key = tuple(vals.get(m) for m in SAME_NUMBERS)
        twin = next((r for r in rows if r["group"] == group and r["key"] == key and any(k is not None for k in key)),
                    None)
        if twin is not None:  # an imported lm-eval run: option_prob_norm is option_prob, one row says so
            twin["name"] += f" = {name}"
            twin["primary"] = twin["primary"] or is_primary
            continue
        rows.append({
            "group": group, "name": name, "primary": is_primary, "key": key,
            "cells": [{"value": num(vals.get(m)), "interval": metric_interval(vals, m, specs)} for m, _ in metrics],
        })
    return rows


def _meter(ece: Any) -> str:
    if not is_number(ece):
        return "grey"
    return "green" if ece <= CALIBRATED_ECE else "yellow" if ece <= 2 * CALIBRATED_ECE else "red"


def headline(results: Mapping[str, Any]) -> dict[str, Any]:
    """ECE before -> after and the verdict: the first thing on the page."""
    primary = results.get("primary") or {}
    signal, cname = primary.get("signal"), primary.get("calibrator")
    specs = results.get("metric_specs") or {}
    before = (results.get("signals_test") or {}).get(signal) or {}
    after = (results.get("calibrated_test") or {}).get(cname) if cname else None
    ece_b = before.get("ece")
    ece_a = after.get("ece") if after else None
    final = ece_a if after else ece_b
    if not is_number(final):
        verdict = "calibration could not be measured"
    elif final <= CALIBRATED_ECE:
        verdict = "calibrated" + (" after " + cname if after and is_number(ece_b) and ece_b > CALIBRATED_ECE else "")
    else:
        over = (after or before).get("overconfidence")
        direction = "overconfident" if is_number(over) and over > 0 else "underconfident"
        if after and is_number(ece_b) and final > ece_b:
            verdict = f"{cname} made it worse: {direction} on the test part"
        elif final <= 2 * CALIBRATED_ECE:
            verdict = f"nearly calibrated{' after ' + cname if after else ''} (slightly {direction})"
        elif not after:
            verdict = f"not calibrated: {direction}"
        else:
            verdict = f"{direction} even after {cname}"
    params = (after or {}).get("params") or {}
    t = params.get("temperature_")
    how = (f"temperature scaling, T = {t:.2f}" if is_number(t) else cname) if after else None
    rel = (ece_b - ece_a) / ece_b if is_number(ece_a) and is_number(ece_b) and ece_b > 0 else None
    return {
        "signal": signal, "calibrator": cname, "how": how, "verdict": verdict, "colour": _meter(final),
        "colour_before": _meter(ece_b),
        "before": pct(ece_b), "before_interval": metric_interval(before, "ece", specs) if before else "",
        "after": pct(ece_a) if after else None,
        "after_interval": metric_interval(after, "ece", specs) if after else "",
        "change": None if rel is None else f"{100 * abs(rel):.0f}% {'lower' if rel >= 0 else 'higher'}",
        "accuracy": pct(before.get("accuracy")), "n_test": (results.get("split") or {}).get("n_test"),
        "errors": results.get("calibrator_errors") or {},
    }


def level_rows(results: Mapping[str, Any]) -> dict[str, Any] | None:
    """The confidence-levels table: per level, share and accuracy before and after calibration."""
    lv = results.get("levels")
    if not lv:
        return None
    kinds = [k for k in ("raw", "calibrated") if lv.get(k)]
    rows = []
    for level in LEVEL_ORDER:
        cells = []
        for k in kinds:
            c = lv[k].get(level) or {}
            cells.append({"share": pct(c.get("share"), 0), "n": c.get("n", 0), "accuracy": pct(c.get("accuracy"), 0)})
        label = (lv[kinds[0]].get(level) or {}).get("label", level) if kinds else level
        rows.append({"level": level, "label": label, "colour": LEVEL_COLOURS[level], "cells": cells})
    th = lv.get("thresholds") or {}
    return {"kinds": kinds, "rows": rows, "high": num(th.get("high"), 2), "abstain": num(th.get("abstain"), 2),
            "confidence": lv.get("confidence")}


def cost_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A free-form run's cost per item, family by family, with the real extra model calls.

    ``forward_passes`` counts scoring passes only; a family that generates (verbalized:
    one more answer, agreement: ``samples`` more) also costs those generations.
    """
    rows = []
    for fam, c in (results.get("cost") or {}).items():
        gen_tokens = c.get("gen_tokens") or 0
        generations = c.get("samples") if is_number(c.get("samples")) else (1 if gen_tokens > 0 else 0)
        extra = (c.get("forward_passes") or 0) + generations
        rows.append({"family": fam, "seconds": num(c.get("seconds")),
                     "scoring": num(c.get("forward_passes") or 0, 0), "generations": num(generations, 0),
                     "extra_calls": "the answer itself" if fam == "greedy" else num(extra, 0),
                     "gen_tokens": num(gen_tokens, 1)})
    return rows


def per_subtask_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for task, subs in (results.get("per_subtask") or {}).items():
        for sub, r in subs.items():
            out.append({"task": task, "subtask": sub, "n": r.get("n"), "accuracy": pct(r.get("accuracy")),
                        "mean_confidence": pct(r.get("mean_confidence")), "ece": num(r.get("ece"))})
    return out


def key_value_rows(section: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """An optional results section of unknown depth as a table: (columns, rows).

    A dict of dicts gives one row per key and a column per scalar field; a dict of
    scalars gives one "value" column.  Nested lists and dicts deeper down are left out.
    """
    if not isinstance(section, Mapping):
        return ["value"], [{"name": "", "cells": [str(section)]}]
    nested = {k: v for k, v in section.items() if isinstance(v, Mapping)}
    flat = {k: v for k, v in section.items() if not isinstance(v, (Mapping, list))}
    rows = [{"name": k, "cells": [_cell(v)]} for k, v in flat.items()]
    if not nested:
        return ["value"], rows
    cols = list(dict.fromkeys(c for v in nested.values() for c, x in v.items() if not isinstance(x, (Mapping, list))))
    rows = [{"name": k, "cells": [_cell(v) for _ in cols[:1]] + [""] * (len(cols) - 1)} for k, v in flat.items()]
    rows += [{"name": k, "cells": [_cell(v.get(c)) for c in cols]} for k, v in nested.items()]
    return cols, rows


def _cell(v: Any) -> str:
    if v is None:
        return ""
    return num(v) if isinstance(v, (int, float)) else str(v)
