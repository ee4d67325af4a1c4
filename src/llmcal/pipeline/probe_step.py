"""The probe step of a run: fit the external probe and ``combined`` on a run folder.

``llmcal run --probe`` calls :func:`combine_run` after the calibration step and before the
report; ``llmcal probe`` and ``llmcal combine`` call the same functions.  The probe itself
(features, models, the stacker, the in-task / shift protocol) lives in :mod:`llmcal.probe`;
this module only orders it on a run folder and merges its numbers into ``results.json``
beside the calibrators (``combined`` and ``external``), with the same split and binning.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from llmcal.pipeline.config import ProbeConfig
from llmcal.records.results import clean
from llmcal.records.run_dir import RunDir

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def probe_settings(pc: ProbeConfig, model, model_positions: list[str] | None = None):
    """The probe's settings from a :class:`ProbeConfig`, checked against what the run kept."""
    from llmcal.probe.features import abs_layer
    from llmcal.probe.protocol import ProbeSettings

    spec = str(pc.layers).strip().lower()
    if spec == "all":
        layers = None
    elif spec in ("none", ""):
        layers = []
    else:
        layers = []
        for part in spec.split(","):
            part = part.strip()
            if part == "mid":
                i = model.n_layers // 2
            elif part == "last":
                i = -1
            elif re.fullmatch(r"-?\d+", part):
                i = int(part)
            else:
                raise ValueError(f"--layers: {part!r} is not a layer index, 'mid', 'last', 'all' or 'none'")
            j = abs_layer(i, model.n_layers)
            if j not in model.layers:
                raise ValueError(f"--layers: layer {i} was not kept by the run (kept: {model.layers}); "
                                 "rerun `llmcal measure` with --hidden_layers including it")
            layers.append(j)
    comp = str(pc.components).strip().lower()
    if comp in ("all", "none"):
        n_components = None
    elif comp.isdigit():
        n_components = int(comp)
    else:
        raise ValueError(f"--components: expected a number or 'all', got {comp!r}")
    from llmcal.calibrators import CALIBRATORS

    usable = sorted(n for n, c in CALIBRATORS.items() if not c.needs_options)
    if pc.calibrator not in CALIBRATORS:
        raise ValueError(f"--calibrator: unknown {pc.calibrator!r}; known: {', '.join(usable)}")
    if CALIBRATORS[pc.calibrator].needs_options:
        raise ValueError(f"--calibrator: {pc.calibrator} reads each answer's number of options, which the probe's "
                         f"scores do not carry; choose among {', '.join(usable)}")
    pos_spec = str(pc.positions).strip().lower()
    positions = None
    if pos_spec == "all":
        from llmcal.probe.features import POSITIONS

        positions = [p for p in POSITIONS if p in model_positions] if model_positions else None
    elif pos_spec != "auto":
        from llmcal.probe.features import POSITIONS

        positions = [x.strip() for x in pos_spec.split(",") if x.strip()]
        bad = [x for x in positions if x not in POSITIONS]
        if bad or not positions:
            raise ValueError(f"--positions: {bad or pos_spec!r} unknown; use 'all' or some of {', '.join(POSITIONS)}")
    return ProbeSettings(probe=pc.kind, layers=layers, use_cheap=pc.cheap,
                         n_components=n_components, calibrator=pc.calibrator, positions=positions)


def split_defaults(run_path: Path, cal_fraction: float | None, seed: int | None) -> tuple[float, int]:
    """The split of the run's results.json (so `combined` is scored on the same test items)."""
    res = run_path / "results.json"
    if res.exists() and (cal_fraction is None or seed is None):
        split = json.loads(res.read_text()).get("split", {})
        cal_fraction = split.get("cal_fraction", 0.5) if cal_fraction is None else cal_fraction
        seed = split.get("seed", 0) if seed is None else seed
    cal_fraction = 0.5 if cal_fraction is None else float(cal_fraction)
    if not 0.0 < cal_fraction < 1.0:
        raise ValueError(f"--cal_fraction must be in (0, 1), got {cal_fraction}")
    return cal_fraction, 0 if seed is None else int(seed)


def fit_in_task(run_dir: str | Path, pc: ProbeConfig, cal_fraction: float | None = None, seed: int | None = None,
                bootstrap: int = 1000, fingerprint: bool = True, say: Say = _quiet) -> tuple[dict[str, Any], Any, Any]:
    """Fit the probe and ``combined`` on the run's calibration part; score its test part."""
    from llmcal.probe.features import load_run_features
    from llmcal.probe.protocol import in_task

    path = Path(run_dir)
    rf = load_run_features(path, compute_fingerprint=fingerprint)
    s = probe_settings(pc, rf.model, rf.positions)
    cal_fraction, seed = split_defaults(path, cal_fraction, seed)
    s.seed = seed
    say(f"fitting the {s.probe} probe and `combined` on {path} ({len(rf)} items, cal_fraction {cal_fraction}, "
        f"seed {seed}) ...")
    res, fitted = in_task(rf, s, cal_fraction, seed, n_boot=bootstrap)
    res["settings"] = s.to_dict()
    res["run"] = str(path)
    return res, fitted, rf


def save_artifact(fitted, res: dict[str, Any], run_dir: Path, out: str | None) -> Path:
    art = fitted.artifact
    art.info.update({"run": str(run_dir), "split": res["split"],
                     "test": {k: {m: v[m] for m in ("auroc", "ece", "brier")}
                              for k, v in res["methods"].items() if k in ("internal", "external", "combined")}})
    return art.save(Path(out) if out else run_dir)


def write_clean(run_dir: Path, name: str, payload: dict[str, Any]) -> Path:
    p = run_dir / name
    RunDir(run_dir).write_json(p, clean(payload))
    return p


def metrics_block(conf, correct, n_bins: int, n_boot: int, seed: int) -> dict[str, Any]:
    """One confidence on the test part in results.json's format (:func:`~llmcal.pipeline.evaluate.metrics_with_ci`)."""
    import warnings

    from llmcal.pipeline.evaluate import metrics_with_ci

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metrics_with_ci(conf, correct, n_bins, n_boot, seed)


def combine_run(run_dir: str | Path, pc: ProbeConfig, cal_fraction: float | None = None, seed: int | None = None,
                bootstrap: int = 1000, out: str | Path | None = None, fingerprint: bool = True,
                say: Say = _quiet) -> dict[str, Any]:
    """Fit `combined` on a run folder; merge it into results.json; return the probe section."""
    import numpy as np

    from llmcal import metrics as M
    from llmcal.probe.protocol import predict_all, split

    run_dir = Path(run_dir)
    res, fitted, rf = fit_in_task(run_dir, pc, cal_fraction, seed, bootstrap, fingerprint, say)
    art_path = save_artifact(fitted, res, run_dir, None if out is None else str(out))
    res["artifact"] = str(art_path)
    write_clean(run_dir, "probe_results.json", res)
    results_path = run_dir / "results.json"
    if results_path.exists():
        results = json.loads(results_path.read_text())
        n_bins = int(results.get("calibration_config", {}).get("n_bins", 15))
        cal, test = split(rf, res["split"]["cal_fraction"], res["split"]["seed"])
        if results.get("split", {}).get("n_test") not in (None, len(test)):
            raise ValueError(f"{results_path}: its test part has {results['split']['n_test']} items, this split "
                             f"{len(test)}; rerun `llmcal calibrate` with the same --cal_fraction/--seed")
        t = rf.subset(test)
        confs = predict_all(fitted, t)
        y = t.correct
        seed = res["split"]["seed"]
        results.setdefault("signals_test", {})["external"] = metrics_block(confs["external"], y, n_bins,
                                                                             bootstrap, seed)
        block = metrics_block(confs["combined"], y, n_bins, bootstrap, seed)
        block["params"] = {"probe": str(art_path), "weights": res.get("combined_weights"),
                           "calibrator": fitted.artifact.combiner.calibrator}
        results.setdefault("calibrated_test", {})["combined"] = block
        results.setdefault("reliability", {})["combined"] = M.reliability_data(
            np.asarray(confs["combined"]), y, n_bins=n_bins).to_dict()
        results["probe"] = res
        if res.get("shift") is not None:  # "38% of these questions look unlike your calibration data"
            results["shift"] = res["shift"]
        write_clean(run_dir, "results.json", results)
    return res
