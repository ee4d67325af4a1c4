"""The terminal summary of a run: the verdict, a rich table and the checklist.

Colour carries meaning only: the verdict line is green / yellow / red like the
confidence meter of ``llmcal ask`` and the report's headline card; every number is
plain.  rich's automatic highlighting (which paints every number cyan) is off.
"""

from __future__ import annotations

from typing import Any

from llmcal.report.checklist import checklist
from llmcal.report.view import headline, is_number

# (key in the results, short header)
COLUMNS = (("accuracy", "acc"), ("mean_confidence", "conf"), ("ece", "ECE [95% CI]"),
           ("brier", "Brier"), ("auroc", "AUROC"))
#: rich colour names of the meter colours
RICH_COLOURS = {"green": "green", "yellow": "yellow", "red": "red", "grey": "bright_black"}


def console(**kw: Any):
    """A rich Console that colours only what is marked up (no number highlighting); ``kw`` to Console."""
    from rich.console import Console

    return Console(highlight=False, **kw)


def verdict_line(results: dict[str, Any]) -> str:
    """``ECE 18.7% -> 5.3%  calibrated after temperature``, the verdict in the meter's colour (rich markup)."""
    h = headline(results)
    colour = RICH_COLOURS[h["colour"]]
    ece = f"ECE {h['before']}" + (f" -> {h['after']}" if h["after"] is not None else "")
    return f"[bold {colour}]\u25cf {h['verdict']}[/bold {colour}]  {ece}" + (f" ({h['how']})" if h["how"] else "")


def _cell(vals: dict[str, Any], key: str) -> str:
    v = vals.get(key)
    txt = f"{v:.3f}" if is_number(v) else "n/a"
    ci = (vals.get("ci95") or {}).get(key)
    if key == "ece" and ci and is_number(ci[0]) and is_number(ci[1]):
        txt += f" [{max(0.0, ci[0]):.2f}, {min(1.0, ci[1]):.2f}]"
    return txt


def print_summary(results: dict[str, Any], run_path: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    out = console()
    table = Table(title=f"llmcal: test part ({results['split']['n_test']} items)")
    table.add_column("confidence", justify="left", no_wrap=True)
    for _, header in COLUMNS:
        table.add_column(header, justify="right", no_wrap=True)
    for name, vals in results["signals_test"].items():
        table.add_row(name, *(_cell(vals, c) for c, _ in COLUMNS))
    for name, vals in results["calibrated_test"].items():
        table.add_row(f"[bold]-> {name}[/bold]", *(_cell(vals, c) for c, _ in COLUMNS))
    out.print(table)
    out.print(verdict_line(results))
    for entry in checklist(results):
        q, a = (entry.get("question"), entry.get("answer")) if isinstance(entry, dict) else entry[:2]
        out.print(f"[bold]{escape(str(q))}[/bold]\n  {escape(str(a))}")  # "[0.15, 0.25]" is text, not markup
    out.print(f"\nRecords and report: [bold]{escape(run_path)}[/bold]")
