"""The typed Sample record: round trip, and validation on read that names file, line and field."""

from __future__ import annotations

import json

import pytest

from llmcal.core.sample import SAMPLE_VERSION, Sample, SampleError
from llmcal.records.run_dir import RunDir, RunDirError


def mc_line(i: int = 0, **changes) -> dict:
    d = {
        "id": f"t-{i}", "task": "t", "prompt": "Q: 1+1?\nA:", "question": "1+1?",
        "choices": ["2", "3"], "reference": 0, "reference_text": "2", "prediction": 0, "prediction_text": "2",
        "correct": True, "prediction_norm": 0, "correct_norm": True, "option_logprobs": [-0.1, -2.5],
        "option_ntokens": [1, 1], "option_nchars": [2, 2], "option_is_greedy": [True, False],
        "signals": {"option_prob": 0.91, "margin": 0.82}, "meta": {"difficulty": 1},
    }
    d.update(changes)
    return d


def open_line(i: int = 0, **changes) -> dict:
    d = {
        "id": f"o-{i}", "task": "builtin_open", "kind": "open", "prompt": "p", "question": "Capital of France?",
        "answers": ["Paris"], "grader": "contains", "prediction_text": "Paris", "correct": True,
        "finish_reason": "stop", "n_tokens": 2, "signals": {"seq_prob": 0.7}, "missing": ["verbalized"],
        "meta": {}, "cost": {"greedy": {"seconds": 0.1}}, "samples": ["Paris", "Lyon"], "cluster_ids": [0, 1],
    }
    d.update(changes)
    return d


@pytest.mark.parametrize("line", [mc_line(), mc_line(hidden_row=3), open_line()])
def test_round_trip_keeps_every_field_and_the_layout(line):
    s = Sample.from_dict(line)
    assert s.to_dict() == line
    assert list(s.to_dict()) == list(line)  # same key order: the same bytes on disk
    assert Sample.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_kinds_and_typed_access():
    m, o = Sample.from_dict(mc_line()), Sample.from_dict(open_line())
    assert m.is_mc and not o.is_mc
    assert m.option_logprobs == [-0.1, -2.5] and m.reference == 0 and m.signal("option_prob") == 0.91
    assert o.answers == ["Paris"] and o.extra["samples"] == ["Paris", "Lyon"] and o.signal("verbalized") is None


@pytest.mark.parametrize("change, field, why", [
    ({"id": None}, "id", "missing"),
    ({"signals": None}, "signals", "missing"),
    ({"correct_norm": None}, "correct_norm", "missing"),
    ({"option_logprobs": [float("nan"), -1.0]}, "option_logprobs", "not a log-probability"),
    ({"option_logprobs": [float("inf"), -1.0]}, "option_logprobs", "not a log-probability"),
    ({"option_logprobs": [float("-inf"), float("-inf")]}, "option_logprobs", "no option has a finite"),
    ({"option_logprobs": []}, "option_logprobs", "has 0 entries for 2 choices"),
    ({"reference": 5}, "reference", "in 0..1"),
    ({"signals": {"option_prob": 1.5}}, "signals", "not a confidence"),
    ({"signals": {"option_prob": float("nan")}}, "signals", "not a confidence"),
    ({"correct": "yes"}, "correct", "true or false"),
    ({"choices": ["only one"]}, "choices", "at least 2"),
])
def test_bad_fields_are_named(change, field, why):
    with pytest.raises(SampleError) as err:
        Sample.from_dict(mc_line(**change), where="runs/x/samples.jsonl line 7")
    msg = str(err.value)
    assert msg.startswith("runs/x/samples.jsonl line 7: field ") and repr(field) in msg and why in msg


def test_unknown_version_and_kind_are_refused():
    with pytest.raises(SampleError, match="field 'v'"):
        Sample.from_dict(mc_line(v=SAMPLE_VERSION + 1))
    with pytest.raises(SampleError, match="field 'kind'"):
        Sample.from_dict(mc_line(kind="essay"))


def test_run_folder_read_names_the_file_and_line_and_changes_nothing(tmp_path):
    run = RunDir(tmp_path / "r")
    run.start({"model": "m"}, ("model",))
    lines = [mc_line(0), mc_line(1, option_logprobs=[float("nan"), -1.0]), mc_line(2)]
    text = "".join(json.dumps(x) + "\n" for x in lines)
    run.samples_path.write_text(text)
    with pytest.raises(RunDirError) as err:
        run.read_samples()
    assert f"{run.samples_path} line 2: field 'option_logprobs'" in str(err.value)
    assert run.samples_path.read_text() == text  # nothing dropped or rewritten


def test_append_then_read_gives_the_same_samples(tmp_path):
    run = RunDir(tmp_path / "r")
    run.start({"model": "m"}, ("model",))
    samples = [Sample.from_dict(mc_line(i)) for i in range(3)] + [Sample.from_dict(open_line(9))]
    run.append(samples, None)
    assert run.read_samples() == samples


@pytest.mark.parametrize("make", [mc_line, open_line])
def test_item_hash_round_trips_and_is_optional(make):
    """Issue 14 item 4: the content hash a resumed run re-checks; records from before it have none."""
    with_hash = make(item_hash="sha256:0123abcd")
    s = Sample.from_dict(with_hash)
    assert s.item_hash == "sha256:0123abcd" and "item_hash" not in s.extra
    assert s.to_dict() == with_hash
    old = Sample.from_dict(make())
    assert old.item_hash is None and "item_hash" not in old.to_dict()
    with pytest.raises(SampleError, match="field 'item_hash': expected a string"):
        Sample.from_dict(make(item_hash=12))


def test_item_hash_follows_the_content_not_the_id():
    from llmcal.core.items import MCItem, OpenItem
    from llmcal.pipeline.measure import item_hash

    a = MCItem("x", "t", "Q?", ("a", "b"), 0)
    assert item_hash(a) == item_hash(MCItem("x", "t", "Q?", ("a", "b"), 0, meta={"line": 9}))
    for changed in (MCItem("x", "t", "Q?", ("a", "b"), 1), MCItem("x", "t", "Q!", ("a", "b"), 0),
                    MCItem("x", "t", "Q?", ("a", "c"), 0), MCItem("x", "u", "Q?", ("a", "b"), 0)):
        assert item_hash(changed) != item_hash(a)
    o = OpenItem("y", "t", "Capital?", ("Paris",))
    assert item_hash(o) != item_hash(OpenItem("y", "t", "Capital?", ("Paris",), grader="exact"))
    assert item_hash(o) != item_hash(OpenItem("y", "t", "Capital?", ("Lyon",)))
