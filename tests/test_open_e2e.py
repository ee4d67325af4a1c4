"""Open-ended answers end to end on the real embedded model: generation with per-token evidence,
`llmcal run` on builtin_open (every signal, costs, missing counts, resume), the sweep."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_generation_keeps_token_evidence_and_is_batch_invariant(embedded_backend):
    b = embedded_backend
    prompts = [b.apply_chat_template("What is the capital of France? Answer in a few words."),
               b.apply_chat_template("Name a primary colour.")]
    both = b.generate(prompts, max_new_tokens=12)
    alone = b.generate(prompts[:1], max_new_tokens=12)
    g = both[0][0]
    assert "Paris" in g.text and g.finish_reason == "stop"
    # left padding changes nothing: the same answer and log-probabilities as alone
    assert g.text == alone[0][0].text
    np.testing.assert_allclose(g.token_logprobs, alone[0][0].token_logprobs, atol=2e-3)
    assert len(g.token_logprobs) == len(g.token_ids) == len(g.entropies) == len(g.top_logprobs)
    # greedy: each chosen token is the top-1 alternative
    for lp, top in zip(g.token_logprobs, g.top_logprobs):
        assert lp == pytest.approx(top[0][1], abs=1e-4)
    # the decoded tokens are the text
    assert b.tokenizer.decode(g.token_ids, skip_special_tokens=True).strip() == g.text
    sampled = b.generate(prompts[:1], max_new_tokens=8, temperature=1.0, n=3, seed=3)
    again = b.generate(prompts[:1], max_new_tokens=8, temperature=1.0, n=3, seed=3)
    assert [x.text for x in sampled[0]] == [x.text for x in again[0]]  # seeded
    with pytest.raises(ValueError, match="greedy"):
        b.generate(prompts, temperature=0.0, n=2)


def test_open_run_records_every_signal_and_resumes(tmp_path):
    from llmcal.cli.main import main

    out = tmp_path / "open"
    args = ["run", "--tasks", "builtin_open", "--limit", "8", "--k_samples", "2", "--output_path", str(out),
            "--signals", "tokens,ptrue,verbalized,verbalized_percent,agreement", "--bootstrap", "0", "--quiet"]
    assert main(args) == 0
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8
    for s in samples:
        assert s["kind"] == "open" and isinstance(s["correct"], bool)
        for name in ("seq_prob", "mean_token_prob", "min_token_prob", "entropy_conf", "ptrue", "agreement",
                     "semantic_entropy"):
            assert 0.0 <= s["signals"][name] <= 1.0
        # a verbalized confidence is either read or recorded missing, never invented
        for fam in ("verbalized", "verbalized_percent"):
            assert (fam in s["signals"]) != (fam in s["missing"])
        assert len(s["samples"]) == 2 and len(s["cluster_ids"]) == 3
        assert s["cost"]["ptrue"]["forward_passes"] == 1
    res = json.loads((out / "results.json").read_text())
    assert res["kind"] == "open" and res["overall"]["n"] == 8
    n_missing = sum("verbalized" in s["missing"] for s in samples)
    assert res["signals"]["verbalized"]["n_missing"] == n_missing
    assert (out / "report.html").read_text().count("<tr>") > 5
    # resume: nothing is answered twice
    assert main(args) == 0
    assert len((out / "samples.jsonl").read_text().splitlines()) == 8


def test_sweep_writes_a_row_per_temperature(tmp_path):
    from llmcal.cli.main import main

    out = tmp_path / "sweep"
    assert main(["sweep", "--tasks", "builtin_open", "--limit", "6", "--k_samples", "2", "--signals",
                 "tokens,agreement", "--temperatures", "0,1.0", "--output_path", str(out), "--bootstrap", "0",
                 "--quiet"]) == 0
    sweep = json.loads((out / "sweep.json").read_text())
    assert list(sweep["rows"]) == ["0", "1"]
    assert "mean_token_prob" in sweep["rows"]["1"]["signals"]
    assert (out / "sweep.png").stat().st_size > 1000 and (out / "T0" / "samples.jsonl").exists()
