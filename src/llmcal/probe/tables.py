"""Markdown tables of the probe results (terminal output, ``probe_shift.md``, docs/benchmarks.md)."""

from __future__ import annotations

from typing import Any, Sequence

#: Order of the confidences in every table (others follow in their own order).
ORDER = ("internal", "option_prob_norm", "margin", "entropy", "internal+temperature", "internal+platt",
         "internal+isotonic", "internal+beta", "internal+histogram", "external", "combined")


def ordered(names: Sequence[str]) -> list[str]:
    first = [n for n in ORDER if n in names]
    return first + [n for n in names if n not in first]


def f3(x: Any) -> str:
    return "n/a" if x is None or x != x else f"{x:.3f}"


def pct(x: Any) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:+.0f}%"


def _ci(ci: Any, fmt=f3) -> str:
    if not ci or ci[0] is None:
        return ""
    return f" [{fmt(ci[0])}, {fmt(ci[1])}]"


def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def methods_table(methods: dict[str, Any], with_ci: bool = True) -> str:
    """One row a confidence: accuracy, mean confidence, overconfidence, ECE, Brier, AUROC, reductions."""
    header = ["confidence", "mean conf", "overconf.", "ECE", "Brier", "AUROC", "ECE vs internal",
              "|overconf.| vs internal"]
    rows = []
    for name in ordered(list(methods)):
        m = methods[name]
        ci = m.get("ci95", {}) if with_ci else {}
        vs = m.get("vs_internal", {})
        rows.append([
            f"**{name}**" if name == "combined" else name,
            f3(m["mean_confidence"]), f"{m['overconfidence']:+.3f}",
            f3(m["ece"]) + _ci(ci.get("ece")), f3(m["brier"]) + _ci(ci.get("brier")),
            f3(m["auroc"]) + _ci(ci.get("auroc")),
            (pct(vs.get("ece_reduction")) + _ci(vs.get("ece_reduction_ci95"), pct)) if vs else "",
            (pct(vs.get("overconfidence_reduction")) + _ci(vs.get("overconfidence_reduction_ci95"), pct))
            if vs else "",
        ])
    return _md(header, rows)


def _matrix(shift: dict[str, Any], value) -> str:
    tasks = shift["tasks"]
    header = ["fitted on \\ tested on"] + tasks
    rows = []
    for src, row in shift["cells"].items():
        rows.append([src] + [value(row[t]) if t in row else "" for t in tasks])
    return _md(header, rows)


def shift_tables(shift: dict[str, Any]) -> str:
    """The matrix as several markdown tables plus the summary."""
    out = []
    acc = {t: None for t in shift["tasks"]}
    for row in shift["cells"].values():
        for t, c in row.items():
            acc[t] = c["target_accuracy"]
    out.append("Test-part accuracy per task: " + ", ".join(f"{t} {f3(a)}" for t, a in acc.items()) + ".\n")
    out.append("**AUROC: combined / best single signal on the test part (which) / single signal best on the "
               "calibration part**\n")
    out.append(_matrix(shift, lambda c: f"{f3(c['methods']['combined']['auroc'])} / {f3(c['best_single_auroc'])} "
                                        f"({c['best_single']}) / {f3(c.get('source_best_single_auroc'))}"))
    out.append("\n**ECE: raw internal option_prob -> combined (relative reduction, 95% paired bootstrap interval)**\n")
    def ece_cell(c: dict[str, Any]) -> str:
        vs = c["methods"]["combined"]["vs_internal"]
        return (f"{f3(c['methods']['internal']['ece'])} -> {f3(c['methods']['combined']['ece'])} "
                f"({pct(vs['ece_reduction'])}{_ci(vs.get('ece_reduction_ci95'), pct)})")

    out.append(_matrix(shift, ece_cell))
    out.append("\n**Brier, combined (internal+temperature in parentheses)**\n")
    out.append(_matrix(shift, lambda c: f"{f3(c['methods']['combined']['brier'])} "
                                        f"({f3(c['methods'].get('internal+temperature', {}).get('brier'))})"))
    out.append("\n**Overconfidence (mean confidence - accuracy): internal -> combined (reduction of |gap|)**\n")
    def oc_cell(c: dict[str, Any]) -> str:
        m = c["methods"]
        return (f"{m['internal']['overconfidence']:+.3f} -> {m['combined']['overconfidence']:+.3f} "
                f"({pct(m['combined']['vs_internal']['overconfidence_reduction'])})")

    out.append(_matrix(shift, oc_cell))
    out.append("\n" + summary_table(shift["summary"]))
    return "\n".join(out)


def summary_table(summary: dict[str, Any]) -> str:
    """Mean over cells of each group: AUROC, ECE, Brier, reductions vs internal, per confidence."""
    out = []
    for group, g in summary.items():
        out.append(f"\n**{group.replace('_', ' ')}** ({g['n_cells']} cells). Combined AUROC above the best "
                   f"single signal of each cell in {g['combined_beats_best_single_auroc']} cells (best chosen on "
                   f"the test part, mean AUROC {f3(g['mean_best_single_auroc'])}); above the single signal that "
                   f"was best on the calibration part in {g.get('combined_beats_source_best_single_auroc')} cells "
                   f"(mean AUROC {f3(g.get('mean_source_best_single_auroc'))}).\n")
        header = ["confidence", "mean AUROC", "mean ECE", "mean Brier", "mean overconf.",
                  "mean ECE reduction vs internal", "mean |overconf.| reduction"]
        rows = []
        for name in ordered(list(g["mean"])):
            m = g["mean"][name]
            r = g["mean_reduction_vs_internal"].get(name, {})
            label = f"**{name}**" if name == "combined" else name
            if m.get("n_cells", g["n_cells"]) < g["n_cells"]:
                label += f" ({m['n_cells']} cells: no fit elsewhere)"
            rows.append([label, f3(m["auroc"]), f3(m["ece"]),
                         f3(m["brier"]), f"{m['overconfidence']:+.3f}" if m["overconfidence"] is not None else "n/a",
                         pct(r.get("ece_reduction")) if r else "", pct(r.get("overconfidence_reduction")) if r else ""])
        out.append(_md(header, rows))
        ece_fails = [f for f in g["cells_failing"] if "ECE" in f["why"]]
        if ece_fails:
            out.append(f"\nCells where `combined` reduces ECE by less than 40% ({len(ece_fails)} of {g['n_cells']}):\n")
            for f in ece_fails:
                out.append(f"- {f['cell']}: ECE {f3(f['internal_ece'])} -> {f3(f['combined_ece'])}; accuracy "
                           f"{f3(f['source_accuracy'])} (fitted on) vs {f3(f['target_accuracy'])} (tested on), "
                           f"combined mean confidence {f3(f['combined_mean_confidence'])}")
    return "\n".join(out)


def learning_curve_table(lc: dict[str, Any]) -> str:
    """Rows = calibration items; columns = AUROC / ECE of each confidence (mean +- s.d. for in-task)."""
    out = []
    for setting in ("in_task", "leave_one_task_out"):
        curve = lc.get(setting)
        if not curve:
            continue
        methods = ordered(list(dict.fromkeys(m for row in curve.values() for m in row)))
        header = ["n cal"] + [f"{m} AUROC" for m in methods if m not in ("internal+temperature",)] + \
                 [f"{m} ECE" for m in methods]
        rows = []
        for n, row in curve.items():
            def cell(m: str, k: str) -> str:
                if m not in row:
                    return "n/a"
                v = row[m][k]
                if isinstance(v, dict):
                    return f3(v["mean"]) + (f" ±{v['sd']:.3f}" if (v.get("sd") or 0) >= 5e-4 else "")
                return f3(v)
            rows.append([n] + [cell(m, "auroc") for m in methods if m not in ("internal+temperature",)]
                        + [cell(m, "ece") for m in methods])
        label = ("in-task (pooled tasks; mean ± s.d. over repeats)" if setting == "in_task"
                 else "leave-one-task-out (mean over held-out tasks)")
        out.append(f"\n**Learning curve, {label}**\n")
        out.append(_md(header, rows))
    return "\n".join(out)
