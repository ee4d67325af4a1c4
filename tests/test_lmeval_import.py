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


def test_acc_norm_divides_by_the_choice_without_its_leading_space(tmp_path):
    # per character of " a"/" bbb" option 0 wins (-1.0 > -1.25); per character of "a"/"bbb", lm-eval's
    # completion_len, option 1 does (-1.67 > -2.0)
    p = _write(tmp_path / "samples_t.jsonl", [_line(0, "Q:", [" a", " bbb"], [-2.0, -5.0], 1, acc=0.0)])
    (r,) = read_lmeval_samples([p])
    assert r.option_nchars == [1, 3] and r.prediction_norm == 1 and r.correct_norm is True


def test_partial_scoring_lines_normalize_by_the_contexts(tmp_path):
    rec = {"doc_id": 0, "target": 0, "arguments": [["The cup", " was big."], ["The big box", " was big."]],
           "filtered_resps": [["-4.0", "False"], ["-6.0", "False"]], "acc": 1.0}
    (r,) = read_lmeval_samples([_write(tmp_path / "samples_wg.jsonl", [json.dumps(rec)])])
    assert r.option_nchars == [7, 11] and r.prediction == 0 and r.prediction_norm == 1


def test_logged_acc_norm_is_kept_where_lengths_cannot_be_recovered(tmp_path):
    rec = {"doc_id": 0, "target": 1, "arguments": [["Q:", " a"], ["Q:", " bbb"]],
           "filtered_resps": [["-1.0", "False"], ["-5.0", "False"]], "acc": 0.0, "acc_norm": 1.0}
    (r,) = read_lmeval_samples([_write(tmp_path / "samples_t.jsonl", [json.dumps(rec)])])
    assert r.prediction_norm == 1 and r.correct_norm is True


def test_ids_use_the_documents_own_id_when_every_document_has_one(tmp_path):
    lines = [json.dumps({"doc_id": i, "doc": {"id": f"Mercury_{7 + i}"}, "target": 0,
                         "arguments": [["Q:", " a"], ["Q:", " b"]],
                         "filtered_resps": [["-1.0", "False"], ["-2.0", "False"]]}) for i in range(3)]
    recs = read_lmeval_samples([_write(tmp_path / "samples_arc_easy_2026-01-01T00-00-00.jsonl", lines)])
    assert [r.id for r in recs] == ["arc_easy-Mercury_7", "arc_easy-Mercury_8", "arc_easy-Mercury_9"]
    assert [r.meta["doc_id"] for r in recs] == [0, 1, 2]


def test_a_results_file_is_refused_with_what_to_give_instead(tmp_path):
    make_samples(tmp_path, n=3)
    res = tmp_path / "results_2026-12-01T10-00-00.123.json"
    res.write_text(json.dumps({"results": {"arc_easy": {"acc,none": 0.5}}, "config": {}}, indent=2))
    with pytest.raises(TaskError, match="this is lm-eval's results file .*samples_arc_easy_2026-12-01T10-00-00.123"
                                        r"\.jsonl") as err:
        read_lmeval_samples([res])
    assert "results_2026-12-01T10-00-00.123.json" in str(err.value)


def test_import_records_the_model_and_cloze_style_for_ask(tmp_path):
    from llmcal.cli.main import main

    path = make_samples(tmp_path, n=40)
    (tmp_path / "results_2026-12-01T10-00-00.123.json").write_text(json.dumps(
        {"results": {}, "config": {"model": "hf", "model_args": "pretrained=/models/x,dtype=float32,parallelize=True"}}))
    out = tmp_path / "run"
    assert main(["import-lmeval", str(path), "--output_path", str(out), "--quiet", "--bootstrap", "0",
                 "--no_report"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_args"] == {"pretrained": "/models/x", "dtype": "float32"} and cfg["style"] == "cloze"
    cal = json.loads((out / "calibration.json").read_text())
    assert "lm-eval" not in json.dumps(cal.get("context", {}).get("style", ""))
    # --model_args overrides what the results file says
    out2 = tmp_path / "run2"
    assert main(["import-lmeval", str(path), "--output_path", str(out2), "--quiet", "--bootstrap", "0",
                 "--no_report", "--model_args", "pretrained=/models/y"]) == 0
    assert json.loads((out2 / "config.json").read_text())["model_args"] == {"pretrained": "/models/y"}


def test_partial_scoring_gold_comes_from_acc_when_target_is_the_continuation(tmp_path):
    # lm-eval logs WinoGrande's target as the shared continuation; the gold is then read off acc
    def line(doc_id, acc, extra=None):
        return json.dumps({"doc_id": doc_id, "target": "was big.", "acc": acc, **(extra or {}),
                           "arguments": [["The cup", " was big."], ["The box", " was big."]],
                           "filtered_resps": [["-4.0", "False"], ["-6.0", "False"]]})
    recs = read_lmeval_samples([_write(tmp_path / "samples_wg.jsonl", [line(0, 1.0), line(1, 0.0)])])
    assert [r.reference for r in recs] == [0, 1] and [r.correct for r in recs] == [True, False]
    three = json.dumps({"doc_id": 0, "target": "was big.", "acc": 0.0,
                        "arguments": [["A", " was big."], ["B", " was big."], ["C", " was big."]],
                        "filtered_resps": [["-4.0", "False"], ["-6.0", "False"], ["-7.0", "False"]]})
    with pytest.raises(TaskError, match="partial-scoring line .* whose gold option is not logged"):
        read_lmeval_samples([_write(tmp_path / "samples_wg3.jsonl", [three])])
