"""The brief's checklist ("What you should do today"), answered from a run's own numbers.

1. Test your model's calibration: is it calibrated (ECE, over/under-confidence)?
2. If not, apply a temperature adjustment: which temperature, and how much did it help?
3. For critical applications, add a confidence filter at 0.75: what does it cost?
4. What to do next.
"""

from __future__ import annotations

from typing import Any

# An ECE under this is treated as "calibrated" in the wording (Guo et al. 2017
# report well-calibrated networks at a few percent).
CALIBRATED_ECE = 0.05


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def checklist(results: dict[str, Any]) -> list[tuple[str, str]]:
    """Return (question, answer) pairs in the brief's order."""
    primary = results.get("primary", {})
    signal = primary.get("signal", "option_prob")
    raw = results["signals_test"][signal]
    out: list[tuple[str, str]] = []

    over = raw.get("overconfidence")
    ece = raw.get("ece")
    if ece is None:
        verdict = "ECE could not be computed."
    elif ece <= CALIBRATED_ECE:
        verdict = f"Yes, roughly: ECE is {_pct(ece)}."
    else:
        direction = "overconfident" if (over or 0) > 0 else "underconfident"
        verdict = (
            f"No: ECE is {_pct(ece)}; the model is {direction} (mean confidence "
            f"{_pct(raw.get('mean_confidence'))} against accuracy {_pct(raw.get('accuracy'))}, "
            f"a gap of {_pct(abs(over or 0))})."
        )
    n_test = results["split"]["n_test"]
    out.append((f"Is the model calibrated? ({n_test} held-out questions, signal '{signal}')", verdict))

    cname = primary.get("calibrator")
    if cname and cname in results["calibrated_test"]:
        after = results["calibrated_test"][cname]
        params = after.get("params", {})
        t = params.get("temperature_")
        fix = f"temperature T = {t:.3f}" if isinstance(t, (int, float)) else cname
        if isinstance(t, (int, float)):
            fix += " (T > 1 softens overconfident probabilities)" if t > 1 else " (T < 1 sharpens underconfident ones)"
        rel = None
        if ece and after.get("ece") is not None:
            rel = (ece - after["ece"]) / ece
        answer = (
            f"{fix}, fitted on {results['split']['n_cal']} calibration questions: ECE "
            f"{_pct(ece)} -> {_pct(after.get('ece'))}"
            + (f" ({100 * rel:.0f}% {'lower' if rel >= 0 else 'higher'})" if rel is not None else "")
            + f", Brier {raw.get('brier', float('nan')):.3f} -> {after.get('brier', float('nan')):.3f}."
        )
    else:
        errs = results.get("calibrator_errors", {})
        answer = "No calibrator could be fitted: " + "; ".join(f"{k}: {v}" for k, v in errs.items())
    title = "Which temperature fixes it" if (cname or "temperature") == "temperature" else "Which calibrator fixes it"
    out.append((f"{title}, and by how much?", answer))

    filt = results["filter"].get("calibrated") or results["filter"]["raw"]
    thr = filt["threshold"]
    out.append((
        f"What does a confidence filter at {thr:.2f} cost?",
        f"It answers {_pct(filt['coverage'])} of questions ({filt['answered']} of "
        f"{filt['answered'] + filt['abstained']}) with accuracy {_pct(filt['accuracy_answered'])} "
        f"on those, against {_pct(filt['accuracy_all'])} when answering everything.",
    ))

    rc = results.get("risk_control")
    if rc:
        if rc.get("threshold") is None or rc.get("cal_coverage", 0) == 0:
            txt = (f"No threshold can be certified from {rc['n_cal']} calibration questions (the "
                   f"{100 * (1 - rc['delta']):.0f}% upper bound on the error never fell under "
                   f"{_pct(rc['target_error'])}): abstain, or calibrate on more questions.")
        else:
            t = rc["test"]
            txt = (f"Answer at confidence >= {rc['threshold']:.3f}: on the calibration part it answers "
                   f"{_pct(rc['cal_coverage'])} with error {_pct(rc['cal_error'])} (upper bound "
                   f"{_pct(rc['cal_error_upper'])}); on the test part it answers {_pct(t['coverage'])} with "
                   f"error {_pct(t['error'])}.")
        out.append((f"Which threshold keeps errors under {_pct(rc['target_error'])} among answered "
                    f"questions (guaranteed with {100 * (1 - rc['delta']):.0f}% probability)?", txt))

    nxt = []
    if ece is not None and ece > CALIBRATED_ECE:
        nxt.append("deploy the fitted calibrator (calibration.json) in front of the model")
    if filt["coverage"] is not None and filt["coverage"] < 0.2:
        nxt.append("the filter abstains on most questions: lower the threshold or improve accuracy first")
    auroc = raw.get("auroc")
    if auroc is not None and auroc < 0.7:
        nxt.append(
            f"confidence separates right from wrong only weakly (AUROC {auroc:.2f}); "
            "temperature cannot fix ranking: try other signals or an external probe on the hidden states"
        )
    nxt.append("re-check on questions from your real use case (a calibrator fitted on one task may not transfer)")
    out.append(("What next?", "; ".join(nxt) + "."))
    return out
