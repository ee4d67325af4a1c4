"""Confidence-aware preference pairs: the same answer, stated with the right vs the wrong confidence.

From a measured run folder (``llmcal run``: ``samples.jsonl`` + the fitted
``calibration.json``) every item gives one pair:

* prompt: the item's prompt (``Question: ...\\nAnswer:`` in the cloze style);
* chosen: the model's own answer followed by the sentence of
  :mod:`llmcal.policy.levels` that matches its *calibrated* probability
  (high: "I'm very sure about this."; medium: "I'm unsure -- here are a few
  possibilities: ..."; low: "I can't answer this safely.");
* rejected: the same answer with the wrong confidence: hedging ("I can't
  answer this safely.") when the calibrated probability says "very sure",
  and "I'm very sure about this." (overconfident) otherwise.

Training on these teaches *how sure to sound*, never a different answer,
which is what ORPO toward honest confidence needs (Hong et al. 2024 for ORPO;
the pair design follows the brief's presentation levels).

A plain JSONL file with string fields ``prompt``, ``chosen``, ``rejected``
per line (TRL's "standard preference" format) is read too; bad lines are
reported as ``FILE line N: ...``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from llmcal.calibrators.calibration import LOGIT_SIGNAL, Calibration, CalibrationSet
from llmcal.core.sample import Sample
from llmcal.policy.levels import LEVELS, Thresholds, decide

#: The confidence a stated level stands for: the middle of its band under the
#: default thresholds (high >= 0.90, medium 0.75-0.90, low < 0.75).
LEVEL_VALUE = {"high": 0.95, "medium": 0.825, "low": 0.375}


def response(answer: str, level: str, alternatives: Sequence[str] = ()) -> str:
    """`` {answer}. {sentence}``: the answer, then the level's sentence from :func:`decide`."""
    if level not in LEVELS:
        raise ValueError(f"level {level!r} is unknown; use one of {', '.join(LEVELS)}")
    conf = {"high": 1.0, "medium": 0.8, "low": 0.0}[level]
    sentence = decide(conf, answer, [(a, 0.0) for a in alternatives], Thresholds(0.9, 0.75)).sentence
    return f" {answer.strip()}. {sentence}"


def wrong_level(level: str) -> str:
    """The confidence a miscalibrated model would state instead: hedge when sure, boast otherwise."""
    return "low" if level == "high" else "high"


def run_calibration(calibration: Calibration | CalibrationSet | Mapping[str, Any] | None) -> Calibration:
    """The calibration a run presents: its primary, or the raw ``option_prob`` when it has none.

    ``calibration``: a :class:`Calibration`, a :class:`CalibrationSet`, a ``calibration.json``
    dict (either layout) or None.
    """
    if isinstance(calibration, Calibration):
        return calibration
    if calibration is None:
        return Calibration.none(LOGIT_SIGNAL)
    cset = calibration if isinstance(calibration, CalibrationSet) else CalibrationSet.from_dict(dict(calibration))
    return cset.primary or Calibration.none(LOGIT_SIGNAL)


def calibrated_probs(samples: Sequence[Sample],
                     calibration: Calibration | CalibrationSet | Mapping[str, Any] | None) -> np.ndarray:
    """Calibrated confidence in each sample's prediction (n,), with the run's primary calibration.

    Exactly what evaluate reports and ``llmcal ask`` shows
    (:meth:`~llmcal.calibrators.calibration.Calibration.confidences`); no calibration = raw
    ``option_prob``.
    """
    return np.clip(run_calibration(calibration).confidences(samples), 0.0, 1.0)


def pairs_from_run(run_dir: str | Path, thresholds: Thresholds = Thresholds(),
                   max_alternatives: int = 2) -> list[dict[str, Any]]:
    """One prompt/chosen/rejected pair per sample of a measured (and calibrated) run folder."""
    from llmcal.policy.levels import level_of
    from llmcal.records.run_dir import RunDir
    from llmcal.signals.mc import softmax

    run = RunDir(run_dir)
    samples = run.read_samples()
    if not samples:
        raise ValueError(f"{run.samples_path}: no samples; run `llmcal run` first")
    calibration = run_calibration(CalibrationSet.load(run.calibration_path)
                                  if run.calibration_path.exists() else None)
    probs = calibrated_probs(samples, calibration)
    pairs = []
    for s, p in zip(samples, probs):
        level = level_of(float(p), thresholds)
        opt = softmax(np.asarray(s.option_logprobs, dtype=float))
        order = [int(i) for i in np.argsort(-opt) if int(i) != s.prediction][:max_alternatives]
        alts = [s.choices[i] for i in order]
        answer = s.prediction_text
        pairs.append({
            "prompt": s.prompt,
            "chosen": response(answer, level, alts),
            "rejected": response(answer, wrong_level(level), alts),
            "meta": {"id": s.id, "task": s.task, "confidence": float(p), "level": level,
                     "correct": bool(s.correct),
                     "calibrator": calibration.calibrator if calibration.is_fitted else None},
        })
    return pairs


def balance_levels(pairs: Sequence[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Oversample the pairs of the rarer chosen levels (with replacement) to the most common level's count.

    A small model's calibrated confidence is mostly "low", so unbalanced pairs
    mostly teach "always hedge"; balanced ones make each stated level as
    frequent in training.  Pairs without a level (from a JSONL file) are kept
    once.  The order is shuffled (seeded).
    """
    rng = np.random.default_rng(seed)
    groups: dict[str, list[dict[str, Any]]] = {}
    rest = []
    for p in pairs:
        level = (p.get("meta") or {}).get("level")
        (groups.setdefault(level, []) if level else rest).append(p)
    if not groups:
        return list(pairs)
    top = max(len(g) for g in groups.values())
    out = list(rest)
    for g in groups.values():
        out += g + [g[i] for i in rng.integers(0, len(g), size=top - len(g))]
    return [out[i] for i in rng.permutation(len(out))]


def read_pairs_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read prompt/chosen/rejected lines; a bad line raises ``ValueError('FILE line N: ...')``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such pairs file")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {n}: not valid JSON ({err.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path} line {n}: expected an object with prompt, chosen, rejected")
            for key in ("prompt", "chosen", "rejected"):
                if key not in rec:
                    raise ValueError(f"{path} line {n}: missing field {key!r}")
                if not isinstance(rec[key], str) or not rec[key].strip():
                    raise ValueError(f"{path} line {n}: field {key!r} must be a non-empty string")
            if rec["chosen"] == rec["rejected"]:
                raise ValueError(f"{path} line {n}: chosen and rejected are identical")
            pairs.append(rec)
    if not pairs:
        raise ValueError(f"{path}: no pairs in the file")
    return pairs


def write_pairs_jsonl(pairs: Sequence[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    return path


def load_pairs(source: str | Path) -> list[dict[str, Any]]:
    """A run folder (pairs are built) or a JSONL file (pairs are read)."""
    source = Path(source)
    if source.is_dir():
        return pairs_from_run(source)
    return read_pairs_jsonl(source)
