"""The terminal summary of a run: a rich table and the checklist."""

from __future__ import annotations

from typing import Any

from llmcal.report.checklist import checklist

COLUMNS = ("accuracy", "mean_confidence", "ece", "ece_10_bin", "brier", "auroc")


def print_summary(results: dict[str, Any], run_path: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"llmcal: test part ({results['split']['n_test']} items)")
    table.add_column("confidence", justify="left")
    for c in COLUMNS:
        table.add_column(c, justify="right")

    def row(label: str, vals: dict[str, Any]) -> None:
        cells = []
        for c in COLUMNS:
            v = vals.get(c)
            ci = vals.get("ci95", {}).get(c)
            txt = "n/a" if v is None else f"{v:.3f}"
            if ci and ci[0] is not None and c in ("ece", "auroc"):
                txt += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
            cells.append(txt)
        table.add_row(label, *cells)

    for name, vals in results["signals_test"].items():
        row(name, vals)
    for name, vals in results["calibrated_test"].items():
        row(f"[bold]{name}[/bold] (calibrated)", vals)
    console.print(table)
    for q, a in checklist(results):
        console.print(f"[bold]{q}[/bold]\n  {a}")
    console.print(f"\nRecords and report: [bold]{run_path}[/bold]")
