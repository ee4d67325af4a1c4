"""End to end on the real embedded model: lm-eval parity, `llmcal run`, and kill -9 resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from llmcal.tasks.prompts import build_request, normalization_lengths

pytestmark = pytest.mark.slow


def test_lm_eval_parity_arc_easy(embedded_backend, data_dir):
    """fp32 cloze on the first 300 ARC-Easy items: lm-eval 0.4.13 gives acc 0.5033, acc_norm 0.4533."""
    from llmcal.tasks.registry import load_task

    items = load_task("arc_easy", data_dir=data_dir, limit=300)
    assert len(items) == 300
    scores = embedded_backend.score_mc([build_request(it, "cloze") for it in items])
    acc = np.mean([np.argmax(s.logprobs) == it.answer for s, it in zip(scores, items)])
    acc_norm = np.mean([
        np.argmax(s.logprobs / np.asarray(normalization_lengths(it, "cloze"))) == it.answer
        for s, it in zip(scores, items)
    ])
    assert round(acc, 4) == 0.5033
    assert round(acc_norm, 4) == 0.4533
    # hidden states kept from the same pass: (layers kept, hidden size)
    assert scores[0].hidden.shape == (2, 576)


def test_tokenization_follows_lm_eval(embedded_backend):
    ctx, cont = embedded_backend.encode_pair("Question: Capital of France?\nAnswer: ", "Paris")
    # the trailing space moves into the continuation, as lm-eval does
    assert embedded_backend.tokenizer.decode(ctx) == "Question: Capital of France?\nAnswer:"
    assert embedded_backend.tokenizer.decode(cont) == " Paris"


def test_letters_style_scores_one_row(embedded_backend):
    from llmcal.core.items import MCItem

    item = MCItem("x", "t", "What is the capital of France?", ("Berlin", "Paris", "Rome", "Madrid"), 1)
    (s,) = embedded_backend.score_mc([build_request(item, "letters")])
    assert s.n_tokens.tolist() == [1, 1, 1, 1]
    assert np.all(s.logprobs < 0)


def _llmcal(*args, **kw):
    return subprocess.run([sys.executable, "-m", "llmcal.cli.main", *args], capture_output=True, text=True, **kw)


def test_run_writes_results_report_and_calibration(tmp_path):
    out = tmp_path / "run"
    r = _llmcal("run", "--limit", "60", "--output_path", str(out), "--bootstrap", "100",
                "--calibrators", "temperature,platt,isotonic", "--quiet", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["schema_version"] == 1
    assert results["overall"]["n"] == 60
    assert results["split"]["n_cal"] + results["split"]["n_test"] == 60
    assert 0.0 < results["overall"]["accuracy"] < 1.0  # some right, some wrong
    assert set(results["calibrated_test"]) == {"temperature", "platt", "isotonic"}
    t = results["calibrated_test"]["temperature"]["params"]["temperature_"]
    assert t > 0
    assert results["filter"]["calibrated"]["threshold"] == 0.75
    assert results["versions"]["torch"] and results["metric_specs"]["ece"]
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 60 and len({s["id"] for s in samples}) == 60
    assert {"option_prob", "option_prob_norm", "margin", "entropy"} <= set(samples[0]["signals"])
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Is the model calibrated?" in html
    assert "http://" not in html.replace("http://www.w3.org", "")  # opens offline
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["primary"] == "temperature"
    # `llmcal ask` answers with the saved calibration, in words and a colour
    a = _llmcal("ask", "What is the capital of France?", "--choices", "Lyon;Paris;Nice", "--run", str(out),
                "--json", timeout=600)
    assert a.returncode == 0, a.stderr[-3000:]
    d = json.loads(a.stdout)
    level = "high" if d["score"] >= 0.9 else "medium" if d["score"] >= 0.75 else "low"
    assert d["level"] == level and d["colour"] == {"high": "green", "medium": "yellow", "low": "red"}[level]
    assert d["abstained"] == (level == "low") and d["calibrator"] == "temperature"
    # a second identical command finds everything done and only recalibrates
    r2 = _llmcal("run", "--limit", "60", "--output_path", str(out), "--bootstrap", "0", timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "scored 0 new items" in r2.stdout
    assert len((out / "samples.jsonl").read_text().splitlines()) == 60


def test_kill_minus_9_then_resume(tmp_path):
    """Kill the run mid-way; the same command finishes it with no item done twice."""
    out = tmp_path / "run"
    args = ["measure", "--limit", "200", "--output_path", str(out), "--max_tokens", "256", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "llmcal.cli.main", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = out / "samples.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline:
        if samples.exists() and samples.read_text().count("\n") >= 64:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = samples.read_text().count("\n")
    assert 0 < done_before < 200
    r = _llmcal(*args[:-1], timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = samples.read_text().splitlines()
    ids = [json.loads(x)["id"] for x in lines]
    assert len(ids) == 200 and len(set(ids)) == 200
    assert f"scored {200 - done_before} new items" in r.stdout
    rows = [json.loads(x)["hidden_row"] for x in lines]
    assert rows == list(range(200))
    meta = json.loads((out / "hidden_states.json").read_text())
    assert (out / "hidden_states.bin").stat().st_size == 200 * int(np.prod(meta["row_shape"])) * 4


def test_bad_task_fails_before_model_load(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q?", "choices": ["a", "b"], "answer": "a"}\n{"question": "Q2?", "choices": ["a"')
    start = time.time()
    r = _llmcal("run", "--tasks", str(bad), "--output_path", str(tmp_path / "r"))
    assert r.returncode == 2
    assert "bad.jsonl" in r.stderr and "line 2" in r.stderr
    assert "loading" not in r.stdout
    assert time.time() - start < 60


def test_chat_template_letters_scoring(embedded_backend):
    from llmcal.core.items import MCItem

    item = MCItem("x", "t", "What is the capital of France?", ("Berlin", "Paris", "Rome", "Madrid"), 1)
    req = build_request(item, "letters", embedded_backend.apply_chat_template)
    assert req.context.startswith("<|im_start|>") and req.context.rstrip().endswith("assistant")
    assert req.continuations == ("A", "B", "C", "D")
    (s,) = embedded_backend.score_mc([req])
    # as in lm-eval, the template's trailing newline moves into every continuation ("\nA"):
    # the same extra token for each option, so the option distribution is unchanged
    assert s.n_tokens.tolist() == [2, 2, 2, 2] and np.isfinite(s.logprobs).all()


def test_unknown_model_is_a_clear_error(tmp_path):
    r = _llmcal("run", "--model_args", f"pretrained={tmp_path / 'no-such-model'}", "--limit", "2",
                "--output_path", str(tmp_path / "r"), timeout=300)
    assert r.returncode == 2
    # a path that does not exist is refused before any work, naming the argument
    assert "--model_args pretrained=" in r.stderr and "no-such-model: no such file or folder" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "r").exists()
