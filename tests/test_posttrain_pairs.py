"""Confidence-aware preference pairs from a run folder, and the plain JSONL reader's errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmcal.core.sample import Sample
from llmcal.posttrain.pairs import (
    LEVEL_VALUE,
    calibrated_probs,
    load_pairs,
    pairs_from_run,
    read_pairs_jsonl,
    response,
    write_pairs_jsonl,
)


def _sample(i: int, logprobs, correct: bool) -> dict:
    choices = ["Paris", "Lyon", "Nice"]
    pred = int(np.argmax(logprobs))
    p = np.exp(np.asarray(logprobs) - np.max(logprobs))
    p /= p.sum()
    ref = pred if correct else (pred + 1) % 3
    return {"id": f"q{i}", "task": "t", "prompt": f"Question: q{i}?\nAnswer:", "question": f"q{i}?",
            "choices": choices, "reference": ref, "reference_text": choices[ref], "prediction": pred,
            "prediction_text": choices[pred], "correct": correct, "prediction_norm": pred, "correct_norm": correct,
            "option_logprobs": list(logprobs), "option_ntokens": [1, 1, 1], "option_nchars": [5, 4, 4],
            "option_is_greedy": [False] * 3, "signals": {"option_prob": float(p[pred])}, "meta": {}}


def _run(tmp_path, calibration: dict | None):
    run = tmp_path / "run"
    run.mkdir()
    samples = [
        _sample(0, [0.0, -8.0, -9.0], True),    # raw p ~ 0.9995
        _sample(1, [0.0, -0.1, -0.2], False),   # raw p ~ 0.37
        _sample(2, [0.0, -2.0, -3.0], True),    # raw p ~ 0.84
    ]
    (run / "config.json").write_text("{}")
    (run / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    if calibration is not None:
        (run / "calibration.json").write_text(json.dumps(calibration))
    return run


def test_pairs_state_the_calibrated_level_and_its_opposite(tmp_path):
    pairs = pairs_from_run(_run(tmp_path, None))
    assert [p["meta"]["level"] for p in pairs] == ["high", "low", "medium"]
    assert pairs[0]["chosen"] == " Paris. I'm very sure about this."
    assert pairs[0]["rejected"] == " Paris. I can't answer this safely."  # hedging when surely right
    assert pairs[1]["chosen"] == " Paris. I can't answer this safely."
    assert pairs[1]["rejected"] == " Paris. I'm very sure about this."  # overconfident when likely wrong
    assert pairs[2]["chosen"].startswith(" Paris. I'm unsure") and "Lyon, Nice" in pairs[2]["chosen"]
    assert all(p["prompt"].startswith("Question: ") for p in pairs)
    # the answer is the same on both sides: only the confidence differs
    assert all(p["chosen"].split(".")[0] == p["rejected"].split(".")[0] for p in pairs)


def test_temperature_from_calibration_json_changes_the_level(tmp_path):
    cal = {"primary": "temperature", "calibrators": {"temperature": {
        "name": "temperature", "version": 1, "bounds": [0.01, 100.0], "temperature_": 4.0,
        "mode_": "multiclass", "n_classes_": 3}}}
    run = _run(tmp_path, cal)
    samples = [Sample.from_dict(json.loads(line)) for line in (run / "samples.jsonl").read_text().splitlines()]
    probs = calibrated_probs(samples, cal)
    z = np.exp(np.array([0.0, -8.0, -9.0]) / 4.0)
    assert probs[0] == pytest.approx(z[0] / z.sum())  # softmax(ll / T) at the prediction
    pairs = pairs_from_run(run)
    assert pairs[0]["meta"]["level"] == "medium"  # 0.9995 raw -> ~0.82 calibrated: no longer "very sure"
    assert pairs[0]["meta"]["calibrator"] == "temperature"


def test_jsonl_round_trip_and_load_pairs_dispatch(tmp_path):
    pairs = pairs_from_run(_run(tmp_path, None))
    path = write_pairs_jsonl(pairs, tmp_path / "out" / "pairs.jsonl")
    back = read_pairs_jsonl(path)
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in back] == \
        [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs]
    assert len(load_pairs(path)) == 3 and len(load_pairs(tmp_path / "run")) == 3


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 2: not valid JSON"),
    ('["a", "b"]', "line 2: expected an object"),
    ('{"prompt": "p", "chosen": "c"}', "line 2: missing field 'rejected'"),
    ('{"prompt": "p", "chosen": 3, "rejected": "r"}', "line 2: field 'chosen' must be a non-empty string"),
    ('{"prompt": "p", "chosen": "same", "rejected": "same"}', "line 2: chosen and rejected are identical"),
])
def test_bad_jsonl_lines_are_named_by_file_and_line(tmp_path, line, message):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n' + line + "\n")
    with pytest.raises(ValueError, match=f"p.jsonl {message}"):
        read_pairs_jsonl(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such pairs file"):
        read_pairs_jsonl(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no pairs in the file"):
        read_pairs_jsonl(tmp_path / "empty.jsonl")


def test_response_levels_and_values():
    assert response("42", "high") == " 42. I'm very sure about this."
    assert "possibilities: 42, 41, 43." in response("42", "medium", ["41", "43"])
    with pytest.raises(ValueError, match="level 'certain' is unknown"):
        response("42", "certain")
    assert LEVEL_VALUE["low"] < 0.75 <= LEVEL_VALUE["medium"] < 0.90 <= LEVEL_VALUE["high"]


def test_balance_levels_oversamples_rare_levels(tmp_path):
    from collections import Counter

    from llmcal.posttrain.pairs import balance_levels

    pairs = [{"prompt": f"p{i}", "chosen": "c", "rejected": "r", "meta": {"level": "low"}} for i in range(6)]
    pairs += [{"prompt": "h", "chosen": "c", "rejected": "r", "meta": {"level": "high"}},
              {"prompt": "plain", "chosen": "c", "rejected": "r"}]
    out = balance_levels(pairs, seed=1)
    counts = Counter((p.get("meta") or {}).get("level") for p in out)
    assert counts == {"low": 6, "high": 6, None: 1}
    assert {p["prompt"] for p in out} == {p["prompt"] for p in pairs}  # every original kept
    assert balance_levels(pairs, seed=1) == out  # seeded
