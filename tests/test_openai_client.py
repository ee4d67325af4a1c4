"""The official ``openai`` Python client against a live ``llmcal serve`` on loopback.

``llmcal serve`` runs as its own process (``python -m llmcal.cli.serve_commands``) as a calibrating
proxy in front of the deterministic fake OpenAI server of tests/test_openai_backend.py (``FakeLM``:
words are tokens, log-probabilities are hashes), so no model is loaded and every expected number
is computed here from the fake's own definition: the options' log-likelihoods (``expected``), the
run's temperature, the free answer's token log-probabilities (``fake_lp``).

What a client of the OpenAI API notices: chat completions, streaming, logprobs, ``n``, the models
list, the errors' classes; and what llmcal adds: the ``confidence`` object, ``policy: "refuse"``,
``confidence_threshold``, and the hot reload of the calibration (``POST /admin/reload``, SIGHUP)
while requests keep arriving.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from test_openai_backend import FakeLM, _serve, expected, fake_lp, fake_top  # noqa: E402

from llmcal.signals.mc import softmax  # noqa: E402

KEY = "test-k3y"
REFUSAL = "I can't answer this safely."
FRANCE = "What is the capital of France?"
OPTIONS = ["Paris", "Lyon", "Nice"]


def write_run(run: Path, temperature: float, threshold: float = 0.75) -> str:
    """A run folder's ``calibration.json`` (temperature scaling), replaced atomically; returns its version."""
    run.mkdir(parents=True, exist_ok=True)
    data = json.dumps({
        "schema_version": 1, "signal": "option_prob", "primary": "temperature", "threshold": threshold,
        "style": "cloze", "chat": False, "model_args": {"dtype": "float32"},
        "calibrators": {"temperature": {"name": "temperature", "version": 1, "bounds": [0.01, 100.0],
                                        "temperature_": temperature, "mode_": "multiclass", "n_classes_": 4}}},
        sort_keys=True).encode()
    tmp = run / "calibration.json.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, run / "calibration.json")
    return hashlib.sha256(data).hexdigest()[:12]


def mc_probs(question: str, options: list[str], temperature: float) -> np.ndarray:
    """What the served calibration says: softmax of the fake's option log-likelihoods over T."""
    ll = np.array([expected(f"Question: {question}\nAnswer:", f" {o}") for o in options])
    return softmax(ll / temperature)


class LiveServe:
    """``llmcal serve --run RUN --upstream URL`` in a process of its own, on a free loopback port."""

    def __init__(self, run: Path, upstream: str, cwd: Path, *extra: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(cwd / "serve.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmcal.cli.serve_commands", "--run", str(run), "--upstream", upstream,
             "--upstream_args", "model=fake-model,scoring=echo", "--port", str(port),
             "--api_key_env", "LLMCAL_TEST_KEY", "--db", "off", "--log_level", "warning", *extra],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd,
            env={**os.environ, "LLMCAL_TEST_KEY": KEY, "LLMCAL_THREADS": "1"})
        deadline = time.time() + 90
        while True:
            assert self.proc.poll() is None, self.output()
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "llmcal serve did not start:\n" + self.output()
            time.sleep(0.1)
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key=KEY, max_retries=0, timeout=30)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def version(self) -> str:
        return httpx.get(self.url + "/health", headers={"Authorization": f"Bearer {KEY}"}).json()[
            "calibration"]["calibration_version"]

    def close(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.proc.kill()
            self.proc.wait(5)
        out = self.output()
        self.log.close()
        return out


@pytest.fixture(scope="module")
def upstream():
    srv = _serve(FakeLM())
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def live(upstream, tmp_path_factory):
    home = tmp_path_factory.mktemp("openai_client")
    version = write_run(home / "run", temperature=2.0)
    s = LiveServe(home / "run", upstream, home)
    s.run, s.calibration_version = home / "run", version
    yield s
    out = s.close()
    assert "Traceback" not in out, out


def confidence(obj) -> dict:
    """The llmcal ``confidence`` object of an openai response (an extra field the client keeps)."""
    return obj.model_extra["confidence"]


# ------------------------------------------------------------------ the OpenAI API
def test_models_list_and_the_key(live):
    models = live.client.models.list()
    assert [m.id for m in models.data] == ["fake-model"] and models.data[0].owned_by == "llmcal"
    stranger = openai.OpenAI(base_url=live.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()
    with pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(model="m", messages=[{"role": "user", "content": FRANCE}])


def test_chat_completion_multiple_choice_with_the_confidence_object(live):
    r = live.client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": FRANCE}],
                                            extra_body={"options": OPTIONS})
    p = mc_probs(FRANCE, OPTIONS, 2.0)
    pred = int(np.argmax(p))
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "fake-model"
    (choice,) = r.choices
    assert choice.message.content == OPTIONS[pred] and choice.finish_reason == "stop" and choice.logprobs is None
    c = confidence(r)
    assert c["id"] == r.id and c["calibration_version"] == live.calibration_version
    assert c["score"] == pytest.approx(p[pred]) and c["calibrator"] == "temperature" and c["calibrated"]
    assert c["model_answer"] == OPTIONS[pred] and c["thresholds"] == {"high": 0.9, "abstain": 0.75}
    assert c["abstained"] == (p[pred] < 0.75)
    assert sorted(a["text"] for a in c["alternatives"]) == sorted(set(OPTIONS) - {OPTIONS[pred]})
    assert choice.model_extra["confidence"] == c  # each choice carries its own; choice 0's is also on top
    assert r.usage.completion_tokens == 1 and r.usage.total_tokens == r.usage.prompt_tokens + 1


def test_an_abstained_answer_stays_in_content_unless_the_policy_refuses(live):
    """The free answer (" Paris." from the fake) is far below 0.75: abstained, yet the content is the answer."""
    messages = [{"role": "user", "content": FRANCE}]
    r = live.client.chat.completions.create(model="m", messages=messages)
    c = confidence(r)
    score = float(np.exp(np.mean([fake_lp(_asked(), " Paris"), fake_lp(_asked() + " Paris", ".")])))
    assert c["score"] == pytest.approx(score) and score < 0.75
    assert r.choices[0].message.content == "Paris." and c["abstained"] and c["sentence"] == REFUSAL
    assert c["calibrated"] is False and c["kind"] == "free_form"
    refused = live.client.chat.completions.create(model="m", messages=messages, extra_body={"policy": "refuse"})
    assert refused.choices[0].message.content == REFUSAL and confidence(refused)["model_answer"] == "Paris."
    # the request's own threshold: 0 never abstains, and the listed answer keeps one full stop
    lenient = live.client.chat.completions.create(model="m", messages=messages,
                                                  extra_body={"confidence_threshold": 0.0, "policy": "refuse"})
    lc = confidence(lenient)
    assert lenient.choices[0].message.content == "Paris." and not lc["abstained"] and lc["level"] == "medium"
    assert lc["sentence"] == "I'm unsure \u2014 here are a few possibilities: Paris."
    assert lc["thresholds"] == {"high": 0.9, "abstain": 0.0}


def _asked() -> str:
    """The free-form prompt the fake sees (the last user message, as an open-ended run asks it)."""
    return f"Answer the question in a few words.\n\nQuestion: {FRANCE}"


def test_streaming_gives_the_same_answer_and_the_confidence_in_the_last_chunk(live):
    messages = [{"role": "user", "content": FRANCE}]
    plain = live.client.chat.completions.create(model="m", messages=messages, extra_body={"options": OPTIONS})
    chunks = list(live.client.chat.completions.create(model="m", messages=messages, stream=True,
                                                      stream_options={"include_usage": True},
                                                      extra_body={"options": OPTIONS}))
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finished = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finished) == 1 and finished[0].choices[0].finish_reason == "stop"
    streamed = confidence(finished[0])
    assert streamed["id"] == chunks[0].id
    assert {k: v for k, v in streamed.items() if k != "id"} == {k: v for k, v in confidence(plain).items()
                                                               if k != "id"}
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == plain.usage.total_tokens
    # on the wire: server-sent events that end with [DONE]
    raw = httpx.post(live.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, json={
        "model": "m", "messages": messages, "stream": True, "options": OPTIONS})
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [line for line in raw.text.split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_logprobs_as_openai_shapes_them(live):
    messages = [{"role": "user", "content": FRANCE}]
    r = live.client.chat.completions.create(model="m", messages=messages, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert [t.logprob for t in content] == pytest.approx([fake_lp(_asked(), " Paris"),
                                                          fake_lp(_asked() + " Paris", ".")])
    tops = [fake_top(_asked(), 3), fake_top(_asked() + " Paris", 3)]
    assert [{a.token: a.logprob for a in t.top_logprobs} for t in content] == tops
    assert all(list(a.bytes) == list(a.token.encode()) for t in content for a in t.top_logprobs)
    # a token's text is known where it is among its step's alternatives; the fake never lists its own
    # choice there, so these are "" (llmcal's Generation keeps log-probabilities and alternatives only)
    assert [t.token for t in content] == ["", ""]
    mc = live.client.chat.completions.create(model="m", messages=messages, logprobs=True, top_logprobs=2,
                                             extra_body={"options": OPTIONS})
    ll = np.array([expected(f"Question: {FRANCE}\nAnswer:", f" {o}") for o in OPTIONS])
    (entry,) = mc.choices[0].logprobs.content  # the option is the one "token"; the others are its alternatives
    assert entry.token == OPTIONS[int(np.argmax(ll))] and entry.logprob == pytest.approx(ll.max())
    assert [t.token for t in entry.top_logprobs] == [OPTIONS[i] for i in np.argsort(-ll)[:2]]
    assert live.client.chat.completions.create(model="m", messages=messages).choices[0].logprobs is None


def test_n_choices_each_with_its_own_confidence_and_id(live):
    messages = [{"role": "user", "content": FRANCE}]
    r = live.client.chat.completions.create(model="m", messages=messages, n=3, temperature=0.7, seed=5)
    assert [c.index for c in r.choices] == [0, 1, 2]
    ids = [c.model_extra["confidence"]["id"] for c in r.choices]
    assert ids == [r.id, f"{r.id}-1", f"{r.id}-2"]
    assert all(c.message.content == "Paris." for c in r.choices)  # the fake answers the same to any seed
    assert r.usage.completion_tokens == 3 * 2
    mc = live.client.chat.completions.create(model="m", messages=messages, n=2, extra_body={"options": OPTIONS})
    assert len({c.message.content for c in mc.choices}) == 1 and len(mc.choices) == 2
    streamed = list(live.client.chat.completions.create(model="m", messages=messages, n=2, stream=True,
                                                        extra_body={"options": OPTIONS}))
    assert sorted(c.choices[0].index for c in streamed if c.choices and c.choices[0].finish_reason) == [0, 1]


def test_bad_requests_are_the_clients_errors(live):
    messages = [{"role": "user", "content": FRANCE}]
    for kwargs in ({"n": 9}, {"top_logprobs": 3}, {"extra_body": {"confidence_threshold": 2}},
                   {"extra_body": {"policy": "maybe"}}, {"extra_body": {"options": ["only"]}}):
        with pytest.raises(openai.UnprocessableEntityError) as err:
            live.client.chat.completions.create(model="m", messages=messages, **kwargs)
        assert err.value.body["type"] == "invalid_request_error", kwargs
    with pytest.raises(openai.UnprocessableEntityError):  # a stream is refused before its first chunk
        live.client.chat.completions.create(model="m", messages=messages, stream=True, n=9)


# ------------------------------------------------------------------ hot reload
def test_reload_under_requests_drops_nothing(live):
    """Clients keep asking (plain and streamed) while the calibration is replaced twice: by
    ``POST /admin/reload`` and by SIGHUP.  No request fails; each client sees the old version, then
    the new one, never back; the new temperature is what scores the answers after.  (The module's
    server is put back on its first calibration at the end.)"""
    s, run, v1 = live, live.run, live.calibration_version
    assert s.version() == v1
    assert httpx.post(s.url + "/admin/reload").status_code == 401  # the key is needed
    stop, seen, failures = threading.Event(), [[] for _ in range(3)], []

    def ask(k: int) -> None:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key=KEY, max_retries=0, timeout=30)
        while not stop.is_set():
            try:
                if k == 2:
                    chunks = list(client.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": FRANCE}], stream=True,
                        extra_body={"options": OPTIONS}))
                    c = next(confidence(x) for x in chunks if x.choices and x.choices[0].finish_reason)
                else:
                    c = confidence(client.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": FRANCE}], extra_body={"options": OPTIONS}))
                seen[k].append((c["calibration_version"], c["score"]))
            except Exception as err:  # noqa: BLE001 - every failure is counted
                failures.append(repr(err))

    def until_all_saw(version: str) -> None:
        deadline = time.time() + 20
        while not all(a and a[-1][0] == version for a in seen):
            assert time.time() < deadline and not failures, (version, failures, s.output())
            time.sleep(0.02)

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    try:
        until_all_saw(v1)
        v2 = write_run(run, temperature=4.0)
        r = httpx.post(s.url + "/admin/reload", headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and r.json() == {"calibration_version": v2, "previous": v1}
        until_all_saw(v2)
        v3 = write_run(run, temperature=1.0)
        s.proc.send_signal(signal.SIGHUP)
        until_all_saw(v3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    order = {v1: 0, v2: 1, v3: 2}
    top = {v: mc_probs(FRANCE, OPTIONS, t).max() for v, t in ((v1, 2.0), (v2, 4.0), (v3, 1.0))}
    for k, answers in enumerate(seen):
        versions = [v for v, _ in answers]
        assert versions == sorted(versions, key=order.__getitem__), k  # never back to an old one
        assert versions[0] == v1 and versions[-1] == v3, k
        assert all(score == pytest.approx(top[v]) for v, score in answers)
    # a damaged file is refused, and the calibration in use stays
    (run / "calibration.json").write_text("{not json")
    bad = httpx.post(s.url + "/admin/reload", headers={"X-API-Key": KEY})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "reload_failed"
    assert "calibration.json: not valid JSON" in bad.json()["error"]["message"] and s.version() == v3
    assert write_run(run, temperature=2.0) == v1  # back to the module's calibration
    assert httpx.post(s.url + "/admin/reload", headers={"X-API-Key": KEY}).json()["calibration_version"] == v1
