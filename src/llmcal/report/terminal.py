"""The terminal summary of a run: a rich table and the checklist."""

from __future__ import annotations

from typing import Any

from llmcal.report.checklist import checklist

# (key in the results, short header)
COLUMNS = (("accuracy", "acc"), ("mean_confidence", "conf"), ("ece", "ECE [95% CI]"),
           ("brier", "Brier"), ("auroc", "AUROC"))


def print_summary(results: dict[str, Any], run_path: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"llmcal: test part ({results['split']['n_test']} items)")
    table.add_column("confidence", justify="left", no_wrap=True)
    for _, header in COLUMNS:
        table.add_column(header, justify="right", no_wrap=True)

    def row(label: str, vals: dict[str, Any]) -> None:
        cells = []
        for c, _ in COLUMNS:
            v = vals.get(c)
            ci = vals.get("ci95", {}).get(c)
            txt = "n/a" if v is None else f"{v:.3f}"
            if ci and ci[0] is not None and c == "ece":
                txt += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
            cells.append(txt)
        table.add_row(label, *cells)

    for name, vals in results["signals_test"].items():
        row(name, vals)
    for name, vals in results["calibrated_test"].items():
        row(f"[bold]-> {name}[/bold]", vals)
    console.print(table)
    for q, a in checklist(results):
        console.print(f"[bold]{q}[/bold]\n  {a}")
    console.print(f"\nRecords and report: [bold]{run_path}[/bold]")
