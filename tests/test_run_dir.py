"""Run folders survive a crash at any byte and refuse to mix two different runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmcal.core.sample import Sample
from llmcal.records.run_dir import RunDir, RunDirError


def _line(i: int) -> dict:
    """A minimal valid multiple-choice record (a samples.jsonl line)."""
    return {"id": f"t-{i}", "task": "t", "prompt": "Q", "question": "Q", "choices": ["a", "b"], "reference": 0,
            "reference_text": "a", "prediction": i % 2, "prediction_text": "ab"[i % 2], "correct": not i % 2,
            "prediction_norm": 0, "correct_norm": True, "option_logprobs": [-0.5, -1.0], "option_ntokens": [1, 1],
            "option_nchars": [1, 1], "option_is_greedy": [True, False], "signals": {"option_prob": 0.6},
            "meta": {}, "hidden_row": i}


def _rec(i: int) -> Sample:
    return Sample.from_dict(_line(i))


def test_append_and_read_round_trip(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.start({"model": "m"}, ["model"]) is False
    h = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    run.append([_rec(0), _rec(1)], h)
    assert [s.id for s in run.read_samples()] == ["t-0", "t-1"]
    np.testing.assert_array_equal(run.load_hidden(), h)


def test_torn_last_line_and_extra_hidden_rows_are_dropped(tmp_path):
    run = RunDir(tmp_path / "r")
    run.start({"model": "m"}, ["model"])
    run.append([_rec(0)], np.zeros((1, 2, 3), np.float32))
    # a crash after the hidden rows of the next batch and half a sample line
    with open(run.hidden_path, "ab") as f:
        f.write(np.ones((2, 2, 3), np.float32).tobytes())
    with open(run.samples_path, "a") as f:
        f.write(json.dumps(_line(1))[:10])
    samples = run.repair()
    assert [s.id for s in samples] == ["t-0"]
    assert run.hidden_path.stat().st_size == 1 * 2 * 3 * 4
    assert run.samples_path.read_text().count("\n") == 1
    # the next batch continues cleanly
    run.append([_rec(1)], np.full((1, 2, 3), 7, np.float32))
    assert [s.id for s in run.read_samples()] == ["t-0", "t-1"]
    assert run.load_hidden()[1].max() == 7


def test_complete_json_without_newline_counts_as_torn(tmp_path):
    run = RunDir(tmp_path / "r")
    run.start({}, [])
    run.samples_path.write_text(json.dumps(_line(0)) + "\n" + json.dumps(_line(1)))
    assert [s.id for s in run.repair()] == ["t-0"]


def test_corrupt_middle_line_names_the_line(tmp_path):
    run = RunDir(tmp_path / "r")
    run.start({}, [])
    run.samples_path.write_text(json.dumps(_line(0)) + "\n{oops\n" + json.dumps(_line(2)) + "\n")
    with pytest.raises(RunDirError, match="line 2"):
        run.repair()


def test_different_run_in_same_folder_is_refused(tmp_path):
    run = RunDir(tmp_path / "r")
    run.start({"model": "a", "tasks": ["x"]}, ["model", "tasks"])
    with pytest.raises(RunDirError, match="'tasks'"):
        run.start({"model": "a", "tasks": ["y"]}, ["model", "tasks"])
    # --overwrite starts over
    run.append([_rec(0)], None)
    assert run.start({"model": "a", "tasks": ["y"]}, ["model", "tasks"], overwrite=True) is False
    assert not run.samples_path.exists()


def test_duplicate_ids_are_reported(tmp_path):
    run = RunDir(tmp_path / "r")
    run.start({}, [])
    run.append([_rec(0), _rec(0)], None)
    with pytest.raises(RunDirError, match="duplicate"):
        run.read_samples()


def test_resume_keeps_what_the_earlier_run_recorded(tmp_path):
    run = RunDir(tmp_path / "r")
    run.start({"model": "a"}, ["model"])
    cfg = run.config()
    cfg["backend"] = {"n_layers": 30}
    run.config_path.write_text(json.dumps(cfg))
    run.start({"model": "a", "max_tokens": 512}, ["model"])
    assert run.config()["backend"] == {"n_layers": 30} and run.config()["max_tokens"] == 512


def test_writes_are_atomic_tracked_and_locked(tmp_path):
    import os

    from llmcal.records.run_dir import LOCK, MANIFEST

    run = RunDir(tmp_path / "r")
    run.start({"model": "m"}, ["model"])
    run.append([_rec(0)], np.zeros((1, 2, 3), np.float32))
    run.write_json(run.results_path, {"a": 1})
    run.write_text(run.report_path, "<html>")
    manifest = json.loads((run.path / MANIFEST).read_text())
    assert manifest["created_folder"] is True
    assert set(manifest["files"]) == {LOCK, "config.json", "samples.jsonl", "hidden_states.bin",
                                      "hidden_states.json", "results.json", "report.html"}
    assert not list(run.path.glob("*.tmp"))
    meta = json.loads(run.hidden_meta_path.read_text())
    assert len(meta["row_crc32"]) == 1  # one checksum a row
    with run.lock():
        assert (run.path / LOCK).read_text().split()[0] == str(os.getpid())
        with run.lock(exclusive=False), run.lock():  # locks nest within a process
            assert run.read_samples()
    assert run.holds_lock() is False


def test_clear_removes_only_llmcal_files_and_refuses_a_foreign_folder(tmp_path):
    run = RunDir(tmp_path / "r")
    run.start({"model": "m"}, ["model"])
    run.append([_rec(0)], None)
    (run.path / "mine.txt").write_text("keep")
    run.clear()
    assert {p.name for p in run.path.iterdir()} == {"mine.txt", ".llmcal.lock", ".llmcal-manifest.json"}
    foreign = RunDir(tmp_path / "f")
    foreign.path.mkdir()
    (foreign.path / "config.json").write_text("{}")
    (foreign.path / "model.safetensors").write_text("w")
    with pytest.raises(RunDirError, match="not a run folder written by llmcal"):
        foreign.start({"model": "m"}, ["model"], overwrite=True)
    assert {p.name for p in foreign.path.iterdir()} == {"config.json", "model.safetensors"}


def test_files_in_a_subfolder_are_in_the_manifest_and_cleared(tmp_path):
    # lm-eval's logs go to <run>/lmeval/: --overwrite must remove them like any other file llmcal wrote
    run = RunDir(tmp_path / "r")
    run.start({"model": "m"}, ["model"])
    (run.path / "lmeval").mkdir()
    run.write_text(run.path / "lmeval" / "results_x.json", "{}")
    manifest = json.loads((run.path / ".llmcal-manifest.json").read_text())
    assert "lmeval/results_x.json" in manifest["files"]
    assert "lmeval/results_x.json" in run.clear() and not (run.path / "lmeval").exists()
    # a user's file beside them stays, and so does the folder holding it
    (run.path / "lmeval").mkdir()
    run.write_text(run.path / "lmeval" / "samples_t.jsonl", "")
    (run.path / "lmeval" / "notes.txt").write_text("mine")
    run.clear()
    assert [p.name for p in (run.path / "lmeval").iterdir()] == ["notes.txt"]
