"""The brief's decoding-temperature sweep: does a lower temperature give better-calibrated answers?

The brief: "lowering temperature from 0.8 to 0.5 often improves calibration".
For each temperature T the answer is *sampled* at T (T = 0: greedy), the
agreement samples are drawn at the same T, and every signal is recomputed for
that answer; each temperature is one open-ended run folder
(``<out>/T<T>``, resumable), evaluated like any open run.  The table gives
accuracy and, for each signal, ECE and AUROC at every T, so a user sees
whether the claim holds for their model.  Calibration here is of the *raw*
signals: temperature changes which answers are given, and the question is
how well the model's own confidence tracks them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from llmcal.pipeline.evaluate import evaluate
from llmcal.pipeline.measure_open import OpenSettings, measure_open
from llmcal.records.run_dir import RunDir
from llmcal.core.items import OpenItem


def temperature_sweep(out: str | Path, items: Sequence[OpenItem], backend_factory: Callable[[], Any],
                      settings: OpenSettings, temperatures: Sequence[float], config: dict[str, Any],
                      progress: bool = True, n_bootstrap: int = 200) -> dict[str, Any]:
    """Run (or resume) one open run per temperature and tabulate the signals' ECE/AUROC."""
    out = Path(out)
    backend = None

    def shared_backend():
        nonlocal backend
        if backend is None:
            backend = backend_factory()
        return backend

    rows: dict[str, Any] = {}
    for t in temperatures:
        s = replace(settings, answer_temperature=float(t), sample_temperature=float(t) if t > 0 else
                    settings.sample_temperature)
        run = RunDir(out / f"T{t:g}")
        run.start({**config, "open_settings": s.to_dict(), "kind": "open"}, ("model_args", "tasks", "limit",
                                                                              "open_settings"))
        measure_open(run, items, shared_backend, s, progress=progress)
        results, _ = evaluate(run.read_samples(), n_bootstrap=n_bootstrap)
        rows[f"{t:g}"] = {
            "accuracy": results["overall"]["accuracy"],
            "signals": {k: {"ece": v["raw"]["ece"], "auroc": v["raw"]["auroc"], "n_missing": v["n_missing"]}
                        for k, v in results["signals"].items() if "raw" in v},
        }
    return {"temperatures": [float(t) for t in temperatures], "rows": rows}


def sweep_table(sweep: dict[str, Any]) -> str:
    """Markdown: one row per temperature, accuracy then ECE / AUROC of each signal."""
    rows = sweep["rows"]
    names = sorted({k for r in rows.values() for k in r["signals"]})
    head = "| T | accuracy | " + " | ".join(f"{n} ECE / AUROC" for n in names) + " |"
    lines = [head, "|" + "---:|" * (2 + len(names))]
    for t, r in rows.items():
        cells = []
        for n in names:
            v = r["signals"].get(n)
            cells.append("n/a" if v is None else f"{_num(v['ece'])} / {_num(v['auroc'])}")
        lines.append(f"| {t} | {_num(r['accuracy'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def plot_sweep(sweep: dict[str, Any], path: str | Path) -> Path:
    """ECE and AUROC of every signal, and accuracy, against the temperature (one PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sweep["rows"]
    ts = [float(t) for t in rows]
    names = sorted({k for r in rows.values() for k in r["signals"]})
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].plot(ts, [rows[t]["accuracy"] for t in rows], "k-o")
    axes[0].set(title="accuracy", xlabel="temperature")
    for n in names:
        for ax, key in ((axes[1], "ece"), (axes[2], "auroc")):
            ys = [rows[t]["signals"].get(n, {}).get(key) for t in rows]
            ax.plot(ts, [float("nan") if y is None else y for y in ys], "-o", label=n)
    axes[1].set(title="ECE (raw signal)", xlabel="temperature")
    axes[2].set(title="AUROC", xlabel="temperature")
    axes[2].legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_temperatures(spec: str) -> list[float]:
    """``"0,0.5,0.8"`` -> [0.0, 0.5, 0.8]; a non-number or a negative temperature is refused."""
    try:
        temps = [float(t) for t in spec.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--temperatures: expected numbers, got {spec!r}") from None
    if not temps or any(t < 0 for t in temps):
        raise ValueError(f"--temperatures: need non-negative temperatures, got {spec!r}")
    return temps


def run_sweep(config, temperatures: Sequence[float]) -> tuple[dict[str, Any], dict[str, Path]]:
    """``llmcal sweep``: one open run per temperature under the output folder, then the table and plot.

    The backend is whatever ``config.model`` names (a local model or any OpenAI-compatible
    server), built once through the backend registry and shared by every temperature.
    """
    import json

    from llmcal.pipeline.run import (backend_args, check_capabilities, load_items, open_settings, run_identity,
                                     task_kind)

    if task_kind(config) != "open":
        raise ValueError(f"--tasks {','.join(config.tasks)!r}: the sweep needs open-ended tasks "
                         "(builtin_open, nq_open, ...)")
    check_capabilities(config, "open")
    margs = backend_args(config)
    identity = run_identity(config, margs, "open")
    items = load_items(config)
    out = Path(config.output_path or Path("runs") / identity["name"].replace("-open", "-sweep"))

    def factory():
        from llmcal.backends.registry import load_backend

        kwargs = {k: v for k, v in margs.items() if k != "batch_size"}
        if config.model == "hf":
            kwargs["max_tokens"] = config.max_tokens
        return load_backend(config.model, **kwargs)

    sweep = temperature_sweep(out, items, factory, open_settings(config), temperatures, identity,
                              progress=not config.quiet, n_bootstrap=config.bootstrap)
    (out / "sweep.json").write_text(json.dumps(sweep, indent=2))
    table = out / "sweep.md"
    table.write_text(sweep_table(sweep) + "\n")
    return sweep, {"json": out / "sweep.json", "table": table, "plot": plot_sweep(sweep, out / "sweep.png")}
