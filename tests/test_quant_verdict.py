"""``llmcal quantize``'s readable output: paired intervals, the one-line verdict, and ``--baseline`` reuse."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmcal.metrics import ece
from llmcal.quant.verdict import DEFINITIONS, baseline_key, check_baseline, paired_intervals, verdict


def _answers(n=200, acc=0.6, seed=0):
    rng = np.random.default_rng(seed)
    correct = (rng.random(n) < acc).astype(int)
    conf = np.clip(0.5 + 0.3 * (correct - 0.5) + 0.1 * rng.standard_normal(n), 0.01, 0.99)
    return {"correct": correct.tolist(), "confidence": conf.tolist()}


def test_identical_models_keep_everything_and_calibration_is_unchanged():
    a = _answers()
    iv = paired_intervals(a, a, n_resamples=300)
    assert iv["retention"] == (1.0, 1.0, 1.0)  # paired: every resample has the same questions both ways
    assert iv["delta_ece"] == (0.0, 0.0, 0.0)
    assert iv["ece_before"][0] == pytest.approx(ece(np.array(a["confidence"]), np.array(a["correct"])))
    line = verdict("RTN W8", iv, 200)
    assert "keeps 100% [100%-100%] of accuracy" in line and "unchanged" in line and "n = 200" in line
    assert "loses" not in line


def test_a_planted_drop_reads_as_lost_accuracy_and_worse_calibration():
    before = _answers(acc=0.7, seed=1)
    c = np.array(before["correct"])
    after_c = c.copy()
    after_c[np.flatnonzero(c)[:60]] = 0  # 60 right answers turned wrong, confidence kept high
    after = {"correct": after_c.tolist(), "confidence": (np.maximum(before["confidence"], 0.9)).tolist()}
    iv = paired_intervals(before, after, n_resamples=300)
    r, lo, hi = iv["retention"]
    assert r == pytest.approx(after_c.mean() / c.mean())
    assert lo <= r <= hi < 1.0
    assert iv["delta_ece"][1] > 0  # the whole interval above 0
    line = verdict("AWQ W4", iv, 200, ppl_ratio=1.25)
    assert line.startswith("AWQ W4 loses accuracy: keeps ")
    assert f"{r:.0%}" in line and "calibration worse" in line and "perplexity x1.25" in line


def test_paired_intervals_refuse_different_questions():
    with pytest.raises(ValueError, match="same questions"):
        paired_intervals(_answers(200), _answers(150))


def test_every_printed_figure_is_defined():
    for k in ("perplexity", "accuracy", "ece", "brier", "mean_confidence", "retention", "ppl_ratio", "agreement"):
        assert DEFINITIONS[k]


def test_baseline_is_reused_only_for_the_same_measurement():
    settings = {"model_args": "", "tasks": "arc_easy", "limit": 200, "data_dir": None, "ppl_text": "sciq_support:test",
                "ppl_limit": 100, "seq_len": 512}
    saved = {"baseline_key": baseline_key(settings), "before": {"accuracy": 0.5, "items": _answers(10)}}
    assert check_baseline(saved, settings, "q.json")["accuracy"] == 0.5
    with pytest.raises(ValueError, match=r"q.json: its float baseline measured limit = 200, this run asks for 300"):
        check_baseline(saved, {**settings, "limit": 300}, "q.json")
    with pytest.raises(ValueError, match="no reusable float baseline"):
        check_baseline({"before": {"accuracy": 0.5}}, settings, "q.json")


@pytest.mark.slow
def test_quantize_cli_prints_the_verdict_and_reuses_its_baseline(tmp_path, capsys):
    """A tiny random Llama saved as a checkpoint, quantized twice: the second run reuses the first's float side."""
    pytest.importorskip("transformers")
    from llmcal.cli.main import main
    from llmcal.posttrain.tiny import tiny_llama, tiny_tokenizer

    ckpt = tmp_path / "tiny"
    tiny_llama().save_pretrained(ckpt)
    tiny_tokenizer().save_pretrained(ckpt)
    text = tmp_path / "calib.txt"
    text.write_text("\n".join(f"the fact number {i} is that water boils at {90 + i} degrees" for i in range(12)))
    common = ["quantize", "--model_args", f"pretrained={ckpt}", "--method", "rtn", "--w_bits", "4",
              "--group_size", "16", "--calibration", str(text), "--n_samples", "8", "--seq_len", "32",
              "--tasks", "builtin", "--limit", "30", "--ppl_text", str(text), "--ppl_limit", "4"]
    assert main(common + ["--output_path", str(tmp_path / "a")]) == 0
    first = capsys.readouterr().out
    assert "| accuracy | 30 |" in first and "retention:" in first and "(n = 30 questions" in first
    a = json.loads((tmp_path / "a" / "quant_results.json").read_text())
    assert a["compare"]["verdict"] in first and len(a["before"]["items"]["correct"]) == 30

    assert main(common + ["--output_path", str(tmp_path / "b"), "--baseline", str(tmp_path / "a")]) == 0
    b = json.loads((tmp_path / "b" / "quant_results.json").read_text())
    assert b["before"]["items"] == a["before"]["items"] and b["baseline_from"] == str(tmp_path / "a")
    assert b["after"]["accuracy"] == a["after"]["accuracy"]  # same recipe, same model: same quantized answers
    assert main(common[:-2] + ["--ppl_limit", "3", "--baseline", str(tmp_path / "a")]) == 2
    assert "ppl_limit = 4, this run asks for 3" in capsys.readouterr().err
