"""Every subcommand that takes a model works with ``--model openai``, or refuses before any work.

The server is the fake OpenAI-compatible one of ``test_openai_backend`` (loopback, real HTTP).
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("httpx")

from llmcal.cli.main import main  # noqa: E402
from test_openai_backend import FakeLM, _serve  # noqa: E402  (tests/ is on sys.path)


@pytest.fixture()
def server_url():
    srv = _serve(FakeLM())
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    finally:
        srv.shutdown()
        srv.server_close()


def _margs(url: str, **extra: str) -> str:
    return ",".join([f"base_url={url}", "model=fake-model", "concurrency=2", "max_retries=0",
                     *(f"{k}={v}" for k, v in extra.items())])


def test_run_with_probe_refuses_before_any_work(tmp_path, capsys, server_url):
    out = tmp_path / "run"
    rc = main(["run", "--model", "openai", "--model_args", _margs(server_url), "--probe", "--limit", "8",
               "--output_path", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--model openai cannot give hidden states" in err and "--probe" in err
    assert not out.exists()  # refused before the folder, the tasks or the server were touched


def test_run_then_ask_through_the_server(tmp_path, capsys, server_url):
    out = tmp_path / "run"
    assert main(["run", "--model", "openai", "--model_args", _margs(server_url), "--limit", "24",
                 "--bootstrap", "0", "--output_path", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["overall"]["n"] == 24 and res["config"]["model"] == "openai"
    capsys.readouterr()
    assert main(["ask", "What is 2 + 2?", "--choices", "4;5;22", "--run", str(out), "--json"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["answer"] in ("4", "5", "22", None) and 0.0 <= reply["score"] <= 1.0
    assert reply["run"] == str(out) and reply["signal"] == "option_prob" and reply["calibrator"] == "temperature"


def test_sweep_through_the_server(tmp_path, capsys, server_url):
    out = tmp_path / "sweep"
    rc = main(["sweep", "--model", "openai", "--model_args", _margs(server_url), "--tasks", "builtin_open",
               "--limit", "6", "--signals", "tokens", "--temperatures", "0,0.7", "--bootstrap", "0",
               "--output_path", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["temperatures"] == [0.0, 0.7] and set(sweep["rows"]) == {"0", "0.7"}
    assert (out / "T0" / "samples.jsonl").read_text().count("\n") == 6


def test_open_run_with_probe_is_refused_up_front(tmp_path, capsys):
    rc = main(["run", "--tasks", "builtin_open", "--probe", "--output_path", str(tmp_path / "r"), "--quiet"])
    assert rc == 2 and "free-form runs keep none" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_unknown_backend_names_the_known_ones(tmp_path, capsys):
    assert main(["run", "--model", "vlm", "--output_path", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "vlm" in err and "hf" in err and "openai" in err
