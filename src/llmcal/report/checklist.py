"""The brief's checklist ("What you should do today"), answered from a run's own numbers.

1. Test your model's calibration: is it calibrated (ECE, over/under-confidence)?
2. If not, apply a temperature adjustment: which temperature, and how much did it help?
3. For critical applications, add a confidence filter at 0.75: what does it cost?
4. Should the fitted calibration be deployed?  Not when nothing could be fitted, when it made
   the held-out ECE worse, or when it does not beat a constant confidence equal to the
   calibration part's accuracy (``results["baseline"]``) on the Brier score, the proper score
   (a constant is the forecasters' climatology reference; its ECE is only the base-rate gap,
   near 0 on its own task, so ECE alone would refuse every calibrator); and when the held-out
   Brier interval holds the constant's, the held-out part is too small to tell, and it says so.
5. What to do next.

The same questions are answered for both kinds of run (multiple choice and free form): both
results layouts carry ``signals_test``, ``calibrated_test``, ``calibrator_errors`` and ``baseline``.
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
    errs = results.get("calibrator_errors", {})
    after = results["calibrated_test"].get(cname) if cname else None
    out.append(_fix_question(results, cname, after, errs, ece, raw))

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

    out.append(("Should you deploy the fitted calibration?", deploy_verdict(results)))

    nxt = []
    if filt["coverage"] is not None and filt["coverage"] < 0.2:
        nxt.append("the filter abstains on most questions: lower the threshold or improve accuracy first")
    auroc = raw.get("auroc")
    if auroc is not None and auroc < 0.7:
        nxt.append(
            f"confidence separates right from wrong only weakly (AUROC {auroc:.2f}); "
            "temperature cannot fix ranking: try other signals or an external probe on the hidden states"
        )
    nxt.append("re-check on questions from your real use case (a calibrator fitted on one task may not transfer: "
               "`llmcal calibrate TARGET_RUN --from THIS_RUN` measures it)")
    out.append(("What next?", "; ".join(nxt) + "."))
    return out


def _fix_question(results: dict[str, Any], cname: str | None, after: dict[str, Any] | None,
                  errs: dict[str, str], ece: float | None, raw: dict[str, Any]) -> tuple[str, str]:
    """"Which temperature fixes it?": answered by temperature only; a failed temperature fit is said
    as such, and another calibrator that stood in is named as the stand-in it is."""
    asked_temperature = cname == "temperature" or "temperature" in errs
    title = "Which temperature fixes it, and by how much?" if asked_temperature else \
        "Which calibrator fixes it, and by how much?"
    parts = []
    if "temperature" in errs:
        parts.append(f"No temperature: temperature scaling could not be fitted ({errs['temperature']}).")
    if after is not None:
        params = after.get("params", {})
        t = params.get("temperature_") if cname == "temperature" else None
        fix = f"temperature T = {t:.3f}" if isinstance(t, (int, float)) else f"the {cname} calibrator"
        if isinstance(t, (int, float)):
            fix += " (T > 1 softens overconfident probabilities)" if t > 1 else " (T < 1 sharpens underconfident ones)"
        rel = (ece - after["ece"]) / ece if ece and after.get("ece") is not None else None
        lead = f"Instead, {fix}" if "temperature" in errs else fix[0].upper() + fix[1:]
        parts.append(
            f"{lead}, fitted on {results['split']['n_cal']} calibration questions: ECE "
            f"{_pct(ece)} -> {_pct(after.get('ece'))}"
            + (f" ({100 * abs(rel):.0f}% {'lower' if rel >= 0 else 'higher'})" if rel is not None else "")
            + f", Brier {raw.get('brier', float('nan')):.3f} -> {after.get('brier', float('nan')):.3f}.")
    else:
        others = {k: v for k, v in errs.items() if k != "temperature"}
        if others or not parts:
            parts.append("No calibrator could be fitted" + (": " + "; ".join(f"{k}: {v}" for k, v in others.items())
                                                            if others else "."))
    return title, " ".join(parts)


def deploy_verdict(results: dict[str, Any]) -> str:
    """Whether to put the primary calibration in front of the model, from the held-out numbers only."""
    primary = results.get("primary", {})
    cname = primary.get("calibrator")
    raw = results["signals_test"].get(primary.get("signal", "option_prob"), {})
    after = results["calibrated_test"].get(cname) if cname else None
    if after is None:
        return ("Do NOT deploy: no calibrator could be fitted, so there is nothing to deploy; the raw confidence "
                "stays uncalibrated (see the errors above; more or more varied calibration questions may help).")
    n_test = results["split"]["n_test"]
    before, now = raw.get("ece"), after.get("ece")
    if before is not None and now is not None and now > before:
        return (f"Do NOT deploy: calibration made the held-out ECE worse ({_pct(before)} -> {_pct(now)} on "
                f"{n_test} questions); keep the raw confidence or calibrate on questions closer to your use.")
    base = results.get("baseline")
    if not base:
        return (f"Deploy {cname} (calibration.json) with care: this results.json has no constant baseline to "
                "compare with (rerun `llmcal calibrate` to get one).")
    const = base["constant"]
    conf = base.get("confidence", const.get("confidence"))
    c_brier, c_ece = const.get("brier"), const.get("ece")
    b_now = after.get("brier")
    ci = (after.get("ci95") or {}).get("brier")
    spans = bool(ci and ci[0] is not None and c_brier is not None and ci[0] <= c_brier <= ci[1])
    vs = (f"a constant confidence of {_pct(conf)} (the calibration part's accuracy, given to every answer)")
    if c_brier is not None and b_now is not None and b_now >= c_brier:
        msg = (f"Do NOT deploy: {cname} does not beat {vs} on the held-out part: Brier {b_now:.3f} against "
               f"{c_brier:.3f}, so its confidence tells right from wrong no better than the base rate.")
        if spans:
            msg += (f" The held-out part ({n_test} questions) is too small to tell them apart (Brier interval "
                    f"{ci[0]:.3f}-{ci[1]:.3f}).")
        return msg
    if spans:
        return (f"Too few held-out questions to tell: {cname}'s Brier {b_now:.3f} (interval {ci[0]:.3f}-{ci[1]:.3f}) "
                f"may be no better than {vs} (Brier {c_brier:.3f}) on {n_test} questions; calibrate and test on "
                "more questions before deploying.")
    worse = sorted(k for k, v in results["calibrated_test"].items()
                   if k != cname and v.get("brier") is not None and v["brier"] >= c_brier)
    ece_note = ""
    if c_ece is not None and now is not None and now >= c_ece:
        ece_note = (f" Its ECE ({_pct(now)}) is above the constant's ({_pct(c_ece)}): on its own task a constant "
                    "knows the base rate, but it cannot rank answers, which the Brier score counts.")
    return (f"Yes: deploy {cname} (calibration.json) in front of the model: held-out ECE {_pct(before)} -> "
            f"{_pct(now)}, Brier {b_now:.3f} against {c_brier:.3f} for {vs}." + ece_note
            + (f" Not {', '.join(worse)}: no better than the constant." if worse else ""))
