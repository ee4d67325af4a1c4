"""One multiple-choice question answered with a run's calibrated confidence (``llmcal ask``).

The question is scored exactly as the run scored its items (same backend, prompt style
and chat setting, from the run's ``calibration.json``), recorded as a :class:`Sample`,
and given the run's primary :class:`~llmcal.calibrators.calibration.Calibration`; the
policy turns the confidence into a level, a colour, a sentence and an abstain decision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


def calibrated_runs(root: Path = Path("runs")) -> list[Path]:
    """The run folders under ``root`` that hold a ``calibration.json``, newest first."""
    found = sorted(root.glob("*/calibration.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    return [p.parent for p in found]


def latest_run(root: Path = Path("runs")) -> Path:
    """The newest calibrated run folder under ``root``."""
    found = calibrated_runs(root)
    if not found:
        raise FileNotFoundError(f"no calibrated run under {root}/; run `llmcal run` first or pass --run")
    return found[0]


def choose_run(root: Path = Path("runs")) -> Path:
    """The run to use when the command line names none: the only calibrated run under ``root``.

    Several are refused rather than the newest taken silently: an old run's threshold (or another
    model's calibration) would apply without a word.  None is a ``FileNotFoundError``.
    """
    found = calibrated_runs(root)
    if not found:
        raise FileNotFoundError(f"no calibrated run under {root}/; run `llmcal run` first or pass --run")
    if len(found) > 1:
        names = ", ".join(str(p) for p in found[:5]) + (", ..." if len(found) > 5 else "")
        raise ValueError(f"{root}/ holds {len(found)} calibrated runs ({names}; newest first): choose one with "
                         "--run DIR")
    return found[0]


def ask_mc(question: str, choices: Sequence[str], run_dir: str | Path, threshold: float | None = None,
           high: float = 0.90) -> dict[str, Any]:
    """Score the options, calibrate the answer's confidence, decide; returns the decision and its parts."""
    from llmcal.backends.registry import load_backend
    from llmcal.calibrators.calibration import CalibrationSet
    from llmcal.core.items import MCItem
    from llmcal.pipeline.measure import sample_record
    from llmcal.policy import Thresholds, decide
    from llmcal.signals.mc import softmax
    from llmcal.tasks.prompts import build_request

    path = Path(run_dir) / "calibration.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; run `llmcal run` first")
    cset = CalibrationSet.load(path)
    ctx = cset.context
    if cset.kind == "open":
        raise ValueError(f"{run_dir}: a free-form run; `llmcal ask --choices` needs a multiple-choice run's calibration")
    thresholds = Thresholds(high=high, abstain=cset.threshold if threshold is None else threshold)
    margs = {k: v for k, v in (ctx.get("model_args") or {}).items() if k != "batch_size"}
    backend = load_backend("openai" if "base_url" in margs else "hf", **margs)
    chat = backend.apply_chat_template if ctx.get("chat") else None
    style = ctx.get("style") or "cloze"
    item = MCItem("ask", "ask", question, tuple(choices), 0)
    req = build_request(item, style, chat)
    (score,) = backend.score_mc([req])
    sample = sample_record(item, req.context, score, style, None)
    cal = cset.primary
    if cal is not None:
        conf = cal.confidence(sample)
        probs = cal.option_probs(sample)
    else:
        conf = float(sample.signals["option_prob"])
        probs = None
    if probs is None:
        import numpy as np

        probs = softmax(np.asarray(sample.option_logprobs, dtype=np.float64))
    d = decide(conf, choices[sample.prediction], list(zip(choices, probs.tolist())), thresholds)
    return {"decision": d, "confidence": conf, "probs": probs, "raw_confidence": sample.signals["option_prob"],
            "calibrator": cal.calibrator if cal is not None else None,
            "signal": cal.signal if cal is not None else "option_prob"}
