"""``llmcal calibrate --from-feedback DB --run RUN``: refit the served calibration on what users labeled.

The answer log holds, for every served answer, the raw signal values and, once feedback came,
whether the answer was right.  That is a calibration set drawn from the questions users really
ask, so when the monitor says the calibration drifted (:mod:`llmcal.pipeline.monitor`) the fix
is to fit on it:

1. the labeled answers (optionally only the last ``last`` or those since ``since``) that carry
   the run's primary signal (``option_prob``, ``mean_token_prob``, ...) are split, seeded, into
   a fitting part and a held-out part (``held_out``, default 30%);
2. among the binary calibrators (Platt, isotonic, histogram, beta: the ones that map a signal
   value to a probability, since the log holds values, not option logits) the one with the
   lowest 5-fold cross-validated Brier score on the fitting part is fitted on all of it;
3. **the held-out check**: its ECE on the held-out part must be below the ECE of the
   confidences users were shown for those same answers; otherwise nothing is written;
4. the new calibration becomes the run's primary (``feedback-<calibrator>`` in
   ``calibration.json``, with what it was fitted on and its held-out ECE in ``fitted_on``: the
   monitor's baseline for the new version); the previous file is kept under
   ``calibration-versions/<version>.json``; both writes are atomic, under the run folder's lock;
5. optionally ``POST <serve>/admin/reload`` with the API key, so a running serve picks it up.

A version is the first 12 hex digits of the sha256 of ``calibration.json``'s bytes
(:func:`llmcal.pipeline.monitor.calibration_version`).
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llmcal.calibrators.calibration import Calibration, CalibrationSet
from llmcal.metrics.calibration import ece
from llmcal.metrics.scores import brier_score
from llmcal.pipeline.monitor import VERSIONS_DIR, calibration_version
from llmcal.records.answer_log import AnswerLog, LabeledAnswer
from llmcal.records.run_dir import RunDir

#: The calibrators a feedback refit chooses among (value -> probability maps).
FEEDBACK_CALIBRATORS = ("platt", "isotonic", "histogram", "beta")
MIN_LABELED = 40


@dataclass
class FeedbackFit:
    """What a refit did: the chosen calibrator, the held-out check, the versions before and after."""

    calibrator: str
    signal: str
    n_fit: int
    n_held_out: int
    held_out_ece_before: float
    held_out_ece_after: float
    cv_brier: dict[str, float | None]  # None: the calibrator could not be fitted (e.g. Platt on an inverted signal)
    previous_version: str
    version: str | None = None  # None when not written (the check failed, or dry run)
    written: bool = False
    reload: dict[str, Any] | None = None
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.held_out_ece_after < self.held_out_ece_before

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("calibrator", "signal", "n_fit", "n_held_out", "held_out_ece_before",
                                              "held_out_ece_after", "cv_brier", "previous_version", "version",
                                              "written", "reload", "skipped")} | {"passed": self.passed}


def _usable(labeled: Sequence[LabeledAnswer], signal: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(values, correct, shown confidence) of the answers that carry ``signal`` as a number in [0, 1]."""
    vals, ys, shown = [], [], []
    missing = 0
    for a in labeled:
        v = a.signals.get(signal)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
            missing += 1
            continue
        vals.append(float(v))
        ys.append(bool(a.correct))
        shown.append(a.confidence)
    return np.array(vals), np.array(ys, dtype=bool), np.array(shown), missing


def _cv_brier(name: str, v: np.ndarray, y: np.ndarray, folds: int, seed: int, kw: dict[str, Any]) -> float:
    """Mean out-of-fold Brier score of ``name`` fitted on ``v`` -> ``y`` (inf when it cannot be fitted)."""
    order = np.random.default_rng(seed + 1).permutation(v.size)
    parts = np.array_split(order, folds)
    scores = []
    for i in range(folds):
        test = parts[i]
        train = np.concatenate([p for j, p in enumerate(parts) if j != i])
        if len(np.unique(y[train])) < 2 or test.size == 0:
            continue
        try:
            cal = Calibration.fit_arrays(kw["signal"], name, y[train], values=v[train], kind=kw["kind"])
        except ValueError:
            return float("inf")
        scores.append(brier_score(cal.predict(values=v[test]), y[test]))
    return float(np.mean(scores)) if scores else float("inf")


def fit_from_feedback(answer_log: AnswerLog, run_dir: str | Path, calibrators: Sequence[str] = FEEDBACK_CALIBRATORS,
                      held_out: float = 0.3, seed: int = 0, min_labeled: int = MIN_LABELED, n_bins: int = 10,
                      last: int | None = None, since: float | None = None, write: bool = True) -> FeedbackFit:
    """Refit ``run_dir``'s primary calibration on the log's labeled answers (see the module docstring)."""
    rd = RunDir(run_dir)
    cal_path = rd.calibration_path
    if not cal_path.is_file():
        raise FileNotFoundError(f"{cal_path}: not found; --from-feedback refits a run's calibration "
                                "(run `llmcal run` first)")
    raw = cal_path.read_bytes()
    try:
        cset = CalibrationSet.from_dict(json.loads(raw), where=str(cal_path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{cal_path}: not JSON ({err})") from None
    primary = cset.primary
    if primary is None:
        raise ValueError(f"{cal_path}: the run has no primary calibration to refit")
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"--held_out must be a fraction in (0, 1), got {held_out}")
    unknown = [c for c in calibrators if c not in FEEDBACK_CALIBRATORS]
    if unknown or not calibrators:
        raise ValueError(f"--calibrators for a feedback refit: choose among {', '.join(FEEDBACK_CALIBRATORS)} "
                         f"(got {', '.join(unknown) or 'none'})")
    labeled = answer_log.labeled(since=since)
    if last is not None:
        if last < 1:
            raise ValueError(f"--last must be >= 1, got {last}")
        labeled = labeled[-last:]
    signal = primary.signal
    v, y, shown, missing = _usable(labeled, signal)
    if v.size < min_labeled:
        raise ValueError(f"{answer_log.shown_url}: {v.size} labeled answers carry the {signal!r} signal "
                         f"({missing} others lack it); a refit needs at least {min_labeled}")
    if y.all() or not y.any():
        raise ValueError(f"{answer_log.shown_url}: all {v.size} labeled answers are "
                         f"{'right' if y.all() else 'wrong'}; a refit needs both")
    order = np.random.default_rng(seed).permutation(v.size)
    n_ho = max(1, int(round(held_out * v.size)))
    ho, fit = order[:n_ho], order[n_ho:]
    kw = {"signal": signal, "kind": primary.kind}
    cv = {name: _cv_brier(name, v[fit], y[fit], 5, seed, kw) for name in calibrators}
    best = min(cv, key=lambda n: cv[n])
    if not np.isfinite(cv[best]):
        raise ValueError(f"no calibrator could be fitted on the {fit.size} labeled answers ({', '.join(calibrators)})")
    before = ece(shown[ho], y[ho], n_bins=n_bins)
    draft = Calibration.fit_arrays(signal, best, y[fit], values=v[fit], kind=primary.kind)
    after = ece(draft.predict(values=v[ho]), y[ho], n_bins=n_bins)
    prev = calibration_version(raw)
    result = FeedbackFit(best, signal, int(fit.size), int(ho.size), float(before), float(after),
                         {k: (round(s, 6) if np.isfinite(s) else None) for k, s in cv.items()}, prev,
                         skipped={"missing_signal": missing})
    if not write or not result.passed:
        return result
    fitted_on = {"source": "feedback", "db": answer_log.shown_url, "n": int(fit.size), "held_out_n": int(ho.size),
                 "held_out_ece": float(after), "held_out_ece_before": float(before), "previous_version": prev,
                 "cv_brier": result.cv_brier, "seed": seed, "n_bins": n_bins,
                 "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    new = Calibration.fit_arrays(signal, best, y[fit], values=v[fit], kind=primary.kind,
                                 threshold=primary.threshold, fingerprint=primary.fingerprint,
                                 context=primary.context, **fitted_on)
    payload = cset.to_dict()
    name = f"feedback-{best}"
    payload["calibrations"][name] = new.to_dict()
    payload["primary"] = name
    CalibrationSet.from_dict(payload, where="the refit calibration")  # what serve will read must load
    data = json.dumps(payload, indent=1).encode("utf-8")
    with rd.lock():
        (rd.path / VERSIONS_DIR).mkdir(exist_ok=True)
        archive = rd.path / VERSIONS_DIR / f"{prev}.json"
        if not archive.exists():
            rd.write_bytes(archive, raw, point="in_calibration_archive")
        rd.write_bytes(cal_path, data, point="in_calibration_write")
        rd.track(VERSIONS_DIR)
    result.version = calibration_version(data)
    result.written = True
    return result


def request_reload(url: str, api_key: str | None, timeout: float = 30.0) -> dict[str, Any]:
    """``POST <url>/admin/reload`` (a running ``llmcal serve``); its JSON answer, or a ValueError saying why not."""
    import httpx

    base = url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.post(f"{base}/admin/reload", headers=headers, timeout=timeout)
    except httpx.HTTPError as err:
        raise ValueError(f"--reload {base}: the server could not be reached ({err}); the new calibration is "
                         "written: send SIGHUP or POST /admin/reload later") from None
    if r.status_code != 200:
        raise ValueError(f"--reload {base}: POST /admin/reload answered {r.status_code} ({r.text[:200]}); the new "
                         "calibration is written")
    try:
        return dict(r.json())
    except ValueError:
        return {"status": r.status_code}
