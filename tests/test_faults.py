"""Fault injection on run folders: kill -9 at each named write point, concurrent writers,
damaged files, a foreign folder under --overwrite, a failed start, changed items, and a
server that answers NaN or not-JSON.  Each case asserts the outcome: nothing lost, nothing
duplicated, or a one-line error (exit 2) naming the file.  docs/reliability.md tabulates them.

No model is loaded: ``tests/fault_backend.py`` is a deterministic backend (``--model fake``)
with hidden states, and the kills run it in a subprocess with ``LLMCAL_FAULT`` set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fault_backend
from llmcal.cli.main import main
from llmcal.records.run_dir import FAULT_EXIT, MANIFEST, RunDir, RunDirBusy, RunDirError

HERE = Path(__file__).resolve().parent
N_ITEMS = 150  # three batches of 64, 64, 22


@pytest.fixture(autouse=True)
def _fake_backend(monkeypatch):
    from llmcal.backends.registry import BACKENDS

    monkeypatch.setitem(BACKENDS, "fake", "fault_backend:FakeBackend")
    monkeypatch.delenv("LLMCAL_FAULT", raising=False)


def _task(path: Path, n: int = N_ITEMS, answer_shift: int = 0) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"q{i}", "question": f"Question {i}?", "choices": ["a", "b", "c"],
                                "answer": (i + answer_shift) % 3}) + "\n")
    return path


def _measure_args(task: Path, out: Path, *extra: str) -> list[str]:
    return ["measure", "--model", "fake", "--tasks", str(task), "--output_path", str(out), "--quiet", *extra]


def _sub(args: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLMCAL_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env.pop("LLMCAL_FAULT", None)
    if fault:
        env["LLMCAL_FAULT"] = fault
    return subprocess.run([sys.executable, str(HERE / "fault_backend.py"), *args], capture_output=True, text=True,
                          env=env, timeout=120)


def _files(out: Path) -> dict[str, bytes]:
    return {n: (out / n).read_bytes() for n in ("samples.jsonl", "hidden_states.bin", "hidden_states.json")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted measure of the same items: what every interrupted one must end up as, byte for byte."""
    from llmcal.backends.registry import BACKENDS

    d = tmp_path_factory.mktemp("ref")
    task = _task(d / "t.jsonl")
    BACKENDS["fake"] = "fault_backend:FakeBackend"
    try:
        assert main(_measure_args(task, d / "R")) == 0
    finally:
        BACKENDS.pop("fake", None)
    return task, _files(d / "R")  # the same task file for all (its path is in each record's meta)


# ------------------------------------------------------------------ kill -9 at each write point
@pytest.mark.parametrize("fault", ["in_config_write", "in_config_write:2", "in_manifest_write",
                                   "after_hidden_append", "after_hidden_append:2", "in_hidden_meta_write:3",
                                   "after_hidden_meta:2", "in_samples_append", "in_samples_append:2",
                                   "after_samples_append:2", "after_samples_append:3"])
def test_kill_at_a_write_point_then_rerun_loses_and_duplicates_nothing(tmp_path, reference, fault):
    task, reference = reference
    out = tmp_path / "R"
    r = _sub(_measure_args(task, out), fault=fault)
    assert r.returncode == FAULT_EXIT, r.stderr[-2000:]
    assert main(_measure_args(task, out)) == 0  # the same command again
    got = _files(out)
    assert got == reference  # bitwise: no item lost, none twice, every hidden row and checksum in place
    ids = [json.loads(x)["id"] for x in got["samples.jsonl"].decode().splitlines()]
    assert len(ids) == N_ITEMS == len(set(ids))
    assert not list(out.glob("*.tmp"))  # the rerun's atomic writes left no temporary file behind


def test_kill_while_writing_results_keeps_the_samples_and_calibrate_recovers(tmp_path, reference):
    task, reference = reference
    out = tmp_path / "R"
    args = ["run", "--model", "fake", "--tasks", str(task), "--output_path", str(out), "--quiet", "--bootstrap", "0",
            "--no_report"]
    r = _sub(args, fault="in_json_write")  # the first JSON written after the samples: results.json
    assert r.returncode == FAULT_EXIT, r.stderr[-2000:]
    assert not (out / "results.json").exists() and _files(out) == reference
    assert main(args) == 0
    assert json.loads((out / "results.json").read_text())["overall"]["n"] == N_ITEMS
    assert _files(out) == reference and (out / "calibration.json").exists()


# ------------------------------------------------------------------ concurrent writers
class _Holder:
    """Another process holding the folder's lock until told to stop."""

    def __init__(self, path: Path, exclusive: bool = True) -> None:
        code = ("import sys; from llmcal.records.run_dir import RunDir\n"
                f"with RunDir({str(path)!r}).lock(exclusive={exclusive}):\n"
                "    print('locked', flush=True); sys.stdin.read()\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout.readline().strip() == "locked"

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path, capsys):
    task = _task(tmp_path / "t.jsonl", n=40)
    out = tmp_path / "R"
    assert main(_measure_args(task, out) + ["--limit", "20"]) == 0
    before = _files(out)
    holder = _Holder(out)
    try:
        for args in (_measure_args(task, out) + ["--limit", "20"],
                     ["run", "--model", "fake", "--tasks", str(task), "--output_path", str(out), "--limit", "20",
                      "--quiet"],
                     ["calibrate", str(out), "--quiet"], ["report", str(out)]):
            capsys.readouterr()
            assert main(args) == 2
            err = capsys.readouterr().err
            assert f"is being written by pid {holder.proc.pid}" in err and "--output_path" in err, err
        with pytest.raises(RunDirBusy, match=f"pid {holder.proc.pid}"):
            RunDir(out).read_samples()  # readers too: never a half-written batch
    finally:
        holder.stop()
    assert _files(out) == before  # the refused commands changed nothing
    assert main(["calibrate", str(out), "--quiet", "--bootstrap", "0"]) == 0


def test_a_writer_is_refused_while_a_reader_holds_the_folder(tmp_path, capsys):
    task = _task(tmp_path / "t.jsonl", n=20)
    out = tmp_path / "R"
    assert main(_measure_args(task, out)) == 0
    holder = _Holder(out, exclusive=False)
    try:
        assert RunDir(out).read_samples()  # readers share
        assert main(["calibrate", str(out), "--quiet"]) == 2
        assert "is being read by another process" in capsys.readouterr().err
    finally:
        holder.stop()


def test_a_reader_never_cuts_a_writers_rows(tmp_path):
    """The old bug: `calibrate` during a write truncated the hidden rows of the batch in flight."""
    run = RunDir(tmp_path / "R")
    task = _task(tmp_path / "t.jsonl", n=10)
    assert main(_measure_args(task, run.path)) == 0
    extra = np.ones((3, 2, fault_backend.HIDDEN), np.float32).tobytes()
    with open(run.hidden_path, "ab") as f:  # a writer's next batch: rows appended, sample lines not yet
        f.write(extra)
    size = run.hidden_path.stat().st_size
    with run.lock(exclusive=False):
        assert len(run.read_samples()) == 10 and run.load_hidden().shape[0] == 10
    assert run.hidden_path.stat().st_size == size  # a reader leaves them alone


# ------------------------------------------------------------------ --overwrite
def test_overwrite_never_deletes_a_folder_llmcal_did_not_make(tmp_path, capsys):
    """Issue 14 item 1: v/ with config.json {} and w.safetensors was removed, recursively."""
    v = tmp_path / "v"
    (v / "sub").mkdir(parents=True)
    (v / "config.json").write_text("{}")
    (v / "w.safetensors").write_text("w")
    (v / "sub" / "x").write_text("x")
    before = sorted(p.relative_to(v).as_posix() for p in v.rglob("*"))
    assert main(["measure", "--output_path", str(v), "--overwrite", "--model_args", "pretrained=/nonexistent"]) == 2
    assert "/nonexistent" in capsys.readouterr().err
    task = _task(tmp_path / "t.jsonl", n=10)
    assert main(_measure_args(task, v, "--overwrite")) == 2  # a model that loads: still refused, before any change
    err = capsys.readouterr().err
    assert "not a run folder written by llmcal" in err and "nothing was removed" in err
    assert sorted(p.relative_to(v).as_posix() for p in v.rglob("*")) == before
    assert (v / "config.json").read_text() == "{}"


def test_overwrite_removes_only_what_llmcal_wrote(tmp_path):
    task = _task(tmp_path / "t.jsonl", n=20)
    out = tmp_path / "R"
    assert main(["run", "--model", "fake", "--tasks", str(task), "--output_path", str(out), "--quiet",
                 "--bootstrap", "0"]) == 0
    (out / "notes.txt").write_text("mine")
    (out / "plots").mkdir()
    assert main(_measure_args(task, out, "--overwrite", "--limit", "5")) == 0
    names = {p.name for p in out.iterdir()}
    assert {"notes.txt", "plots", "config.json", "samples.jsonl", MANIFEST} <= names
    assert not {"results.json", "calibration.json", "report.html"} & names
    assert len((out / "samples.jsonl").read_text().splitlines()) == 5


def test_run_with_overwrite_into_a_new_folder(tmp_path):
    """`llmcal run --overwrite` on a folder that does not exist yet: run() holds the lock file while
    measure checks the folder again, and that lock alone must not make it "not llmcal's"."""
    task = _task(tmp_path / "t.jsonl", n=12)
    out = tmp_path / "new"
    assert main(["run", "--model", "fake", "--tasks", str(task), "--output_path", str(out), "--overwrite",
                 "--quiet", "--bootstrap", "0"]) == 0
    assert len((out / "samples.jsonl").read_text().splitlines()) == 12 and (out / "results.json").is_file()


def test_overwrite_with_a_model_that_fails_to_load_keeps_the_earlier_run(tmp_path, capsys):
    task = _task(tmp_path / "t.jsonl", n=20)
    out = tmp_path / "R"
    assert main(_measure_args(task, out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for bad in (["--model_args", "fail=yes"], ["--hidden_layers", "99"]):
        assert main(_measure_args(task, out, "--overwrite", *bad)) == 2
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # loaded before anything was removed


# ------------------------------------------------------------------ a failed start leaves nothing behind
@pytest.mark.parametrize("bad, good", [
    (["--hidden_layers", "99"], []),
    (["--model_args", "fail=yes"], []),
])
def test_a_failed_start_leaves_no_config_behind(tmp_path, bad, good):
    task = _task(tmp_path / "t.jsonl", n=10)
    out = tmp_path / "R"
    assert main(_measure_args(task, out, *bad)) == 2
    assert not out.exists()  # a folder it made is gone again
    out.mkdir()
    (out / "keep.txt").write_text("k")
    assert main(_measure_args(task, out, *bad)) == 2
    assert {p.name for p in out.iterdir()} == {"keep.txt"}  # an existing folder is left as it was
    assert main(_measure_args(task, out, *good)) == 0  # the corrected command is not refused


def test_a_refused_backend_argument_leaves_no_config_behind(tmp_path, capsys):
    task = _task(tmp_path / "t.jsonl", n=10)
    out = tmp_path / "R"
    args = ["measure", "--model", "openai", "--model_args", "base_url=http://127.0.0.1:9/v1,model=m,concurrency=0",
            "--tasks", str(task), "--output_path", str(out), "--quiet"]
    assert main(args) == 2
    assert "concurrency" in capsys.readouterr().err and not out.exists()


# ------------------------------------------------------------------ resume by content
def test_resume_refuses_items_whose_content_changed(tmp_path, capsys):
    """Issue 14 item 4: editing every answer and rerunning gave exit 0 with the old records."""
    task = _task(tmp_path / "t.jsonl", n=20)
    out = tmp_path / "R"
    assert main(_measure_args(task, out)) == 0
    before = _files(out)
    _task(task, n=20, answer_shift=1)  # every answer edited, ids unchanged
    assert main(_measure_args(task, out)) == 2
    err = capsys.readouterr().err
    assert "20 item(s) changed" in err and "'t-q0'" in err and "--overwrite" in err
    assert _files(out) == before
    assert main(_measure_args(task, out, "--overwrite")) == 0
    recs = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in recs[:3]] == [1, 2, 0]


def _arc(folder: Path, n: int, key: str) -> None:
    folder.mkdir()
    with open(folder / "arc_easy_test.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"x{i}", "question": {"stem": f"Question {i}?", "choices": [
                {"text": t, "label": lab} for t, lab in (("red", "A"), ("green", "B"), ("blue", "C"))]},
                "answerKey": key}) + "\n")


def test_switching_the_data_dir_is_caught_like_an_edit(tmp_path, capsys):
    _arc(tmp_path / "a", 10, "A")
    _arc(tmp_path / "b", 10, "C")  # the same ids, other answers
    out = tmp_path / "R"
    args = ["measure", "--model", "fake", "--tasks", "arc_easy", "--output_path", str(out), "--quiet"]
    assert main(args + ["--data_dir", str(tmp_path / "a")]) == 0
    assert main(args + ["--data_dir", str(tmp_path / "b")]) == 2
    assert "10 item(s) changed since they were scored" in capsys.readouterr().err


def test_records_without_a_hash_still_resume(tmp_path):
    """Folders written before item_hash existed resume as before (the hash is not checked)."""
    task = _task(tmp_path / "t.jsonl", n=20)
    out = tmp_path / "R"
    assert main(_measure_args(task, out, "--limit", "10")) == 0
    lines = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    for d in lines:
        d.pop("item_hash")
    (out / "samples.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines))
    assert main(_measure_args(task, out, "--limit", "10")) == 0


# ------------------------------------------------------------------ damaged files: exit 2, the file named
@pytest.fixture
def measured(tmp_path):
    task = _task(tmp_path / "t.jsonl", n=40)
    out = tmp_path / "R"
    assert main(["run", "--model", "fake", "--tasks", str(task), "--output_path", str(out), "--quiet",
                 "--bootstrap", "0", "--no_report"]) == 0
    return task, out


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("name, content, command, match", [
    ("config.json", "", "measure", r"config\.json: not valid JSON"),
    ("config.json", "{\"model\": ", "calibrate", r"config\.json: not valid JSON"),
    ("config.json", DEEP, "calibrate", r"config\.json: JSON nested too deeply"),
    ("config.json", "[1, 2]", "calibrate", r"config\.json: expected a JSON object"),
    ("hidden_states.json", "{oops", "measure", r"hidden_states\.json: not valid JSON"),
    ("hidden_states.json", "{\"row_shape\": \"x\"}", "measure", r"hidden_states\.json: field 'row_shape'"),
    ("results.json", "{oops", "report", r"results\.json: not valid JSON"),
    ("results.json", DEEP, "report", r"results\.json: JSON nested too deeply"),
    ("results.json", "{\"schema_version\": 1}", "report", r"results\.json: field 'overall': missing"),
    ("results.json", "{\"overall\": {}, \"split\": {}, \"signals_test\": {}, \"calibrated_test\": {}, \"primary\": {}}",
     "report", r"results\.json: field 'overall.accuracy'"),
    ("samples.jsonl", None, "calibrate", r"samples\.jsonl line 3: not UTF-8"),
    ("samples.jsonl", "deep", "calibrate", r"samples\.jsonl line 3: JSON nested too deeply"),
    ("hidden_states.bin", "delete", "measure", r"hidden_states\.bin: missing"),
    ("hidden_states.bin", "flip", "measure", r"hidden_states\.bin: row 7 does not match its checksum"),
    ("hidden_states.bin", "cut", "measure", r"hidden_states\.bin: holds 39 rows but samples\.jsonl has 40"),
])
def test_a_damaged_file_is_one_clear_error_naming_it(measured, capsys, name, content, command, match):
    task, out = measured
    p = out / name
    if name == "samples.jsonl":
        lines = p.read_bytes().split(b"\n")
        lines[2] = b'{"id": "\xff\xfe"}' if content is None else DEEP.encode()
        p.write_bytes(b"\n".join(lines))
    elif content == "delete":
        p.unlink()
    elif content == "flip":
        data = bytearray(p.read_bytes())
        row = 2 * fault_backend.HIDDEN * 4
        data[7 * row + 5] ^= 0xFF  # one byte inside row 7
        p.write_bytes(bytes(data))
    elif content == "cut":
        p.write_bytes(p.read_bytes()[: -2 * fault_backend.HIDDEN * 4])
    else:
        p.write_text(content)
    args = {"measure": _measure_args(task, out), "calibrate": ["calibrate", str(out), "--quiet"],
            "report": ["report", str(out)]}[command]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
    import re

    assert re.search(match, err), err


def test_damaged_hidden_states_are_caught_on_load_too(measured):
    _, out = measured
    run = RunDir(out)
    assert run.load_hidden().shape == (40, 2, fault_backend.HIDDEN)
    data = bytearray(run.hidden_path.read_bytes())
    data[-1] ^= 0x01
    run.hidden_path.write_bytes(bytes(data))
    with pytest.raises(RunDirError, match="row 39 does not match its checksum"):
        run.load_hidden()


@pytest.mark.parametrize("temperature", [-1.5, 1e-300, float("nan")])
def test_an_impossible_temperature_in_calibration_json_is_refused(measured, temperature):
    """Issue 14 item 16: T = -1.5 inverted every confidence in `ask`; 1e-300 forced them to 0 or 1."""
    from llmcal.calibrators.calibration import CalibrationSet

    from llmcal.calibrators.calibration import Calibration

    rng = np.random.default_rng(0)
    x = rng.uniform(0.05, 0.95, 400)
    cal = Calibration.fit_arrays("option_prob", "temperature", rng.uniform(size=400) < x ** 2, values=x, kind="open")
    p = measured[1] / "calibration.json"
    CalibrationSet({"temperature": cal}, "temperature").save(p)
    assert CalibrationSet.load(p).primary.state.temperature_ > 0
    d = json.loads(p.read_text())
    d["calibrations"]["temperature"]["state"]["temperature_"] = temperature
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"calibration\.json: calibrations\.temperature: field 'state\.temperature_'"):
        CalibrationSet.load(p)
    for bad in ("{oops", DEEP):
        p.write_text(bad)
        with pytest.raises(ValueError, match=r"calibration\.json: "):
            CalibrationSet.load(p)


# ------------------------------------------------------------------ free-form: undefined AUROC (item 18)
@pytest.mark.parametrize("mode", ["test_all_wrong", "test_all_right", "all_right"])
def test_open_run_with_one_class_test_half_calibrates_and_reports(tmp_path, mode):
    from llmcal.core.sample import Sample
    from llmcal.core.split import split_indices

    n = 40
    cal = set(split_indices(["t"] * n, 0.5, 0)[0].tolist())
    rng = np.random.default_rng(0)
    run = RunDir(tmp_path / "R")
    run.start({"name": "R", "model": "x", "tasks": ["t"], "kind": "open"}, [])
    recs = []
    for i in range(n):
        correct = {"test_all_wrong": i in cal and i % 2 == 0, "test_all_right": (i % 2 == 0) if i in cal else True,
                   "all_right": True}[mode]
        recs.append(Sample.from_dict({
            "id": f"t-{i}", "task": "t", "kind": "open", "question": "q", "prompt": "q", "answers": ["a"],
            "grader": "contains", "prediction_text": "a", "correct": bool(correct), "missing": [],
            "signals": {"mean_token_prob": float(rng.uniform()), "ptrue": float(rng.uniform())}}))
    run.append(recs, None)
    assert main(["calibrate", str(run.path), "--bootstrap", "10", "--quiet"]) == 0
    assert main(["report", str(run.path)]) == 0 and run.report_path.exists()
    from llmcal.pipeline.evaluate import signals_table

    table = signals_table(json.loads(run.results_path.read_text()))
    assert "| mean_token_prob | nan |" in table


# ------------------------------------------------------------------ a server that answers NaN or not JSON
def _echo_server(bodies: list):
    """An httpx transport answering /completions echo requests; ``bodies`` are answered first, in order."""
    import httpx

    def handler(request):
        body = json.loads(request.content)
        if bodies:
            b = bodies.pop(0)
            return httpx.Response(200, text=b) if isinstance(b, str) else httpx.Response(200, json=b)
        prompt = body["prompt"]
        ctx = prompt.rsplit(" ", 1)[0]
        return httpx.Response(200, json={"choices": [{"index": 0, "text": prompt + "x", "logprobs": {
            "tokens": [ctx, prompt[len(ctx):], "x"], "text_offset": [0, len(ctx), len(prompt)],
            "token_logprobs": [None, -1.25, -0.5], "top_logprobs": [None, {" a": -1.25}, {"x": -0.5}]}}]})

    return httpx.MockTransport(handler)


def _nan_body():
    return ('{"choices": [{"index": 0, "text": "Q: a", "logprobs": {"tokens": ["Q:", " a"], '
            '"text_offset": [0, 2], "token_logprobs": [null, NaN], "top_logprobs": [null, {" a": NaN}]}}]}')


def test_nan_or_not_json_from_a_server_is_retried_never_stored():
    from llmcal.backends.openai import OpenAIBackend
    from llmcal.backends.openai.retry import RetryPolicy
    from llmcal.core.requests import MCRequest

    async def no_sleep(_):
        return None

    bodies = [_nan_body(), "<html>busy</html>", [1, 2], {"choices": [{"logprobs": {"token_logprobs": ["-1"]}}]}]
    b = OpenAIBackend("http://fake.test/v1", "m", scoring="echo", transport=_echo_server(bodies),
                      retry=RetryPolicy(max_retries=5, base_delay=0.0), sleep=no_sleep)
    (score,) = b.score_mc([MCRequest("Q:", (" a",))])
    assert not bodies and score.logprobs.tolist() == [-1.25]  # four bad answers retried, the good one kept


def test_a_server_that_keeps_answering_nan_fails_the_item_naming_the_url():
    from llmcal.backends.openai import OpenAIBackend
    from llmcal.backends.openai.retry import RetryPolicy, ServerUnavailable
    from llmcal.core.requests import MCRequest

    b = OpenAIBackend("http://fake.test/v1", "m", scoring="echo", transport=_echo_server([_nan_body()] * 10),
                      retry=RetryPolicy(max_retries=2, base_delay=0.0))
    with pytest.raises(ServerUnavailable, match=r"fake.test/v1/completions: no answer after 3 attempt.*non-finite"):
        b.score_mc([MCRequest("Q:", (" a",))])


# ------------------------------------------------------------------ numbers refused before any work (item 16)
@pytest.mark.parametrize("args, match", [
    (["measure", "--max_tokens", "-5"], "--max_tokens: must be at least 8"),
    (["calibrate", "R", "--bootstrap", "-5"], "--bootstrap: must be >= 0"),
])
def test_negative_numbers_are_refused(tmp_path, capsys, args, match):
    assert main(args + (["--output_path", str(tmp_path / "R")] if args[0] == "measure" else [])) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "R").exists()


def test_an_empty_config_left_by_an_old_kill_names_the_file_and_overwrite_gets_past_it(tmp_path, capsys):
    """Issue 14 item 2: config.json rewritten in place and emptied by a kill; reruns named no file."""
    task = _task(tmp_path / "t.jsonl", n=10)
    out = tmp_path / "R"
    assert main(_measure_args(task, out)) == 0
    (out / MANIFEST).unlink()  # a folder from before manifests
    (out / "config.json").write_text("")
    assert main(_measure_args(task, out)) == 2
    assert "config.json: not valid JSON" in capsys.readouterr().err
    assert main(_measure_args(task, out, "--overwrite")) == 0
    assert len((out / "samples.jsonl").read_text().splitlines()) == 10
