"""Apply a saved calibration to another run: ``llmcal calibrate TARGET --from SOURCE`` and :func:`transfer`.

A calibration is fitted on the tasks a user has labels for (the *source* run) and used on the
questions the model will really see (the *target*).  Whether it still holds there is an empirical
question, and this module answers it the way in-task results are answered: on the target's test
part (its own seeded per-task split), with the same metrics and bootstrap intervals as
``results.json``, side by side with

* the raw signals of the target (what no calibration gives);
* every calibration of the source's ``calibration.json`` applied **unchanged**, and its probe's
  ``combined`` when the source folder holds ``probe.json`` and the target kept hidden states;
* a **constant confidence** equal to the source's accuracy, the simplest calibration that transfers:
  every transferred row that does not beat it on ECE and on the Brier score is flagged
  (``beats_constant: false``, see :func:`judge`);
* the target's **own in-task fit** of the same calibrators on its calibration part (what labels
  on the target would buy);
* with ``adapt="unlabeled"``, each calibration rescaled to the target's estimated accuracy from
  the target's questions without their answers (:mod:`llmcal.calibrators.unlabeled`: ATC, Garg et
  al. 2022, or DoC, Guillory et al. 2021): a new temperature for a temperature over the options,
  a logit shift for any other.  The target's calibration part is read without its labels.

The result is written atomically into the target folder as ``transfer.json`` and returned as a
:class:`TransferResult`.  Refused with a message naming the file: a source without
``calibration.json``, a calibration fitted for another model (fingerprint), runs of different
kinds (multiple choice against free-form answers).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from llmcal.calibrators.calibration import Calibration, CalibrationSet, model_fingerprint
from llmcal.core.sample import Sample
from llmcal.core.split import split_indices
from llmcal.records.results import clean
from llmcal.records.run_dir import RunDir

__all__ = ["transfer", "TransferResult", "evaluate_transfer", "adapt_calibration", "constant_row",
           "ADAPT_MODES", "DEFAULT_ESTIMATOR", "TRANSFER_FILE"]

TRANSFER_FILE = "transfer.json"
#: ``adapt`` values: None (apply unchanged) or ``"unlabeled"`` (rescale to the estimated target accuracy).
ADAPT_MODES = (None, "unlabeled")
#: The accuracy estimator of ``adapt="unlabeled"`` per kind of run (``"atc"`` / ``"doc"``, ``@SIGNAL``: read
#: Platt on SIGNAL, see :func:`parse_estimator`), chosen by leave-one-task-out over the eight
#: multiple-choice tasks (benchmarks/transfer.py; docs/benchmarks.md "Under shift"); free-form runs
#: have no ``option_prob_norm``, so they read each calibration itself.
DEFAULT_ESTIMATOR = {"mc": "atc_prior@option_prob_norm", "open": "doc"}


# ------------------------------------------------------------------ rows of the table
def _metrics(conf: np.ndarray, correct: np.ndarray, n_bins: int, n_boot: int, seed: int) -> dict[str, Any]:
    from llmcal.pipeline.evaluate import metrics_with_ci

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a one-class test part: AUROC is nan, said by the value
        return metrics_with_ci(np.asarray(conf, dtype=np.float64), correct, n_bins, n_boot, seed)


def constant_row(confidence: float, correct: np.ndarray, n_bins: int, n_boot: int, seed: int) -> dict[str, Any]:
    """The constant-confidence baseline on a test part: every answer gets ``confidence``."""
    row = _metrics(np.full(len(correct), float(confidence)), correct, n_bins, n_boot, seed)
    row["confidence"] = float(confidence)
    return row


def judge(row: dict[str, Any], constant: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with its comparison to the constant baseline, on ECE and on the Brier score.

    ``beats_constant_ece`` / ``beats_constant_brier``: strictly lower than the constant's;
    ``beats_constant``: both (a row that loses on either is flagged).  The Brier score is the
    proper score of the pair: a constant equal to the base rate is the forecasters' climatology
    reference, and only a confidence that tells right from wrong beats it, whereas a constant's ECE
    is just the base-rate gap (near 0 in-task).  ``interval_spans_constant`` /
    ``brier_interval_spans_constant``: the row's 95% interval holds the constant's value, so the
    test part is too small to tell them apart.
    """
    ci = row.get("ci95") or {}
    for metric, beats, spans in (("ece", "beats_constant_ece", "interval_spans_constant"),
                                 ("brier", "beats_constant_brier", "brier_interval_spans_constant")):
        v, base = row.get(metric), constant.get(metric)
        row[beats] = bool(v is not None and base is not None and v < base)
        lo_hi = ci.get(metric)
        row[spans] = bool(lo_hi and lo_hi[0] is not None and base is not None and lo_hi[0] <= base <= lo_hi[1])
    row["beats_constant"] = row["beats_constant_ece"] and row["beats_constant_brier"]
    return row


# ------------------------------------------------------------------ label-free adaptation
def _with_temperature(cal: Calibration, t: float) -> Calibration:
    from llmcal.calibrators.registry import from_dict

    state = cal.state.to_dict()
    state["temperature_"] = float(t)
    return Calibration(signal=cal.signal, calibrator=cal.calibrator, state=from_dict(state), kind=cal.kind,
                       fingerprint=cal.fingerprint, fitted_on=dict(cal.fitted_on), threshold=cal.threshold,
                       context=dict(cal.context))


def _usable(cal: Calibration, samples: Sequence[Any]) -> list[Any]:
    """The samples ``cal`` can score (a free-form answer may lack its signal; multiple choice has all)."""
    return [s for s in samples if cal.uses_logits or cal.signal in s.signals]


@dataclass
class Adapted:
    """A calibration rescaled to a target: ``confidences(samples)`` and what was done (``info``)."""

    base: Calibration
    info: dict[str, Any]
    calibration: Calibration | None = None  # the rescaled temperature calibration, when it is one

    def confidences(self, samples: Sequence[Any]) -> np.ndarray:
        from llmcal.calibrators.unlabeled import apply_logit_shift, shrink_toward

        if self.calibration is not None:
            conf = self.calibration.confidences(samples)
        else:
            conf = apply_logit_shift(self.base.confidences(samples), self.info["logit_shift"])
        shrink = self.info.get("shrink", 1.0)
        return conf if shrink == 1.0 else shrink_toward(conf, self.info["estimated_accuracy"], shrink)


def adapt_calibration(cal: Calibration, source_samples: Sequence[Any], target_samples: Sequence[Any],
                      estimator: str = "doc", reference: Calibration | None = None,
                      shrink: float = 1.0) -> Adapted:
    """Rescale ``cal`` so its mean confidence on the unlabeled ``target_samples`` equals the target
    accuracy that ``estimator`` predicts from them (the labels of ``source_samples`` are used, the
    target's never are).  ``reference``: the calibration whose confidences the estimator reads
    (default ``cal`` itself; e.g. one on ``option_prob_norm``, a better gauge of difficulty).
    ``shrink`` in (0, 1]: then pull each confidence toward the estimate by that factor
    (:func:`llmcal.calibrators.unlabeled.shrink_toward`; ranking and mean kept; 1 = none)."""
    from llmcal.calibrators.unlabeled import (T_BOUNDS, estimate_accuracy, logit_shift_for_mean,
                                              solve_monotone)

    if not 0.0 < float(shrink) <= 1.0:
        raise ValueError(f"adapt_calibration: shrink must be in (0, 1], got {shrink!r}")

    ref = cal if reference is None else reference
    source_samples = _usable(ref, source_samples)
    src_y = np.array([bool(s.correct) for s in source_samples], dtype=float)
    tgt_conf = cal.confidences(target_samples)
    est = estimate_accuracy(estimator, ref.confidences(source_samples), src_y,
                            ref.confidences(_usable(ref, target_samples)))
    info: dict[str, Any] = {"estimator": estimator, "estimated_accuracy": est, "read": ref.describe(),
                            "mean_confidence_before": float(tgt_conf.mean()), "n_unlabeled": len(target_samples),
                            "shrink": float(shrink)}
    state = cal.state.to_dict() if cal.state is not None else {}
    # a temperature over the options: the mean top probability falls monotonically with T; the binary
    # form sigmoid(logit(p) / T) only pulls towards 1/2, so it (like any other calibrator) is shifted
    if cal.uses_logits and "temperature_" in state:
        lo, hi = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
        log_t = solve_monotone(lambda lt: float(_with_temperature(cal, np.exp(lt)).confidences(target_samples).mean()),
                               lo, hi, est, increasing=False, steps=50)
        new = _with_temperature(cal, float(np.exp(log_t)))
        info.update(method="temperature", temperature_before=float(state["temperature_"]),
                    temperature_=float(np.exp(log_t)), at_bound=bool(min(abs(log_t - lo), abs(log_t - hi)) < 1e-6))
        return Adapted(cal, info, new)
    info.update(method="logit_shift", logit_shift=logit_shift_for_mean(tgt_conf, est))
    return Adapted(cal, info)


def parse_estimator(spec: str, source_samples: Sequence[Any]) -> tuple[str, Calibration | None]:
    """``"atc"`` / ``"doc"``, optionally ``@SIGNAL``: the estimator, and the gauge it reads -- None (each
    calibration's own confidence) or Platt on SIGNAL fitted on the source's calibration part."""
    from llmcal.calibrators.unlabeled import ESTIMATORS

    name, _, signal = str(spec).partition("@")
    if name not in ESTIMATORS:
        raise ValueError(f"--estimator: {spec!r}; expected {', '.join(ESTIMATORS)}, optionally @SIGNAL "
                         f"(e.g. atc@option_prob_norm)")
    if not signal:
        return name, None
    try:
        return name, Calibration.fit(list(source_samples), signal, "platt")
    except ValueError as err:
        raise ValueError(f"--estimator {spec}: the gauge (platt on {signal}) cannot be fitted on the source: "
                         f"{err}") from None


# ------------------------------------------------------------------ the evaluation
def evaluate_transfer(calibrations: Mapping[str, Calibration], source_samples: Sequence[Sample],
                      target_samples: Sequence[Sample], cal_idx: np.ndarray, test_idx: np.ndarray, *,
                      source_accuracy: float | None = None, adapt: str | None = None,
                      estimator: str | None = None, extra: Mapping[str, np.ndarray] | None = None,
                      shrink: float | None = None, in_task: bool = True, n_bins: int = 15, n_bootstrap: int = 1000,
                      seed: int = 0) -> dict[str, Any]:
    """The transfer table on arrays already in memory (what :func:`transfer` and the benchmark share).

    ``calibrations``: the source's fitted calibrations by name; ``source_samples``: the source's
    calibration part (labels used for the constant and for ATC/DoC); ``target_samples`` with its
    ``cal_idx`` / ``test_idx`` split; ``extra``: more transferred confidences on the target's test
    part, (n_test,) each (the probe's ``combined``).
    """
    from llmcal.calibrators.unlabeled import CONFIDENCE_SHRINK

    if adapt not in ADAPT_MODES:
        raise ValueError(f"--adapt: {adapt!r} is not one of: unlabeled")
    y = np.array([bool(s.correct) for s in target_samples], dtype=float)
    test = [target_samples[i] for i in test_idx]
    y_test = y[test_idx]
    if source_accuracy is None:
        source_accuracy = float(np.mean([bool(s.correct) for s in source_samples]))
    kw = dict(n_bins=n_bins, n_boot=n_bootstrap, seed=seed)
    const = constant_row(source_accuracy, y_test, **kw)
    if estimator is None:
        estimator = DEFAULT_ESTIMATOR[target_samples[0].kind]
    est_name, gauge = parse_estimator(estimator, source_samples) if adapt else (estimator, None)
    out: dict[str, Any] = {"constant": const, "raw": {}, "transferred": {}, "adapted": {}, "in_task": {},
                           "in_task_errors": {}}
    names = sorted(test[0].signals) if test else []
    for name in names:
        vals = np.array([s.signals.get(name, np.nan) for s in test], dtype=float)
        if np.isnan(vals).any():
            continue
        out["raw"][name] = judge(_metrics(vals, y_test, **kw), const)
    for cname, cal in calibrations.items():
        # a free-form answer may lack a signal (an unreadable verbalized reply): left out of that row, counted
        keep = np.array([cal.uses_logits or cal.signal in s.signals for s in test], dtype=bool)
        row = judge(_metrics(cal.confidences([s for s, k in zip(test, keep) if k]), y_test[keep], **kw), const)
        row["n_missing"] = int((~keep).sum())
        row["calibration"] = cal.describe()
        row["params"] = cal.state.to_dict() if cal.state is not None else None
        out["transferred"][cname] = row
        if adapt == "unlabeled":
            unlabeled = [target_samples[i] for i in cal_idx]
            a = adapt_calibration(cal, source_samples, _usable(cal, unlabeled), est_name, reference=gauge,
                                  shrink=CONFIDENCE_SHRINK if shrink is None else shrink)
            arow = judge(_metrics(a.confidences([s for s, k in zip(test, keep) if k]), y_test[keep], **kw), const)
            arow["adaptation"] = {**a.info, "spec": estimator}
            out["adapted"][cname] = arow
    for name, conf in (extra or {}).items():
        out["transferred"][name] = judge(_metrics(conf, y_test, **kw), const)
    if in_task:
        own = [target_samples[i] for i in cal_idx]
        for cname, cal in calibrations.items():
            try:
                fitted = Calibration.fit(own, cal.signal, cal.calibrator, seed=seed)
            except ValueError as err:
                out["in_task_errors"][cname] = str(err)
                continue
            out["in_task"][cname] = _metrics(fitted.confidences(test), y_test, **kw)
    out["estimator"] = estimator if adapt else None
    out["worse_than_constant"] = sorted(
        f"{section}:{n}" for section in ("transferred", "adapted") for n, r in out[section].items()
        if not r["beats_constant"])
    out["worse_than_constant_ece"] = sorted(
        f"{section}:{n}" for section in ("transferred", "adapted") for n, r in out[section].items()
        if not r["beats_constant_ece"])
    return out


# ------------------------------------------------------------------ run folders
@dataclass
class TransferResult:
    """What :func:`transfer` found: ``results`` (the contents of ``transfer.json``) and its path."""

    source: Path
    target: Path
    results: dict[str, Any] = field(repr=False)
    path: Path | None = None
    calibrations: CalibrationSet | None = field(default=None, repr=False)

    @property
    def flagged(self) -> list[str]:
        """The transferred (and adapted) rows that do not beat the constant baseline."""
        return list(self.results["worse_than_constant"])

    def table(self) -> str:
        """The rows as a plain-text table, as the command prints them."""
        return transfer_table(self.results)


def _fmt(x: Any) -> str:
    return "  n/a" if x is None or (isinstance(x, float) and x != x) else f"{x:.3f}"


def transfer_table(res: Mapping[str, Any]) -> str:
    """A plain-text table of a ``transfer.json``: ECE [95% interval], Brier, AUROC, and the flag."""
    rows: list[tuple[str, Mapping[str, Any], bool]] = []  # (label, metrics, flagged against the constant)
    c = res["constant"]
    rows.append((f"constant = source accuracy {c['confidence']:.3f}", c, False))
    rows += [(f"raw {n}", r, False) for n, r in res["raw"].items()]
    rows += [(f"transferred {n}", r, True) for n, r in res["transferred"].items()]
    for n, r in res["adapted"].items():
        a = r["adaptation"]
        rows.append((f"{n} + unlabeled ({a.get('spec', a['estimator'])}, acc~{a['estimated_accuracy']:.2f})", r, True))
    rows += [(f"in-task {n} (target's own labels)", r, False) for n, r in res["in_task"].items()]
    width = max(len("confidence"), *(len(label) for label, _, _ in rows))  # the longest label sets the column
    header = f"{'confidence':<{width}} {'ECE':>6} {'95% interval':>15} {'Brier':>6} {'AUROC':>6}  vs constant"
    lines = [header, "-" * (len(header) + 27)]  # room for the longest verdict
    for label, r, flag in rows:
        ci = (r.get("ci95") or {}).get("ece")
        ci_txt = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci and ci[0] is not None else ""
        verdict = ""
        if flag:
            verdict = "beats it" if r.get("beats_constant") else "FLAGGED: worse on " + " and ".join(
                m for m, k in (("ECE", "beats_constant_ece"), ("Brier", "beats_constant_brier")) if not r.get(k))
            if r.get("interval_spans_constant"):
                verdict += " (ECE: too few items to tell)"
        lines.append(f"{label:<{width}} {_fmt(r.get('ece')):>6} {ci_txt:>15} {_fmt(r.get('brier')):>6} "
                     f"{_fmt(r.get('auroc')):>6}  {verdict}")
    for n, e in res.get("in_task_errors", {}).items():
        lines.append(f"in-task {n}: not fitted ({e})")
    shift = res.get("shift")
    if shift:
        lines.append("")
        lines.append("shift: " + (shift.get("verdict") or f"not measured ({shift.get('skipped')})"))
    return "\n".join(lines)


def _source_calibrations(source: RunDir) -> CalibrationSet:
    path = source.calibration_path
    if not path.exists():
        raise FileNotFoundError(f"{path}: no calibration.json in the source run; run `llmcal calibrate "
                                f"{source.path}` first")
    cset = CalibrationSet.load(path)
    if not cset.by_name:
        raise ValueError(f"{path}: the source run fitted no calibration (every calibrator failed)")
    return cset


def _check_compatible(cset: CalibrationSet, cal_path: Path, target: RunDir, target_config: Mapping[str, Any]) -> None:
    kind = target_config.get("kind", "mc")
    if cset.kind != kind:
        what = {"mc": "multiple-choice", "open": "free-form"}
        raise ValueError(f"{cal_path}: a {what[cset.kind]} calibration cannot be applied to {target.path}, a "
                         f"{what.get(kind, kind)} run ({target.config_path})")
    fp = model_fingerprint(target_config)
    for name, cal in cset.by_name.items():
        why = cal.mismatch(fp)
        if why:
            raise ValueError(f"{cal_path}: calibration {name!r} was fitted for another model than {target.path}'s: "
                             f"{target.config_path} has {why}")


def _features(run: RunDir, loaded: dict[Path, Any]):
    """``run``'s probe features, read once per transfer (the probe rows and the shift test both need the
    target's), or None when it kept no hidden states."""
    if not run.hidden_meta_path.exists():
        return None
    if run.path not in loaded:
        from llmcal.probe.features import load_run_features

        loaded[run.path] = load_run_features(run.path, compute_fingerprint=False)
    return loaded[run.path]


def _probe_rows(source: RunDir, target: RunDir, test_idx: np.ndarray, n_target: int,
                loaded: dict[Path, Any]) -> dict[str, np.ndarray]:
    """The source's ``combined`` on the target's test part, when both folders allow it (else {})."""
    probe_json = source.path / "probe.json"
    if not probe_json.exists() or not target.hidden_meta_path.exists():
        return {}
    from llmcal.probe.artifact import ProbeArtifact

    art = ProbeArtifact.load(probe_json)
    rf = _features(target, loaded)
    if len(rf) != n_target:
        raise ValueError(f"{target.path}: {len(rf)} items with features but {n_target} samples")
    pred = art.predict(rf.subset(test_idx))  # check_model refuses another model's activations
    return {"combined": pred["combined"]} if "combined" in pred else {}


def _domain_shift(source: RunDir, target: RunDir, source_split: tuple[np.ndarray, np.ndarray],
                  target_split: tuple[np.ndarray, np.ndarray], seed: int,
                  loaded: dict[Path, Any]) -> dict[str, Any] | None:
    """How unlike the source's calibration data the target's questions are (the classifier two-sample
    test of :class:`llmcal.probe.shift.DomainShift`), when both runs kept hidden states of the same model."""
    if not (source.hidden_meta_path.exists() and target.hidden_meta_path.exists()):
        return None
    from llmcal.probe.features import same_model
    from llmcal.probe.shift import DomainShift

    src_rf, tgt_rf = _features(source, loaded), _features(target, loaded)
    why = same_model(src_rf.model, tgt_rf.model)
    if why:
        return {"method": "domain_classifier", "skipped": f"the runs' hidden states are not comparable: {why}"}
    if min(len(source_split[0]), len(source_split[1]), len(target_split[0]), len(target_split[1])) < 2:
        return {"method": "domain_classifier", "skipped": "too few items in a calibration or test part"}
    return DomainShift.between(src_rf, source_split, tgt_rf, target_split, seed=seed).to_json()


def transfer(source: str | Path, target: str | Path, adapt: str | None = None, *,
             estimator: str | None = None, cal_fraction: float | None = None, seed: int | None = None,
             n_bins: int = 15, n_bootstrap: int = 1000, probe: bool = True, write: bool = True) -> TransferResult:
    """Apply the calibration of run folder ``source`` to run folder ``target``; see the module docstring.

    The target's split is its results.json's (else ``cal_fraction`` 0.5, ``seed`` 0); the source's
    accuracy (the constant) and ATC/DoC's labels come from the source's calibration part, with the
    split its calibration was fitted with.  ``write``: put ``transfer.json`` in the target folder.
    """
    from llmcal.pipeline.probe_step import split_defaults

    if adapt not in ADAPT_MODES:
        raise ValueError(f"--adapt: {adapt!r} is not one of: unlabeled")
    src, tgt = RunDir(source), RunDir(target)
    cset = _source_calibrations(src)
    tgt_config = tgt.config()
    _check_compatible(cset, src.calibration_path, tgt, tgt_config)
    with src.lock(exclusive=False):
        src_samples = src.read_samples()
    first = cset.primary or next(iter(cset.by_name.values()))
    s_cal, s_test = split_indices([s.task for s in src_samples], float(first.fitted_on.get("cal_fraction", 0.5)),
                                  int(first.fitted_on.get("seed", 0)))
    src_cal = [src_samples[i] for i in s_cal]
    with tgt.lock(exclusive=False):
        tgt_samples = tgt.read_samples()
    if len(tgt_samples) < 4:
        raise ValueError(f"{tgt.samples_path}: {len(tgt_samples)} samples; need at least 4 to split")
    cal_fraction, seed = split_defaults(tgt.path, cal_fraction, seed)
    cal_idx, test_idx = split_indices([s.task for s in tgt_samples], cal_fraction, seed)
    loaded: dict[Path, Any] = {}  # run folder -> its features, read at most once
    extra = _probe_rows(src, tgt, test_idx, len(tgt_samples), loaded) if probe else {}
    res = evaluate_transfer(cset.by_name, src_cal, tgt_samples, cal_idx, test_idx, adapt=adapt,
                            estimator=estimator, extra=extra, n_bins=n_bins, n_bootstrap=n_bootstrap, seed=seed)
    payload = {"source": str(src.path), "target": str(tgt.path), "kind": cset.kind, "primary": cset.primary_name,
               "source_tasks": sorted({s.task for s in src_samples}),
               "target_tasks": sorted({s.task for s in tgt_samples}),
               "split": {"seed": seed, "cal_fraction": cal_fraction, "n_cal": int(len(cal_idx)),
                         "n_test": int(len(test_idx))},
               "adapt": adapt, **res}
    if probe:
        shift = _domain_shift(src, tgt, (s_cal, s_test), (cal_idx, test_idx), seed, loaded)
        if shift is not None:
            payload["shift"] = shift
    payload = clean(payload)
    out_path = None
    if write:
        out_path = tgt.path / TRANSFER_FILE
        tgt.write_json(out_path, payload, allow_nan=False)  # atomic (core/files.py), listed in the manifest
    return TransferResult(source=src.path, target=tgt.path, results=payload, path=out_path, calibrations=cset)
