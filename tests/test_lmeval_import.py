"""Importing lm-evaluation-harness --log_samples output: both logged shapes, the checks, and
the command that calibrates from it without a model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmcal.pipeline.lmeval_import import read_lmeval_samples
from llmcal.signals.mc import mc_signals
from llmcal.tasks.errors import TaskError


def _line(doc_id, ctx, conts, lls, target, as_dict=True, strings=True, acc=None):
    args = ({f"gen_args_{i}": {"arg_0": ctx, "arg_1": c} for i, c in enumerate(conts)} if as_dict
            else [[ctx, c] for c in conts])
    fr = [[str(x) if strings else x, "False" if strings else False] for x in lls]
    rec = {"doc_id": doc_id, "doc": {}, "target": target, "arguments": args,
           "resps": [[r] for r in fr], "filtered_resps": fr, "filter": "none", "metrics": ["acc"]}
    if acc is not None:
        rec["acc"] = acc
    return json.dumps(rec)


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def make_samples(tmp_path, n=60, seed=0):
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        lls = rng.normal(size=4) * 2 - 8
        target = int(np.argmax(lls)) if rng.random() < 0.6 else int(rng.integers(0, 4))  # informative
        acc = float(int(np.argmax(lls)) == target)
        lines.append(_line(i, f"Question: q{i}?\nAnswer:", [" a", " bb", " ccc", " dddd"], lls, target,
                           as_dict=i % 2 == 0, strings=i % 3 == 0, acc=acc))
    return _write(tmp_path / "samples_arc_easy_2026-12-01T10-00-00.123.jsonl", lines)


def test_both_logged_shapes_are_read_and_checked(tmp_path):
    path = make_samples(tmp_path)
    recs = read_lmeval_samples([path])
    assert len(recs) == 60 and recs[0].task == "arc_easy" and recs[0].id == "arc_easy-0"
    raw = [json.loads(x) for x in path.read_text().splitlines()]
    for r, src in zip(recs, raw):
        lls = [float(x[0]) for x in src["filtered_resps"]]
        assert r.option_logprobs == pytest.approx(lls)
        assert r.correct == bool(src["acc"])
        pred, sig = mc_signals(np.array(lls), np.ones(4))
        assert r.prediction == pred and r.signals["option_prob"] == pytest.approx(sig["option_prob"])
        assert r.choices == ["a", "bb", "ccc", "dddd"]


def test_target_given_as_text(tmp_path):
    p = _write(tmp_path / "samples_t.jsonl", [_line(0, "Q:", [" yes", " no"], [-1.0, -2.0], "no", acc=0.0)])
    assert read_lmeval_samples([p])[0].reference == 1


@pytest.mark.parametrize("line, match", [
    (_line(0, "Q:", [" a", " b"], [-1.0, -2.0], 1, acc=1.0), "acc=1.0 but the log-likelihoods pick option 0"),
    (_line(0, "Q:", [" a", " b"], [-1.0, -2.0], 7), "'target': 7 is neither"),
    (json.dumps({"doc_id": 0, "target": 0, "arguments": [["Q:", {"until": ["\n"]}]],
                 "filtered_resps": ["x"]}), "generation task"),
    (json.dumps({"doc_id": 0, "target": 0, "arguments": [["Q:", " a"], ["Q:", " b"]],
                 "filtered_resps": [["x", "False"], ["-1", "False"]]}), "response 0 is not a log-likelihood"),
])
def test_bad_lines_name_the_file_line_and_field(tmp_path, line, match):
    good = _line(0, "Q:", [" a", " b"], [-1.0, -2.0], 0)
    p = _write(tmp_path / "samples_t.jsonl", [good.replace('"doc_id": 0', '"doc_id": 9'), line])
    with pytest.raises(TaskError, match=match) as err:
        read_lmeval_samples([p])
    assert "samples_t.jsonl" in str(err.value) and "line 2" in str(err.value)


def test_import_command_calibrates_without_a_model(tmp_path):
    from llmcal.cli.main import main

    path = make_samples(tmp_path, n=200)
    out = tmp_path / "run"
    assert main(["import-lmeval", str(path), "--output_path", str(out), "--quiet", "--bootstrap", "0"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["overall"]["n"] == 200
    recs = read_lmeval_samples([path])
    assert res["overall"]["accuracy"] == pytest.approx(np.mean([r.correct for r in recs]))
    assert "temperature" in res["calibrated_test"] and (out / "report.html").exists()
    # importing again into the same folder is refused rather than duplicating items
    assert main(["import-lmeval", str(path), "--output_path", str(out), "--quiet"]) == 2
