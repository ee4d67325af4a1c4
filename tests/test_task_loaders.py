"""Task loaders: each format on tiny files written here, every bad-input error, the registry.

The counts of the public sets are checked where ``../shared/data`` is present
(skipped otherwise); nothing here needs the network or a model.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

from llmcal.tasks.errors import TaskError
from llmcal.tasks.formats import load_generic, parse_mapping
from llmcal.tasks.formats_public import (
    load_arc,
    load_commonsenseqa,
    load_mmlu,
    load_piqa,
    load_sciq,
    load_truthfulqa_mc1,
)
from llmcal.core.items import MCItem, OpenItem
from llmcal.tasks.registry import TASKS, available_tasks, describe_tasks, load_task, task_kind, task_name

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, records: list) -> Path:
    return write(path, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))


def arc_rec(rid: str, labels: str | list[str], key: str, stem: str = "Which one?") -> dict:
    labels = list(labels)
    return {"id": rid, "question": {"stem": stem, "choices": [{"text": f"choice {lab}", "label": lab}
                                                                for lab in labels]}, "answerKey": key}


def raises(match_all: list[str], fn, *args, **kwargs) -> TaskError:
    with pytest.raises(TaskError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    for part in match_all:
        assert part in msg, f"{part!r} not in {msg!r}"
    return info.value


# --------------------------------------------------------------------------- ARC


def test_arc_three_four_five_choices_and_digit_labels(tmp_path):
    p = jsonl(tmp_path / "arc_easy_test.jsonl", [
        arc_rec("q4", "ABCD", "C"),
        arc_rec("q3", "ABC", "B"),
        arc_rec("q5", "ABCDE", "E"),
        arc_rec("qd", "1234", "2"),
    ])
    items = load_arc(p, task="arc_easy")
    assert [len(it.choices) for it in items] == [4, 3, 5, 4]
    assert [it.answer for it in items] == [2, 1, 4, 1]
    assert items[3].choices[items[3].answer] == "choice 2"
    assert items[0].id == "arc_easy-q4" and items[0].task == "arc_easy"
    assert items[3].meta["labels"] == ["1", "2", "3", "4"]
    assert items[2].meta["line"] == 3 and items[2].meta["source"].endswith("arc_easy_test.jsonl")
    assert all(isinstance(it, MCItem) for it in items)


def test_arc_blank_lines_are_skipped_and_lines_stay_physical(tmp_path):
    p = write(tmp_path / "a.jsonl", json.dumps(arc_rec("x", "AB", "A")) + "\n\n" + json.dumps(arc_rec("y", "AB", "Q")) + "\n")
    raises(["a.jsonl line 3", "'answerKey'", "'Q'", "['A', 'B']"], load_arc, p)


def test_arc_answer_key_not_among_labels(tmp_path):
    p = jsonl(tmp_path / "arc_easy_test.jsonl", [
        arc_rec("a", "ABCD", "A"), arc_rec("b", "ABCD", "E")])
    err = raises(["arc_easy_test.jsonl line 2: field 'answerKey' = 'E' is not among the choice labels "
                  "['A', 'B', 'C', 'D']"], load_arc, p)
    assert err.line == 2 and err.field == "answerKey"


def test_arc_malformed_json_line(tmp_path):
    p = jsonl(tmp_path / "arc.jsonl", [arc_rec("a", "AB", "A"), arc_rec("b", "AB", "B"), '{"id": "c", "question": '])
    raises(["arc.jsonl line 3", "malformed JSON"], load_arc, p)


def test_arc_missing_field_and_not_an_object(tmp_path):
    rec = arc_rec("a", "AB", "A")
    del rec["question"]["stem"]
    raises(["arc.jsonl line 1", "'question.stem'", "missing"], load_arc, jsonl(tmp_path / "arc.jsonl", [rec]))
    raises(["arc2.jsonl line 1", "JSON object"], load_arc, jsonl(tmp_path / "arc2.jsonl", ["[1, 2]"]))


def test_arc_empty_file_duplicate_id_and_one_choice(tmp_path):
    raises(["empty.jsonl", "no items"], load_arc, write(tmp_path / "empty.jsonl", "\n"))
    raises(["dup.jsonl line 2", "repeats", "line 1"], load_arc,
           jsonl(tmp_path / "dup.jsonl", [arc_rec("a", "AB", "A"), arc_rec("a", "AB", "B")]))
    raises(["one.jsonl line 1", "at least 2 choices"], load_arc, jsonl(tmp_path / "one.jsonl", [arc_rec("a", "A", "A")]))


def test_arc_empty_choice_text_and_bad_utf8(tmp_path):
    rec = arc_rec("a", "AB", "A")
    rec["question"]["choices"][1]["text"] = "  "
    raises(["e.jsonl line 1", "'question.choices.1.text'", "empty"], load_arc, jsonl(tmp_path / "e.jsonl", [rec]))
    bad = json.dumps(arc_rec("a", "AB", "A")).encode() + b"\n" + b'{"id": "\xff"}\n'
    raises(["u.jsonl line 2", "UTF-8"], load_arc, write(tmp_path / "u.jsonl", bad))


# --------------------------------------------------------------------------- SciQ


def sciq_rec(q: str, correct: str = "right", d=("w1", "w2", "w3")) -> dict:
    return {"question": q, "distractor3": d[2], "distractor1": d[0], "distractor2": d[1],
            "correct_answer": correct, "support": "..."}


def test_sciq_order_and_answer_index(tmp_path):
    p = write(tmp_path / "sciq_test.json", json.dumps([sciq_rec("q1"), sciq_rec("q2", "five", ("five", "six", "four"))],
                                                     indent=4))
    items = load_sciq(p, split="test")
    assert items[0].choices == ("w1", "w2", "w3", "right") and items[0].answer == 3
    assert [it.id for it in items] == ["sciq-test-1", "sciq-test-2"]
    assert items[0].meta["line"] == 2 and items[1].meta["line"] == 10
    # the released file has items whose correct answer repeats a distractor: kept, flagged
    assert items[1].meta.get("answer_duplicated") and items[1].meta.get("duplicate_choices")
    assert "duplicate_choices" not in items[0].meta


def test_sciq_errors(tmp_path):
    bad = sciq_rec("q2")
    del bad["distractor2"]
    text = json.dumps([sciq_rec("q1"), bad], indent=1)
    raises(["sciq_test.json line 10", "'distractor2'", "missing"], load_sciq, write(tmp_path / "sciq_test.json", text))
    raises(["broken.json line 3", "malformed JSON"], load_sciq,
           write(tmp_path / "broken.json", "[\n" + json.dumps(sciq_rec("a")) + ',\n{"question": }\n]'))
    raises(["obj.json", "JSON list"], load_sciq, write(tmp_path / "obj.json", '"just a string"'))
    raises(["none.json", "no items"], load_sciq, write(tmp_path / "none.json", "[]"))
    raises(["blank.json", "line 1", "'question'", "empty"], load_sciq,
           write(tmp_path / "blank.json", json.dumps([sciq_rec(" ")])))


# --------------------------------------------------------------------------- PIQA


def test_piqa(tmp_path):
    recs = [{"goal": "g1", "sol1": "a", "sol2": "b"}, {"goal": "g2", "sol1": "c", "sol2": "d"}]
    p = jsonl(tmp_path / "piqa_valid.jsonl", recs)
    items = load_piqa(p, write(tmp_path / "piqa_valid_labels.lst", "1\n0\n"))
    assert [it.answer for it in items] == [1, 0] and items[0].choices == ("a", "b")
    assert items[1].id == "piqa-valid-2" and items[1].question == "g2"


def test_piqa_errors(tmp_path):
    p = jsonl(tmp_path / "piqa_valid.jsonl", [{"goal": "g1", "sol1": "a", "sol2": "b"},
                                              {"goal": "g2", "sol1": "c", "sol2": "d"}])
    raises(["piqa_valid_labels.lst line 2", "'2'", "not 0 or 1"], load_piqa, p,
           write(tmp_path / "piqa_valid_labels.lst", "1\n2\n"))
    raises(["piqa_valid.jsonl", "2 records", "short.lst has 1 labels"], load_piqa, p,
           write(tmp_path / "short.lst", "1\n"))
    q = jsonl(tmp_path / "p2.jsonl", [{"goal": "g1", "sol1": "a", "sol2": "b"}, {"goal": "g2", "sol1": "c"}])
    raises(["p2.jsonl line 2", "'sol2'"], load_piqa, q, write(tmp_path / "l2.lst", "0\n1\n"))


# --------------------------------------------------------------------------- CommonsenseQA


def csqa_rec(rid: str, key: str) -> dict:
    return {"id": rid, "question": "Where?", "question_concept": "thing",
            "choices": {"label": list("ABCDE"), "text": ["bank", "library", "store", "mall", "city"]},
            "answerKey": key}


def test_commonsenseqa(tmp_path):
    items = load_commonsenseqa(jsonl(tmp_path / "commonsenseqa_dev.jsonl", [csqa_rec("x1", "A"), csqa_rec("x2", "E")]))
    assert [len(it.choices) for it in items] == [5, 5] and [it.answer for it in items] == [0, 4]
    assert items[1].id == "commonsenseqa-x2" and items[1].meta["concept"] == "thing"


def test_commonsenseqa_errors(tmp_path):
    raises(["c.jsonl line 2", "'answerKey' = 'F'", "['A', 'B', 'C', 'D', 'E']"], load_commonsenseqa,
           jsonl(tmp_path / "c.jsonl", [csqa_rec("x1", "A"), csqa_rec("x2", "F")]))
    rec = csqa_rec("x1", "A")
    rec["choices"]["text"].pop()
    raises(["d.jsonl line 1", "'choices'", "same length"], load_commonsenseqa, jsonl(tmp_path / "d.jsonl", [rec]))


# --------------------------------------------------------------------------- MMLU


def test_mmlu_folder_subjects_sorted_and_multiline_cells(tmp_path):
    root = tmp_path / "mmlu"
    write(root / "test" / "zoology_test.csv", 'Z q?,a,b,c,d,D\n')
    write(root / "test" / "algebra_test.csv",
          '"What is\n1+1?",1,2,3,4,B\n'
          '"Q with \x85 NEL and, ""quote""",x,y,z,w,A\n'
          '"Q3",p,q,r,s,C\n')
    write(root / "val" / "anatomy_val.csv", "A q?,a,b,c,d,A\n")
    items = load_mmlu(root, "test")
    assert [it.meta["subject"] for it in items] == ["algebra"] * 3 + ["zoology"]
    assert items[0].question == "What is\n1+1?" and items[0].answer == 1
    assert "\x85" in items[1].question and items[1].choices == ("x", "y", "z", "w")
    assert [it.meta["line"] for it in items[:3]] == [1, 3, 4]
    assert items[2].id == "mmlu-algebra-test-3" and items[3].answer == 3
    assert len(load_mmlu(root, "test", subjects=["zoology"])) == 1
    raises(["no subject 'anatomy' in the test split", "mmlu:anatomy:val"], load_mmlu, root, "test", ["anatomy"])
    raises(["did you mean algebra"], load_mmlu, root, "test", ["algebrra"])


def test_mmlu_errors(tmp_path):
    root = tmp_path / "mmlu"
    write(root / "test" / "s_test.csv", "q1,a,b,c,d,A\nq2,a,b,c,d,E\n")
    raises(["s_test.csv line 2", "'answer'", "'E'"], load_mmlu, root, "test")
    write(root / "test" / "s_test.csv", "q1,a,b,c,d,A\nq2,a,b,c,d\n")
    raises(["s_test.csv line 2", "5 cells"], load_mmlu, root, "test")
    write(root / "test" / "s_test.csv", "q1,a,,c,d,A\n")
    raises(["s_test.csv line 1", "column B", "empty"], load_mmlu, root, "test")
    raises(["unknown split"], load_mmlu, root, "train")


# --------------------------------------------------------------------------- TruthfulQA


TQA_HEADER = "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"


def test_truthfulqa_mc1(tmp_path):
    p = write(tmp_path / "truthfulqa.csv", ("\ufeff" + TQA_HEADER
              + 'Adversarial,Misconceptions,Q1?,Best one,"Best one; Also ok","Wrong; Wrong two;",src\n'
              + 'Adversarial,Law,"Q2, with comma?",Yes,Yes,"No; No; Maybe",src\n').encode("utf-8"))
    items = load_truthfulqa_mc1(p)
    assert items[0].choices == ("Best one", "Wrong", "Wrong two") and items[0].answer == 0
    assert items[1].choices == ("Yes", "No", "Maybe") and items[1].question == "Q2, with comma?"
    assert items[0].meta["category"] == "Misconceptions" and items[1].id == "truthfulqa_mc1-2"


def test_truthfulqa_errors(tmp_path):
    raises(["t.csv line 3", "'Incorrect Answers'"], load_truthfulqa_mc1,
           write(tmp_path / "t.csv", TQA_HEADER + "A,B,Q1,x,x,y,s\nA,B,Q2,x,x, ; ,s\n"))
    raises(["u.csv line 2", "'Best Answer'"], load_truthfulqa_mc1,
           write(tmp_path / "u.csv", "Type,Question,Incorrect Answers\nA,Q,y\n"))
    raises(["v.csv line 2", "7 columns"], load_truthfulqa_mc1,
           write(tmp_path / "v.csv", TQA_HEADER + "A,B,Q1,x,x,y,s,extra\n"))


# --------------------------------------------------------------------------- generic format


def test_generic_jsonl_defaults_answer_as_index_letter_or_text(tmp_path):
    p = jsonl(tmp_path / "mine.jsonl", [
        {"question": "q1", "choices": ["a", "b", "c"], "answer": 2},
        {"question": "q2", "choices": ["a", "b", "c"], "answer": "B"},
        {"question": "q3", "choices": ["red", "green"], "answer": "green"},
        {"question": "q4", "choices": ["a", "b"], "answer": "1", "id": "custom"},
    ])
    items = load_generic(p)
    assert [it.answer for it in items] == [2, 1, 1, 1]
    assert [it.id for it in items] == ["mine-1", "mine-2", "mine-3", "mine-custom"]
    assert items[0].task == "mine" and items[0].meta == {"source": str(p), "line": 1}


def test_generic_mapping_string_and_dict(tmp_path):
    p = jsonl(tmp_path / "m.jsonl", [{"stem": "q1", "options": ["x", "y"], "label": 1, "cat": "c1"}])
    for mapping in ("question=stem,choices=options,answer=label,meta=cat",
                    {"question": "stem", "choices": "options", "answer": "label", "meta": "cat"}):
        (item,) = load_generic(p, mapping=mapping)
        assert item.question == "q1" and item.answer == 1 and item.meta["cat"] == "c1"


def test_generic_dotted_paths_read_arc_and_commonsenseqa_layouts(tmp_path):
    arc = jsonl(tmp_path / "arcish.jsonl", [arc_rec("a", "1234", "3")])
    (item,) = load_generic(arc, mapping="question=question.stem,choices=question.choices")
    assert item.answer == 2 and item.id == "arcish-a" and item.meta["labels"] == ["1", "2", "3", "4"]
    (item,) = load_generic(jsonl(tmp_path / "cs.jsonl", [csqa_rec("z", "D")]))  # answerKey is a default name
    assert item.answer == 3 and item.choices[3] == "mall"


def test_generic_csv_semicolons_letter_columns_and_named_columns(tmp_path):
    semi = write(tmp_path / "semi.csv", "question,choices,answer\nq1,one; two; three;,two\n\"q2\",a;b,0\n")
    items = load_generic(semi)
    assert items[0].choices == ("one", "two", "three") and items[0].answer == 1 and items[1].answer == 0
    cols = write(tmp_path / "cols.csv", "question,A,B,C,D,E,answer\nq1,a,b,c,d,e,E\nq2,a,b,c,,,C\n")
    items = load_generic(cols)
    assert len(items[0].choices) == 5 and items[0].answer == 4
    assert items[1].choices == ("a", "b", "c") and items[1].meta["line"] == 3
    named = write(tmp_path / "named.csv", "prompt,o1,o2,o3,gold\nq1,x,y,z,3\n")
    (item,) = load_generic(named, mapping="question=prompt,choices=o1|o2|o3,answer=gold,answer_type=index1")
    assert item.answer == 2


def test_generic_json_list(tmp_path):
    p = write(tmp_path / "l.json", json.dumps([{"question": "q", "choices": ["a", "b"], "answer": "a"}], indent=2))
    (item,) = load_generic(p)
    assert item.answer == 0 and item.meta["line"] == 2


def test_generic_errors_name_file_line_and_field(tmp_path):
    def one(name, rec, mapping=None):
        return lambda: load_generic(jsonl(tmp_path / name, [{"question": "ok", "choices": ["a", "b"], "answer": 0}, rec]),
                                    mapping=mapping)

    raises(["g1.jsonl line 2", "'answer' = 'zz'", "neither an index"],
           one("g1.jsonl", {"question": "q", "choices": ["a", "b"], "answer": "zz"}))
    raises(["g2.jsonl line 2", "'answer' = 5", "2 choices"],
           one("g2.jsonl", {"question": "q", "choices": ["a", "b"], "answer": 5}))
    raises(["g3.jsonl line 2", "'2'", "ambiguous", "answer_type"],
           one("g3.jsonl", {"question": "q", "choices": ["1", "2", "3"], "answer": "2"}))
    raises(["g4.jsonl line 2", "'choices'", "missing", "mapping"], one("g4.jsonl", {"question": "q", "answer": 0}))
    raises(["g5.jsonl line 2", "'question'", "missing"], one("g5.jsonl", {"choices": ["a", "b"], "answer": 0}))
    raises(["g6.jsonl line 2", "identical choices"],
           one("g6.jsonl", {"question": "q", "choices": ["a", "a", "b"], "answer": "a"}))
    raises(["g7.jsonl line 1", "'stem'", "missing"],
           one("g7.jsonl", {"stem": "q", "choices": ["a", "b"], "answer": 0}, "question=stem"))
    raises(["g8.jsonl line 2", "1 choice"], one("g8.jsonl", {"question": "q", "choices": ["a"], "answer": 0}))
    raises(["g9.jsonl line 2", "'answer'", "boolean"],
           one("g9.jsonl", {"question": "q", "choices": ["a", "b"], "answer": True}))
    # the text reading disambiguates when told to
    items = load_generic(jsonl(tmp_path / "ok.jsonl", [{"question": "q", "choices": ["1", "2", "3"], "answer": "2"}]),
                         mapping="answer_type=text")
    assert items[0].answer == 1
    raises(["c.csv line 3", "'answer'"], load_generic, write(tmp_path / "c.csv", "question,choices,answer\nq,a;b,1\nq,a;b,c\n"))
    raises(["x.txt", "unknown file type"], load_generic, write(tmp_path / "x.txt", "hi"))
    raises(["nothing.jsonl", "no items"], load_generic, write(tmp_path / "nothing.jsonl", ""))


def test_parse_mapping():
    assert parse_mapping("question=stem, choices = a|b ,answer=gold") == {"question": "stem", "choices": "a|b",
                                                                          "answer": "gold"}
    assert parse_mapping(None) == {}
    raises(["unknown key 'qestion'"], parse_mapping, "qestion=stem")
    raises(["not key=field"], parse_mapping, "question")
    raises(["answer_type"], parse_mapping, "answer_type=roman")


# --------------------------------------------------------------------------- Hugging Face datasets


def test_hf_loader_through_a_local_json_file(tmp_path):
    pytest.importorskip("datasets", reason="the optional `datasets` extra is not installed")
    from llmcal.tasks.formats_hf import load_hf_task

    p = jsonl(tmp_path / "hfdata.jsonl", [
        {"id": "r1", "question": "q1", "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C"]}, "answerKey": "B"},
        {"id": "r2", "question": "q2", "choices": {"text": ["x", "y", "z"], "label": ["A", "B", "C"]}, "answerKey": "C"},
    ])
    cache = str(tmp_path / "hf_cache")
    items = load_hf_task("json", "train", data_files=str(p), cache_dir=cache)
    assert [it.answer for it in items] == [1, 2] and [it.id for it in items] == ["hfdata-r1", "hfdata-r2"]
    assert items[0].meta["row"] == 1
    q = jsonl(tmp_path / "piqaish.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b", "label": 1},
                                           {"goal": "g", "sol1": "a", "sol2": "b", "label": 7}])
    raises(["hf:json:train row 2", "'label' = 7"], load_hf_task, "json", "train",
           mapping="question=goal,choices=sol1|sol2,answer=label", data_files=str(q), cache_dir=cache)
    raises(["hf:json:nosuchsplit", "load_dataset failed"], load_hf_task, "json", "nosuchsplit",
           data_files=str(p), cache_dir=cache)


def test_hf_loader_without_datasets_says_how_to_install(monkeypatch):
    import sys

    from llmcal.tasks.formats_hf import load_hf_task

    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    raises(["datasets", "not installed", "pip install"], load_hf_task, "allenai/ai2_arc", "test")
    raises(["datasets", "not installed"], load_task, "hf:allenai/ai2_arc:ARC-Easy:test")


# --------------------------------------------------------------------------- registry


@pytest.fixture
def tiny_data(tmp_path):
    d = tmp_path / "data"
    jsonl(d / "arc_easy_test.jsonl", [arc_rec(f"t{i}", "ABCD", "A") for i in range(5)])
    jsonl(d / "arc_easy_dev.jsonl", [arc_rec("d1", "ABC", "C")])
    write(d / "sciq_valid.json", json.dumps([sciq_rec("q")]))
    write(d / "mmlu" / "val" / "anatomy_val.csv", "q,a,b,c,d,B\n")
    return d


def test_load_task_names_splits_and_limit(tiny_data):
    assert len(load_task("arc_easy", data_dir=tiny_data)) == 5
    assert len(load_task("arc_easy", data_dir=str(tiny_data), limit=2)) == 2
    (dev,) = load_task("arc_easy:dev", data_dir=tiny_data)
    assert dev.id == "arc_easy-d1" and dev.meta["split"] == "dev"
    assert load_task("arc_easy:validation", data_dir=tiny_data) == [dev]
    assert load_task("sciq:valid", data_dir=tiny_data)[0].id == "sciq-valid-1"
    assert load_task("mmlu:anatomy:val", data_dir=tiny_data)[0].answer == 1
    raises(["sciq_test.json is not in the data folder", "LLMCAL_DATA"], load_task, "sciq", data_dir=tiny_data)
    raises(["unknown split 'train'", "test, dev"], load_task, "arc_easy:train", data_dir=tiny_data)
    raises(["limit"], load_task, "arc_easy", data_dir=tiny_data, limit=0)


def test_load_task_data_dir_from_env_and_missing(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ../shared/data from here
    monkeypatch.setenv("LLMCAL_DATA", str(tiny_data))
    assert len(load_task("arc_easy")) == 5
    monkeypatch.delenv("LLMCAL_DATA")
    raises(["LLMCAL_DATA", "--data_dir", "shared"], load_task, "arc_easy")
    raises(["does not exist"], load_task, "arc_easy", data_dir=tmp_path / "nope")
    monkeypatch.setenv("LLMCAL_DATA", str(tmp_path / "gone"))
    raises(["LLMCAL_DATA", "does not exist"], load_task, "arc_easy")


def test_load_task_unknown_open_ended_and_paths(tiny_data, tmp_path):
    err = raises(["unknown task 'arc_esy'", "Did you mean 'arc_easy'", "commonsenseqa", "truthfulqa_mc1"],
                 load_task, "arc_esy")
    assert isinstance(err, ValueError)
    raises(["open-ended task, not multiple-choice"], load_task, "gsm8k", kind="mc")
    raises(["open-ended task, not multiple-choice"], load_task, "nq_open", kind="mc")
    p = jsonl(tmp_path / "own.jsonl", [{"stem": "q", "opts": ["a", "b"], "gold": "b"}])
    (item,) = load_task(str(p), mapping={"question": "stem", "choices": "opts", "answer": "gold"})
    assert item.task == "own" and item.answer == 1
    raises(["missing.jsonl", "not found"], load_task, str(tmp_path / "missing.jsonl"))
    raises(["mapping applies only"], load_task, "arc_easy", data_dir=tiny_data, mapping="question=x")
    raises(["hf:<dataset>"], load_task, "hf:a:b:c:d")


def test_registry_lists():
    names = available_tasks()
    for n in ("builtin", "arc_easy", "arc_challenge", "sciq", "piqa", "commonsenseqa", "mmlu", "truthfulqa_mc1"):
        assert n in names and n in TASKS
    assert "gsm8k" in TASKS and "gsm8k" not in available_tasks("mc")
    for n in ("builtin_open", "nq_open", "gsm8k", "truthfulqa_gen"):
        assert n in names and n in available_tasks("open") and task_kind(n) == "open"
    assert available_tasks() == available_tasks("mc") + available_tasks("open")
    rows = {r["name"]: r for r in describe_tasks()}
    assert list(rows) == names
    assert rows["gsm8k"] == {"name": "gsm8k", "kind": "open", "description": TASKS["gsm8k"].description,
                             "source": "gsm8k_test.jsonl", "splits": ["test"], "grader": "numeric", "aliases": []}
    assert rows["builtin"]["source"] == "embedded" and rows["builtin"]["grader"] is None
    assert "nq" in rows["nq_open"]["aliases"] and [r["kind"] for r in describe_tasks("mc")] == ["mc"] * 8
    with pytest.raises(ValueError, match="kind"):
        available_tasks("essay")


def test_task_kind_reads_no_data(tmp_path, monkeypatch):
    monkeypatch.delenv("LLMCAL_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # no data folder anywhere: nothing may be read
    assert task_kind("builtin_open") == "open" and task_kind("builtin") == "mc"
    assert task_kind("nq@exact_match") == "open" and task_kind("NQ-open:dev") == "open"
    assert task_kind("arc_easy:dev") == task_kind("mmlu:anatomy") == "mc"
    assert task_kind("hf:sciq:test") == task_kind("mine.jsonl") == task_kind("some/dir/x.csv") == "mc"
    assert task_name("nq@exact_match") == "nq_open" and task_name("mine.jsonl") is None
    assert task_name("hf:sciq") is None and task_name("arc_esy") is None
    raises(["unknown task 'arc_esy'", "Did you mean 'arc_easy'"], task_kind, "arc_esy")
    raises(["empty task spec"], task_kind, "  ")


def test_open_tasks_load_through_the_one_registry(tmp_path, monkeypatch):
    monkeypatch.delenv("LLMCAL_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    items = load_task("builtin_open", limit=3)
    assert len(items) == 3 and all(isinstance(it, OpenItem) and it.kind == "open" for it in items)
    assert items[0].id.endswith("-open") and {it.grader for it in items} == {"contains"}
    assert [it.grader for it in load_task("builtin_open@exact_match", limit=2)] == ["exact_match"] * 2
    assert load_task("builtin_open", limit=3, kind="open") == items
    raises(["unknown grader 'nope'", "exact_match, contains"], load_task, "builtin_open@nope")
    raises(["a grader (@contains) applies only to open-ended tasks"], load_task, "builtin@contains")
    raises(["is not an open-ended task", "builtin_open, nq_open"], load_task, "builtin", kind="open")
    (tmp_path / "x.jsonl").write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n')
    raises(["is not an open-ended task"], load_task, str(tmp_path / "x.jsonl"), kind="open")  # a multiple-choice file
    raises(["unexpected 'x'"], load_task, "builtin_open:x")
    raises(["LLMCAL_DATA", "--data_dir"], load_task, "gsm8k")  # open tasks use the data folder too


def test_open_task_files(tmp_path):
    d = tmp_path / "data"
    jsonl(d / "nq_open_dev.jsonl", [{"question": "who?", "answer": ["Ada", "Ada Lovelace"]},
                                     {"question": "where?", "answer": "Paris"}])
    jsonl(d / "gsm8k_test.jsonl", [{"question": "2+2?", "answer": "two and two\n#### 4"}])
    write(d / "truthfulqa.csv", "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
          "Adversarial,Misconceptions,Do bulls hate red?,No,No; They do not,Yes; They hate red,x\n")
    nq = load_task("nq:dev", data_dir=d)
    assert [it.answers for it in nq] == [("Ada", "Ada Lovelace"), ("Paris",)] and nq[0].id == "nq_open-1"
    assert nq[1].meta == {"line": 2} and {it.grader for it in nq} == {"contains"}
    (g,) = load_task("gsm8k", data_dir=d)
    assert g.answers == ("4",) and g.grader == "numeric"
    (t,) = load_task("truthfulqa_gen", data_dir=d)
    assert t.answers == ("No", "They do not") and t.incorrect == ("Yes", "They hate red")
    assert t.grader == "truthful_f1" and t.meta["category"] == "Misconceptions"
    raises(["unknown split 'test'", "dev"], load_task, "nq_open:test", data_dir=d)
    jsonl(d / "gsm8k_test.jsonl", [{"question": "2+2?", "answer": "4"}])
    raises(["gsm8k_test.jsonl line 1", "'#### <number>'"], load_task, "gsm8k", data_dir=d)
    jsonl(d / "nq_open_dev.jsonl", [{"question": "who?", "answer": []}])
    raises(["nq_open_dev.jsonl line 1", "non-empty list of strings"], load_task, "nq_open", data_dir=d)


@pytest.mark.skipif(importlib.util.find_spec("llmcal.tasks.builtin") is None,
                    reason="llmcal.tasks.builtin (the embedded questions) is not written yet")
def test_builtin_through_the_registry(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMCAL_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # needs no data folder
    items = load_task("builtin", limit=5)
    assert len(items) == 5 and all(isinstance(it, MCItem) for it in items)


# --------------------------------------------------------------------------- the public sets


EXPECTED = {"arc_easy": 2376, "arc_easy:dev": 570, "arc_challenge": 1172, "arc_challenge:dev": 299,
            "sciq": 1000, "sciq:valid": 1000, "piqa": 1838, "commonsenseqa": 1221, "truthfulqa_mc1": 817,
            "mmlu": 12625, "mmlu:dev": 285, "mmlu:val": 1531}


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"the public data folder {SHARED_DATA} is absent")
def test_public_sets_item_counts_match_the_readme():
    seen: set[str] = set()
    for spec, n in EXPECTED.items():
        items = load_task(spec, data_dir=SHARED_DATA)
        assert len(items) == n, spec
        ids = [it.id for it in items]
        assert len(set(ids)) == n and not seen & set(ids), spec
        seen |= set(ids)
    assert len({it.meta["subject"] for it in load_task("mmlu", data_dir=SHARED_DATA)}) == 50
    arc = load_task("arc_easy", data_dir=SHARED_DATA)
    assert {len(it.choices) for it in arc} == {3, 4, 5}
    assert sum(it.meta["labels"][0] == "1" for it in arc) == 97  # digit labels
    assert len(load_task("arc_easy", data_dir=SHARED_DATA, limit=300)) == 300


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"the public data folder {SHARED_DATA} is absent")
def test_public_open_sets_item_counts_match_the_registry():
    for spec, n in {"nq_open": 3610, "gsm8k": 1319, "truthfulqa_gen": 817}.items():
        items = load_task(spec, data_dir=SHARED_DATA)
        assert len(items) == n and str(n) in TASKS[spec].description, spec
        assert all(isinstance(it, OpenItem) for it in items) and len({it.id for it in items}) == n


# --------------------------------------------------------------------------- issue 14: hostile inputs


@pytest.mark.parametrize("answer", [0, 26, "c26", "AA", "A"])
def test_27_or_more_choices_load_and_letter_past_z(tmp_path, answer):
    """Old: 27 or more choices gave an IndexError traceback (the letters ran out)."""
    from llmcal.tasks.prompts import build_request

    p = jsonl(tmp_path / "many.jsonl", [{"question": "Pick one", "choices": [f"c{i}" for i in range(30)],
                                         "answer": answer}])
    (item,) = load_task(str(p))
    assert item.answer == {0: 0, 26: 26, "c26": 26, "AA": 26, "A": 0}[answer]
    req = build_request(item, "letters")
    assert req.continuations[25:28] == (" Z", " AA", " AB") and "\nAD. c29\nAnswer:" in req.context


def test_a_letter_beyond_the_choices_is_a_clear_error(tmp_path):
    p = jsonl(tmp_path / "many.jsonl", [{"question": "Pick", "choices": [f"c{i}" for i in range(27)],
                                         "answer": "AC"}])
    raises(["many.jsonl line 1", "field 'answer'", "A..AA"], load_task, str(p))
    p = jsonl(tmp_path / "few.jsonl", [{"question": "Pick", "choices": ["x", "y"], "answer": "AA"}])
    raises(["few.jsonl line 1", "A..B"], load_task, str(p))


def test_a_huge_question_is_refused_naming_the_item_and_the_limit(tmp_path, monkeypatch):
    """Old: a 5 MB question passed validation, loaded the model, then tried to allocate 1.42 TiB."""
    from llmcal.tasks.registry import MAX_PROMPT_CHARS, MAX_PROMPT_ENV

    monkeypatch.delenv(MAX_PROMPT_ENV, raising=False)
    p = jsonl(tmp_path / "big.jsonl", [{"question": "ok?", "choices": ["a", "b"], "answer": 0},
                                       {"id": "huge", "question": "x" * 5_000_000, "choices": ["a", "b"],
                                        "answer": 0}])
    e = raises(["big.jsonl line 2", "'big-huge'", "5000002 characters", f"limit of {MAX_PROMPT_CHARS}",
                MAX_PROMPT_ENV], load_task, str(p))
    assert e.line == 2
    raises(["big-huge"], load_task, str(p), limit=1)  # every item is checked, not just those kept
    assert len(load_task(str(p), max_prompt_chars=6_000_000)) == 2
    monkeypatch.setenv(MAX_PROMPT_ENV, "6000000")
    assert len(load_task(str(p))) == 2
    monkeypatch.setenv(MAX_PROMPT_ENV, "4")
    raises(["'big-1'", "5 characters", "limit of 4"], load_task, str(p))  # the choices count too
    monkeypatch.setenv(MAX_PROMPT_ENV, "lots")
    raises([MAX_PROMPT_ENV, "'lots'"], load_task, str(p))
    raises(["max_prompt_chars"], load_task, str(p), max_prompt_chars=0)
    raises(["builtin_open", "limit of 5"], load_task, "builtin_open", max_prompt_chars=5)  # open tasks too


def test_a_huge_question_is_refused_before_the_model_loads(tmp_path, capsys):
    from llmcal.cli.main import main

    p = jsonl(tmp_path / "big.jsonl", [{"question": "x" * 5_000_000, "choices": ["a", "b"], "answer": 0}])
    out = tmp_path / "run"
    t0 = time.perf_counter()
    assert main(["measure", "--tasks", str(p), "--output_path", str(out)]) == 2
    captured = capsys.readouterr()
    assert "big-1" in captured.err and "limit of" in captured.err
    assert "loading" not in captured.out + captured.err and time.perf_counter() - t0 < 20  # no model loaded


@pytest.mark.parametrize("spec,words", [
    ("gsm8k:foo", ["gsm8k", "unknown split 'foo'", "test"]),
    ("nq_open:/path/file.jsonl", ["nq_open", "/path/file.jsonl", "the file given after the colon does not exist"]),
    ("nq_open:data/mine.jsonl", ["data/mine.jsonl", "does not exist"]),  # read if it exists, never the public set
    ("builtin_open:typo", ["builtin_open", "'typo'"]),
    ("builtin:typo", ["builtin", "'typo'"]),
    ("builtin_open:", ["builtin_open"]),
    ("arc_easy:dev:extra", ["arc_easy"]),
    ("nq_open@contains:x", ["unknown grader"]),
])
def test_an_unknown_suffix_after_a_colon_is_refused(spec, words, tmp_path):
    """Old: ``gsm8k:foo``, ``nq_open:/path/file.jsonl`` and ``builtin_open:typo`` ran the public set."""
    data = tmp_path / "data"
    write(data / "gsm8k_test.jsonl", json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    write(data / "nq_open_dev.jsonl", json.dumps({"question": "q?", "answer": ["a"]}) + "\n")
    write(data / "arc_easy_dev.jsonl", json.dumps(arc_rec("x", "AB", "A")) + "\n")
    raises(words, load_task, spec, data_dir=data)


# ------------------------------------------------------------------ graders against hand labels

GRADING_SAMPLE = Path(__file__).parent / "fixtures" / "grading_sample.jsonl"


def _grading_rows():
    return [json.loads(line) for line in GRADING_SAMPLE.read_text().splitlines() if line.strip()]


def test_contains_agrees_with_the_hand_labels_and_the_echo_rule_is_what_helps():
    """docs/tasks.md states these numbers: 59 of 63 hand labels (93.7%), against 43 (68.3%) for plain containment."""
    from llmcal.core.text import normalize
    from llmcal.tasks.graders import contains

    def plain(answer, aliases):  # the grader before the rules: a normalized alias among the answer's words
        return any(f" {normalize(a)} " in f" {normalize(answer)} " for a in aliases if normalize(a))

    rows = _grading_rows()
    assert len(rows) == 63 and all(set(r) == {"question", "aliases", "answer", "label", "note"} for r in rows)
    assert sum(r["label"] for r in rows) == 32  # right answers; 31 wrong
    with_rules = [contains(r["answer"], r["aliases"], r["question"]) for r in rows]
    without = [plain(r["answer"], r["aliases"]) for r in rows]
    agree = sum(g == r["label"] for g, r in zip(with_rules, rows))
    agree_old = sum(g == r["label"] for g, r in zip(without, rows))
    assert (agree, agree_old) == (59, 43)
    false_credit_old = sorted(r["note"] for g, r in zip(without, rows) if g and not r["label"])
    assert false_credit_old == ["echo"] * 10 + ["hedged wrong"] + ["negated number"] + ["negation"] * 5
    # every echo and negation row: the plain grader credited it, the rules do not
    fixed = [i for i, r in enumerate(rows) if r["note"] in ("echo", "negation", "negated number") and not r["label"]]
    assert len(fixed) == 16 and all(without[i] and not with_rules[i] for i in fixed)
    # what is still missed is recall (aliases the data does not list, a paraphrase), plus one hedge
    missed = {rows[i]["note"] for i, (g, r) in enumerate(zip(with_rules, rows)) if g != r["label"]}
    assert missed == {"paraphrase the grader misses", "short form not among aliases",
                      "surname only, not among aliases", "hedged wrong"}


def test_contains_echo_and_negation_rules():
    from llmcal.tasks.graders import contains, grade, token_f1

    q = "who voices olaf in the movie frozen"
    assert not contains("Olaf is a snowman, the voice is not mentioned.", ["Olaf"], q)
    assert contains("Olaf", ["Olaf"], q)  # the whole answer is the alias: the model did answer it
    assert contains("Olaf is voiced by Josh Gad.", ["Josh Gad", "Olaf"], q)
    assert not contains("It is not Paris.", ["Paris"]) and contains("Not Lyon but Paris.", ["Paris"])
    assert contains("Paris, not Lyon.", ["Paris"])
    assert not grade("contains", "The movie Frozen stars Olaf.", ["Olaf"], question=q)
    assert grade("contains", "The movie Frozen stars Olaf.", ["Olaf"])  # no question given: no echo rule
    assert not token_f1("the snowman olaf", ["Olaf the snowman"], "is olaf the snowman in frozen")
    assert token_f1("Olaf the snowman", ["Olaf the snowman"], "is olaf the snowman in frozen")


# ------------------------------------------------------------------ any data file

MMLU_ROWS = 'What is 2+2?,3,4,5,6,B\nWhat is 3+3?,6,7,8,9,A\n'


def test_headerless_mmlu_csv_keeps_its_first_row_and_a_header_can_be_declared(tmp_path):
    p = tmp_path / "astronomy_test.csv"
    p.write_text(MMLU_ROWS)
    items = load_task(str(p))
    assert [it.question for it in items] == ["What is 2+2?", "What is 3+3?"]  # the first row is an item
    assert [it.answer for it in items] == [1, 0] and items[0].choices == ("3", "4", "5", "6")
    with pytest.raises(TaskError, match="field 'question' or 'question' is missing|is missing"):
        load_task(str(p) + "[header=yes]")  # declared: the first row names the columns, so no 'question'
    odd = tmp_path / "odd.csv"
    odd.write_text("a,b,c\nd,e,f\n")
    with pytest.raises(TaskError, match=r"odd.csv line 1: the first row \(3 cells\).*--fields question=0"):
        load_task(str(odd))
    assert [it.question for it in load_task(str(odd) + "[question=0,choices=1|2,answer=1:text,header=no]")] == ["a", "d"]


def test_a_folder_of_mmlu_csvs_is_one_task_with_a_subject_per_file(tmp_path):
    (tmp_path / "algebra_test.csv").write_text(MMLU_ROWS)
    (tmp_path / "anatomy_test.csv").write_text("Which organ pumps blood?,heart,liver,lung,skin,A\n")
    items = load_task(str(tmp_path))
    assert len(items) == 3 and {it.task for it in items} == {tmp_path.name}
    assert [it.meta["subject"] for it in items] == ["algebra", "algebra", "anatomy"]
    assert len({it.id for it in items}) == 3
    mm = load_task(f"mmlu:{tmp_path}")
    assert {it.task for it in mm} == {"mmlu"} and [it.meta["subject"] for it in mm][-1] == "anatomy"


def test_open_ended_files_with_alias_lists(tmp_path):
    csv_path = tmp_path / "qa.csv"
    csv_path.write_text("question,aliases\nwho wrote hamlet,Shakespeare|William Shakespeare\n")
    jl = tmp_path / "qa.jsonl"
    jl.write_text('{"question": "capital of france", "answers": ["Paris"], "grader": "exact_match"}\n')
    (it,) = load_task(str(csv_path))
    assert isinstance(it, OpenItem) and it.answers == ("Shakespeare", "William Shakespeare") and it.grader == "contains"
    assert task_kind(str(csv_path)) == "open" and task_kind(str(jl)) == "open"
    (it,) = load_task(str(jl))
    assert it.grader == "exact_match"
    with pytest.raises(TaskError, match="not an open-ended task|open-ended task, not multiple-choice"):
        load_task(str(jl), kind="mc")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answers": []}\n')
    with pytest.raises(TaskError, match=r"bad.jsonl line 1: .*'answers' must be a non-empty list"):
        load_task(str(bad))


def test_a_registered_open_task_reads_the_file_it_is_given(tmp_path):
    nq = tmp_path / "mine.jsonl"
    nq.write_text('{"question": "who?", "answer": ["me"]}\n{"question": "what?", "answer": ["it"]}\n')
    items = load_task(f"nq_open:{nq}")
    assert [it.question for it in items] == ["who?", "what?"]  # this file, never the public set
    with pytest.raises(TaskError, match=r"nope.jsonl: task 'nq_open': the file given after the colon does not exist"):
        load_task(f"nq_open:{tmp_path / 'nope.jsonl'}")
    with pytest.raises(TaskError, match="task 'arc_easy' reads only its own data-folder files"):
        load_task(f"arc_easy:{nq}")


def test_fields_on_the_command_line_and_in_yaml(tmp_path):
    from llmcal.cli.commands import run_config
    from llmcal.cli.main import build_parser
    from llmcal.tasks.formats import fields_spec

    wino = tmp_path / "wino.csv"
    wino.write_text("sentence,option1,option2,answer\nThe trophy did not fit because _ was too big.,trophy,"
                    "suitcase,1\nThe cat chased _ up the tree.,the mouse,the dog,2\n")
    fields = "question=sentence,choices=option1|option2,answer=answer:index1"
    args = build_parser().parse_args(["run", "--tasks", f"builtin,{wino}", "--fields", fields])
    cfg = run_config(args)
    assert tuple(cfg.tasks) == ("builtin", f"{wino}[{fields}]")
    items = load_task(cfg.tasks[1])
    assert [it.answer for it in items] == [0, 1] and items[1].choices == ("the mouse", "the dog")
    y = tmp_path / "fields.yaml"
    y.write_text("question: sentence\nchoices: [option1, option2]\nanswer: answer:index1\n")
    assert fields_spec(str(y)) == fields
    y.write_text("question: sentence\nchoises: [option1, option2]\n")
    with pytest.raises(TaskError, match=r"fields.yaml: --fields: mapping: unknown key 'choises'"):
        fields_spec(str(y))
    with pytest.raises(TaskError, match="applies to data files"):
        run_config(build_parser().parse_args(["run", "--tasks", "builtin", "--fields", fields]))
    with pytest.raises(TaskError, match=r"wino.csv line 2: field 'question' is missing \(name the question field: "
                                        r"--fields question=FIELD"):
        load_task(str(wino))


def test_tasks_command_lists_every_kind_and_checks_the_data_folder(tmp_path, capsys):
    from llmcal.cli.main import main

    (tmp_path / "nq_open_dev.jsonl").write_text('{"question": "q", "answer": ["a"]}\n')
    assert main(["tasks", "--data_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(" ")}
    assert set(available_tasks()) <= set(rows)  # both kinds
    assert " ready " in rows["nq_open"] and "missing gsm8k_test.jsonl" in rows["gsm8k"]
    assert "embedded" in rows["builtin_open"] and "lmeval:NAME" in out and "FOLDER" in out
    # the default calibration mix is listed, with the files its members lack in this folder
    assert "builtin + arc_easy" in rows["mix"] and "missing" in rows["mix"] and "arc_easy_test.jsonl" in rows["mix"]
    assert main(["tasks", "--data_dir", str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err
