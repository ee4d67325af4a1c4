"""``llmcal serve`` over HTTP: response shapes, the policy in the response, and every error code.

A fake answerer stands in for the model (its confidences are chosen by the test, and it can be
made to block, to fill the queue); the real model is in tests/test_serve_e2e.py.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from llmcal.core.requests import Generation  # noqa: E402
from llmcal.policy import Thresholds  # noqa: E402
from llmcal.serve.answerer import Query, free_form_reply, group_samples, mc_reply  # noqa: E402
from llmcal.serve.app import create_app  # noqa: E402
from llmcal.serve.saved import SavedCalibration  # noqa: E402

REFUSAL = "I can't answer this safely."


class FakeAnswerer:
    """Multiple choice: option log-likelihoods from ``ll`` (by question); free form: one fixed answer.

    ``gate``: when set, :meth:`answer` blocks until it is set (to hold the one model worker).
    """

    model_name = "fake-model"

    def __init__(self, ll=None, gen_logprob=-0.01, saved=None, thresholds=Thresholds()):
        self.ll = ll or {}
        self.gen_logprob = gen_logprob
        self.saved = saved or SavedCalibration.none()
        self.thresholds = thresholds
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self.seen: list[Query] = []

    def describe(self):
        return {"model": self.model_name, **self.saved.describe()}

    def answer(self, q: Query):
        self.seen.append(q)
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if q.question == "boom":
            raise ValueError("options: something the model cannot do")
        if q.options is not None:
            ll = np.array(self.ll.get(q.question, [0.0] + [-8.0] * (len(q.options) - 1)))
            return mc_reply(q, q.options, ll, np.ones(len(ll), dtype=int), self.saved, self.thresholds,
                            {"model": 1.0}, 7)
        gen = Generation("Paris", [1, 2], np.array([self.gen_logprob] * 2), np.array([0.1, 0.1]),
                         [[("Paris", self.gen_logprob), ("Lyon", -5.0)]] * 2)
        return free_form_reply(q, gen, self.saved, self.thresholds, {"model": 1.0},
                               {"prompt_tokens": 5, "completion_tokens": 2},
                               lambda n, t: ["Paris"] * (n - 1) + ["Lyon."])


def chat(content="What is the capital of France?", **extra):
    return {"model": "x", "messages": [{"role": "user", "content": content}], **extra}


@pytest.fixture
def fake():
    return FakeAnswerer(ll={"unsure?": [0.0, -1.0, -2.0], "coin?": [0.0, -0.05]})


@pytest.fixture
def client(fake):
    with TestClient(create_app(fake, max_prompt_chars=200, max_queue=2)) as c:
        yield c


# ------------------------------------------------------------------ shapes
def test_health_and_self_contained_page(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["model"] == "fake-model" and h["auth"] is False
    assert h["queue"]["max_queue"] == 2 and h["limits"]["max_prompt_chars"] == 200
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    for element in ('id="question"', 'id="choices"', 'id="meter-fill"', 'id="sentence"', 'id="alternatives"'):
        assert element in html
    assert "http://" not in html and "https://" not in html and "<link" not in html  # no CDN, works offline


def test_chat_completion_multiple_choice_shape(client, fake):
    r = client.post("/v1/chat/completions", json=chat(options=["Paris", "Lyon", "Nice"], max_tokens=5, top_p=1))
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["object"] == "chat.completion" and d["id"].startswith("chatcmpl-") and d["model"] == "fake-model"
    assert isinstance(d["created"], int)
    (choice,) = d["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"] == {"role": "assistant", "content": "Paris"}
    assert d["usage"] == {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8}
    c = d["confidence"]
    assert {"score", "level", "colour", "sentence", "abstained", "alternatives", "signal", "calibrator",
            "calibrated", "model_answer", "thresholds", "raw_score"} <= set(c)
    assert c["score"] > 0.99 and (c["level"], c["colour"], c["abstained"]) == ("high", "green", False)
    assert c["sentence"] == "I'm very sure about this." and c["alternatives"] == []
    assert c["signal"] == "option_prob" and c["calibrator"] == "none" and c["calibrated"] is False
    assert "Server-Timing" in r.headers and "model;dur=" in r.headers["Server-Timing"]
    assert fake.seen[-1].options == ["Paris", "Lyon", "Nice"] and fake.seen[-1].max_tokens == 5


def test_medium_confidence_lists_the_alternatives(client):
    c = client.post("/v1/chat/completions", json=chat("unsure?", options=["a", "b", "c"])).json()["confidence"]
    p = np.exp([0.0, -1.0, -2.0]) / np.exp([0.0, -1.0, -2.0]).sum()
    assert c["score"] == pytest.approx(p[0])  # 0.665: below 0.75 -> abstain
    assert c["level"] == "low"
    calibrated = FakeAnswerer(ll={"q": [0.0, -1.6, -2.5]})
    with TestClient(create_app(calibrated)) as cl:
        c = cl.post("/v1/chat/completions", json=chat("q", options=["a", "b", "c"])).json()["confidence"]
    assert (c["level"], c["colour"], c["action"]) == ("medium", "yellow", "answer_with_alternatives")
    assert [a["text"] for a in c["alternatives"]] == ["b", "c"]
    assert c["sentence"] == "I'm unsure \u2014 here are a few possibilities: a, b, c."


def test_abstention_keeps_the_answer_in_content_and_says_so_in_the_confidence(client):
    d = client.post("/v1/chat/completions", json=chat("coin?", options=["heads", "tails"])).json()
    assert d["choices"][0]["message"]["content"] == "heads"  # an OpenAI client still gets the answer
    c = d["confidence"]
    assert (c["level"], c["colour"], c["abstained"], c["action"]) == ("low", "red", True, "abstain")
    assert c["answer"] is None and c["model_answer"] == "heads" and c["sentence"] == REFUSAL
    assert [a["text"] for a in c["alternatives"]] == ["tails"]
    a = client.post("/v1/ask", json={"question": "coin?", "choices": ["heads", "tails"]}).json()
    assert a["answer"] == "heads" and a["model_answer"] == "heads" and a["confidence"]["abstained"]


def test_policy_refuse_replaces_only_an_abstained_answer(fake):
    body = chat("coin?", options=["heads", "tails"])
    with TestClient(create_app(fake)) as c:  # the server's default: answer
        assert c.post("/v1/chat/completions", json={**body, "policy": "refuse"}).json()[
            "choices"][0]["message"]["content"] == REFUSAL
        sure = c.post("/v1/chat/completions", json=chat(options=["Paris", "Lyon"], policy="refuse")).json()
        assert sure["choices"][0]["message"]["content"] == "Paris"  # not abstained: the answer
        ask = c.post("/v1/ask", json={"question": "coin?", "choices": ["heads", "tails"], "policy": "refuse"})
        assert ask.json()["answer"] == REFUSAL and ask.json()["model_answer"] == "heads"
    with TestClient(create_app(fake, policy="refuse")) as c:  # the server's default: refuse
        assert c.get("/health").json()["policy"] == "refuse"
        d = c.post("/v1/chat/completions", json=body).json()
        assert d["choices"][0]["message"]["content"] == REFUSAL and d["confidence"]["model_answer"] == "heads"
        d = c.post("/v1/chat/completions", json={**body, "policy": "answer"}).json()  # a request overrides it
        assert d["choices"][0]["message"]["content"] == "heads"
        assert c.post("/v1/chat/completions", json={**body, "policy": "maybe"}).status_code == 422
    with pytest.raises(ValueError, match="policy: 'maybe' is not one of answer, refuse"):
        create_app(fake, policy="maybe")


def test_a_request_sets_its_own_abstain_threshold(client):
    body = chat("unsure?", options=["a", "b", "c"])  # score 0.665
    c = client.post("/v1/chat/completions", json=body).json()["confidence"]
    assert c["abstained"] and c["thresholds"] == {"high": 0.9, "abstain": 0.75}
    c = client.post("/v1/chat/completions", json={**body, "confidence_threshold": 0.6}).json()["confidence"]
    assert not c["abstained"] and c["level"] == "medium" and c["thresholds"] == {"high": 0.9, "abstain": 0.6}
    # above the server's "very sure" mark, high rises with it: nothing is "very sure" below the threshold
    c = client.post("/v1/chat/completions", json=chat(options=["Paris", "Lyon"], confidence_threshold=0.999)).json()
    assert c["confidence"]["thresholds"] == {"high": 0.999, "abstain": 0.999}
    assert c["confidence"]["level"] == "high" and c["confidence"]["score"] >= 0.999
    a = client.post("/v1/ask", json={"question": "unsure?", "choices": ["a", "b", "c"], "confidence_threshold": 0.5})
    assert a.json()["confidence"]["abstained"] is False
    for bad in (-0.1, 1.5, "high"):
        r = client.post("/v1/chat/completions", json={**body, "confidence_threshold": bad})
        assert r.status_code == 422 and r.json()["error"]["message"].startswith("confidence_threshold:")


def test_ask_free_form_uncalibrated_and_sampled_alternatives(client):
    d = client.post("/v1/ask", json={"question": "Capital of France?"}).json()
    assert d["answer"] == "Paris" and d["question"] == "Capital of France?" and d["choices"] is None
    c = d["confidence"]
    assert c["kind"] == "free_form" and c["signal"] == "mean_token_prob" and c["calibrator"] == "none"
    assert c["calibrated"] is False and "uncalibrated" in c["note"]
    assert c["score"] == pytest.approx(np.exp(-0.01)) and c["level"] == "high"
    d = client.post("/v1/ask", json={"question": "Capital of France?", "samples": 4}).json()
    # high confidence shows no alternatives; a lower one shows the distinct sampled answers
    unsure = FakeAnswerer(gen_logprob=-0.2)
    with TestClient(create_app(unsure)) as cl:
        c = cl.post("/v1/ask", json={"question": "Capital of France?", "samples": 4}).json()["confidence"]
    assert c["level"] == "medium" and c["alternatives"] == [{"text": "Lyon.", "probability": 0.25}]


def test_calibrated_free_form_uses_the_runs_generation_calibrator(tmp_path):
    from llmcal.calibrators import get_calibrator

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 400)
    platt = get_calibrator("platt").fit(x, rng.uniform(0, 1, 400) < x ** 2)
    run = _write_run(tmp_path, generation={"signal": "mean_token_prob", "calibrator": platt.to_dict()})
    saved = SavedCalibration.from_run(run)
    with TestClient(create_app(FakeAnswerer(saved=saved))) as cl:
        c = cl.post("/v1/ask", json={"question": "Capital of France?"}).json()["confidence"]
    assert c["calibrator"] == "platt" and c["calibrated"] is True and "note" not in c
    assert c["score"] == pytest.approx(float(platt.predict(np.array([np.exp(-0.01)]))[0]))


def test_plain_mode_skips_the_confidence(client):
    d = client.post("/v1/chat/completions", json=chat("coin?", options=["heads", "tails"], confidence=False)).json()
    assert "confidence" not in d and d["choices"][0]["message"]["content"] == "heads"
    a = client.post("/v1/ask", json={"question": "Capital?", "confidence": False}).json()
    assert a["answer"] == "Paris" and a["confidence"] is None


def test_chat_uses_the_last_user_message_and_content_parts(client, fake):
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "first"},
                         {"role": "assistant", "content": "ok"},
                         {"role": "user", "content": [{"type": "text", "text": "second"}]}]}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    q = fake.seen[-1]
    assert q.question == "second" and [m["role"] for m in q.messages] == ["system", "user", "assistant", "user"]


# ------------------------------------------------------------------ error codes
def test_api_key_401_and_accepted_forms(fake):
    with TestClient(create_app(fake, api_key="s3cret")) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "s3cre"}, {"Authorization": "s3cret"}):
            r = c.post("/v1/ask", json={"question": "q", "choices": ["a", "b"]}, headers=headers)
            assert r.status_code == 401, headers
            assert r.json()["error"]["code"] == "invalid_api_key" and r.headers["WWW-Authenticate"] == "Bearer"
        # a malformed body without the key is still 401: nothing is told to unauthenticated callers
        assert c.post("/v1/chat/completions", json={"nonsense": 1}).status_code == 401
        assert c.post("/v1/ask", json={"question": "q", "choices": ["a", "b"]},
                      headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.post("/v1/ask", json={"question": "q"}, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/health").json()["auth"] is True and c.get("/").status_code == 200  # open


@pytest.mark.parametrize("body", [
    {"model": "x"},  # no messages
    {"messages": []},
    {"messages": [{"role": "wizard", "content": "hi"}]},
    {"messages": [{"role": "user", "content": 5}]},
    {"messages": "hello"},
    chat(options=["only one"]),
    chat(options=[f"o{i}" for i in range(27)]),
    chat(temperature=5),
    chat(max_tokens=0),
    chat(max_tokens=100000),
    chat(n=0),
    chat(n=9),
    chat(top_logprobs=3),  # without logprobs: true
    chat(logprobs=True, top_logprobs=21),
    chat(samples=-1),
    {"messages": [{"role": "system", "content": "no user message"}]},
    {"messages": [{"role": "user", "content": "   "}]},
])
def test_malformed_chat_bodies_are_422(client, body):
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 422, (body, r.text)
    assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("body", [{}, {"question": ""}, {"question": "q", "choices": ["a"]},
                                  {"question": ["q"]}, {"question": "q", "choices": "a;b"}])
def test_malformed_ask_bodies_are_422(client, body):
    assert client.post("/v1/ask", json=body).status_code == 422


def test_not_json_is_422(client):
    r = client.post("/v1/ask", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422


def test_oversized_prompts_are_413(client):
    r = client.post("/v1/chat/completions", json=chat("x" * 201))
    assert r.status_code == 413 and r.json()["error"]["code"] == "prompt_too_long"
    r = client.post("/v1/ask", json={"question": "q" * 150, "choices": ["a" * 30, "b" * 30]})
    assert r.status_code == 413
    assert client.post("/v1/ask", json={"question": "q" * 150, "choices": ["a", "b"]}).status_code == 200
    # a body far over the limit is refused from its Content-Length, before it is read or parsed
    r = client.post("/v1/ask", content=b"x" * (16 * 200 + 65537), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    # a chunked body (no Content-Length) is cut off while it is read
    r = client.post("/v1/ask", content=iter([b"x" * 8192] * 10), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_unknown_paths_and_methods_answer_in_openai_shape(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert client.get("/v1/ask").status_code == 405


def test_answerer_errors_are_400(client):
    r = client.post("/v1/ask", json={"question": "boom", "choices": ["a", "b"]})
    assert r.status_code == 400 and "cannot do" in r.json()["error"]["message"]


def test_saturated_queue_is_503_with_retry_after(fake):
    """One request runs, max_queue (2) wait; the next is refused at once, and the queue recovers."""
    fake.gate = threading.Event()
    app = create_app(fake, max_queue=2)
    body = {"question": "q", "choices": ["a", "b"]}
    with TestClient(app) as c, ThreadPoolExecutor(4) as pool:
        running = pool.submit(c.post, "/v1/ask", json=body)
        assert fake.started.wait(10)
        waiting = [pool.submit(c.post, "/v1/ask", json=body) for _ in range(2)]
        deadline = time.time() + 10
        while app.state.queue.in_flight < 3 and time.time() < deadline:
            time.sleep(0.01)
        assert app.state.queue.in_flight == 3
        t0 = time.perf_counter()
        r = c.post("/v1/ask", json=body)
        assert time.perf_counter() - t0 < 2.0  # refused at once, not after waiting
        assert r.status_code == 503 and r.json()["error"]["code"] == "queue_full"
        assert int(r.headers["Retry-After"]) >= 1
        assert c.post("/v1/chat/completions", json=chat(options=["a", "b"])).status_code == 503
        assert c.get("/health").json()["queue"]["rejected"] == 2  # health still answers while saturated
        fake.gate.set()
        assert [f.result().status_code for f in [running, *waiting]] == [200, 200, 200]
        assert c.post("/v1/ask", json=body).status_code == 200
        assert app.state.queue.in_flight == 0


def test_max_queue_zero_serves_one_at_a_time(fake):
    fake.gate = threading.Event()
    app = create_app(fake, max_queue=0)
    with TestClient(app) as c, ThreadPoolExecutor(1) as pool:
        running = pool.submit(c.post, "/v1/ask", json={"question": "q"})
        assert fake.started.wait(10)
        assert c.post("/v1/ask", json={"question": "q"}).status_code == 503
        fake.gate.set()
        assert running.result().status_code == 200


# ------------------------------------------------------------------ pieces
def _write_run(tmp_path, primary="temperature", calibrators=None, **extra):
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    cal = {"schema_version": 1, "signal": "option_prob", "primary": primary, "threshold": 0.75, "style": "cloze",
           "chat": False, "model_args": {"dtype": "float32"},
           "calibrators": calibrators if calibrators is not None else {
               "temperature": {"name": "temperature", "version": 1, "bounds": [0.01, 100.0], "temperature_": 2.0,
                               "mode_": "multiclass", "n_classes_": 4}}, **extra}
    (run / "calibration.json").write_text(json.dumps(cal))
    return run


def test_saved_calibration_matches_llmcal_ask(tmp_path):
    from llmcal.signals.mc import softmax

    ll = np.array([-1.0, -2.5, -4.0])
    saved = SavedCalibration.from_run(_write_run(tmp_path))
    pred, c = saved.mc(ll, np.array([1, 1, 1]))
    assert pred == 0 and c.calibrator == "temperature" and c.signal == "option_prob" and c.calibrated
    assert c.score == pytest.approx(softmax(ll / 2.0)[0]) and c.raw_score == pytest.approx(softmax(ll)[0])
    assert c.probs == pytest.approx(softmax(ll / 2.0))
    assert saved.thresholds() == Thresholds(0.90, 0.75) and saved.thresholds(0.95, 0.5) == Thresholds(0.95, 0.5)
    none = SavedCalibration.none()
    assert none.mc(ll, np.ones(3))[1].calibrator == "none"
    with pytest.raises(FileNotFoundError, match="llmcal run"):
        SavedCalibration.from_run(tmp_path / "missing")


def test_group_samples():
    assert group_samples("Paris", ["paris.", "Paris", "Lyon", " PARIS!"]) == [("Paris", 0.75), ("Lyon", 0.25)]


def test_upstream_proxy_through_the_openai_backend(tmp_path):
    """A calibrating proxy: an OpenAI-compatible server answers (the fake of test_openai_backend.py),
    the run calibrates, the server adds the confidence."""
    from test_openai_backend import FakeLM, expected, make_backend

    from llmcal.backends.openai import RetryPolicy
    from llmcal.serve.answerer import Answerer
    from llmcal.signals.mc import softmax

    lm = FakeLM()
    saved = SavedCalibration.from_run(_write_run(tmp_path))
    up = Answerer(make_backend(lm, scoring="echo"), saved)
    q = "What is the capital of France?"
    r = up.answer(Query(q, ["Paris", "Lyon", "Nice"]))
    ll = np.array([expected(f"Question: {q}\nAnswer:", f" {c}") for c in ("Paris", "Lyon", "Nice")])
    assert r.model_answer == ["Paris", "Lyon", "Nice"][int(np.argmax(ll))]
    assert r.confidence.score == pytest.approx(softmax(ll / 2.0).max()) and r.confidence.calibrator == "temperature"
    f = up.answer(Query(q, samples=2))
    assert f.model_answer == "Paris." and f.confidence.calibrator == "none" and f.kind == "free_form"
    chats = [b for p, b in lm.calls if p.endswith("/chat/completions")]
    # asked as an open-ended run asks (pipeline.measure_open), so a generation calibrator applies
    assert chats[0]["messages"] == [{"role": "user", "content": f"Answer the question in a few words.\n\nQuestion: {q}"}]
    assert chats[0]["logprobs"] is True and chats[0]["stop"] == ["\n"]
    assert len(chats) == 3 and chats[1]["temperature"] == 0.7  # the answer, then 2 samples
    with TestClient(create_app(up)) as c:
        d = c.post("/v1/chat/completions", json=chat(options=["Paris", "Lyon", "Nice"])).json()
        assert d["confidence"]["model_answer"] == r.model_answer
        assert d["confidence"]["score"] == pytest.approx(r.confidence.score)
    down = Answerer(make_backend(FakeLM(fail_first=[503] * 10), scoring="echo",
                                 retry=RetryPolicy(max_retries=1, base_delay=0.01, max_delay=0.01)), saved)
    with TestClient(create_app(down)) as c:
        r = c.post("/v1/ask", json={"question": q, "choices": ["a", "b"]})
        assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_error"


def test_serve_cli_arguments(capsys):
    from llmcal.cli.main import build_parser

    args = build_parser().parse_args(["serve", "--run", "r", "--port", "9000", "--max_queue", "3"])
    assert (args.run, args.port, args.max_queue, args.host, args.api_key_env) == ("r", 9000, 3, "127.0.0.1",
                                                                                  "LLMCAL_API_KEY")
    from llmcal.cli.serve_commands import main

    assert main(["--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def test_serve_command_builds_a_calibrating_proxy(tmp_path):
    """``llmcal serve --upstream URL``: the answerer talks to a real loopback server (no model loaded here)."""
    from test_openai_backend import FakeLM, _serve

    from llmcal.cli.main import build_parser
    from llmcal.cli.serve_commands import build_answerer

    srv = _serve(FakeLM())
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        args = build_parser().parse_args(["serve", "--run", str(_write_run(tmp_path)), "--upstream", url,
                                          "--upstream_args", "model=fake-model,scoring=echo", "--threshold", "0.5"])
        a = build_answerer(args)
        assert a.describe()["backend"] == "openai" and a.thresholds == Thresholds(0.90, 0.5)
        r = a.answer(Query("What is the capital of France?", ["Paris", "Lyon"]))
        assert r.confidence.calibrator == "temperature" and r.model_answer in ("Paris", "Lyon")
    finally:
        srv.shutdown()
        srv.server_close()
    bad = build_parser().parse_args(["serve", "--upstream_args", "model=x"])
    with pytest.raises(ValueError, match="--upstream"):
        build_answerer(bad)


def test_an_open_ended_runs_calibration_serves_free_form(tmp_path):
    """``llmcal run`` on open-ended tasks writes ``kind: open`` with a ``generation`` entry and no
    multiple-choice calibrator: free form is calibrated, multiple choice is served raw."""
    from llmcal.calibrators import get_calibrator

    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, 300)
    iso = get_calibrator("isotonic").fit(x, rng.uniform(0, 1, 300) < x)
    run = tmp_path / "open"
    run.mkdir()
    (run / "calibration.json").write_text(json.dumps({
        "schema_version": 1, "kind": "open", "threshold": 0.75, "chat": False, "model_args": {},
        "generation": {"signal": "min_token_prob", "calibrator": iso.to_dict(), "cal_auroc": 0.7}}))
    saved = SavedCalibration.from_run(run)
    assert saved.gen_chat is False and saved.describe()["free_form"] == {"signal": "min_token_prob",
                                                                          "calibrator": "isotonic"}
    with TestClient(create_app(FakeAnswerer(saved=saved))) as cl:
        f = cl.post("/v1/ask", json={"question": "Capital of France?"}).json()["confidence"]
        m = cl.post("/v1/ask", json={"question": "q", "choices": ["a", "b"]}).json()["confidence"]
    assert f["signal"] == "min_token_prob" and f["calibrator"] == "isotonic" and f["calibrated"]
    assert m["calibrator"] == "none" and not m["calibrated"] and "uncalibrated" in m["note"]


# ------------------------------------------------------------------ OpenAI compatibility, events, reload
def test_models_list_and_streamed_chunks(client):
    m = client.get("/v1/models").json()
    assert m["object"] == "list" and [(d["id"], d["object"], d["owned_by"]) for d in m["data"]] == [
        ("fake-model", "model", "llmcal")]
    plain = client.post("/v1/chat/completions", json=chat("unsure?", options=["a", "b", "c"])).json()
    r = client.post("/v1/chat/completions", json=chat("unsure?", options=["a", "b", "c"], stream=True,
                                                      stream_options={"include_usage": True}))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = r.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert [c["choices"][0]["delta"] if c["choices"] else None for c in chunks] == [
        {"role": "assistant", "content": ""}, {"content": "a"}, {}, None]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert [c["choices"][0]["finish_reason"] if c["choices"] else "usage" for c in chunks] == [None, None, "stop",
                                                                                               "usage"]
    last = chunks[2]
    assert last["confidence"] == last["choices"][0]["confidence"] and last["confidence"]["id"] == last["id"]
    strip = lambda c: {k: v for k, v in c.items() if k != "id"}  # noqa: E731
    assert strip(last["confidence"]) == strip(plain["confidence"])
    assert chunks[3]["usage"] == plain["usage"] and all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_every_answer_is_told_once_per_choice_and_a_failing_listener_fails_nothing(fake, caplog):
    events = []
    with TestClient(create_app(fake, on_answer=events.append)) as c:
        d = c.post("/v1/chat/completions", json=chat("coin?", options=["heads", "tails"])).json()
        (e,) = events
        assert (e.id, e.question, e.answer, e.abstained, e.level, e.threshold) == (
            d["id"], "coin?", "heads", True, "low", 0.75)
        assert e.confidence == pytest.approx(d["confidence"]["score"]) and e.calibration_version == "none"
        assert e.signals["option_prob"] == pytest.approx(d["confidence"]["raw_score"]) and e.latency_ms > 0
        assert set(e.signals) == {"option_prob", "option_prob_norm", "margin", "entropy"}
        d = c.post("/v1/chat/completions", json=chat(n=3, temperature=0.5, seed=3, stream=True))
        assert [x.id for x in events[1:]] == [events[1].id, f"{events[1].id}-1", f"{events[1].id}-2"]
        assert [q.seed for q in fake.seen[-3:]] == [3, 3 + 17, 3 + 34]  # each choice samples with its own seed
        a = c.post("/v1/ask", json={"question": "q", "choices": ["a", "b"], "confidence_threshold": 0.2}).json()
        assert events[-1].id == a["id"] == a["confidence"]["id"] and events[-1].threshold == 0.2
        c.post("/v1/ask", json={"question": "q", "choices": ["a", "b"], "confidence": False})
        assert (events[-1].confidence, events[-1].level, events[-1].signals) == (None, "", {})
        assert c.post("/v1/ask", json={"question": "boom", "choices": ["a", "b"]}).status_code == 400
        assert len(events) == 6  # a failed request tells nothing

    def broken(event):
        raise RuntimeError("the log is down")

    with TestClient(create_app(fake, on_answer=broken)) as c:
        r = c.post("/v1/ask", json={"question": "q", "choices": ["a", "b"]})
    assert r.status_code == 200 and "on_answer failed" in caplog.text


def test_extra_routers_are_mounted_behind_the_key(fake):
    from fastapi import APIRouter

    router = APIRouter()

    @router.post("/v1/feedback")
    async def feedback(body: dict):
        return {"stored": body["id"]}

    with TestClient(create_app(fake, api_key="k", extra_routers=[router])) as c:
        assert c.post("/v1/feedback", json={"id": "x"}).status_code == 401
        assert c.post("/v1/feedback", json={"id": "x"}, headers={"X-API-Key": "k"}).json() == {"stored": "x"}


def test_a_listed_answer_keeps_one_full_stop():
    from llmcal.policy import decide

    d = decide(0.8, "The capital of Italy is Rome.", [("The capital of Italy is Rome.", 0.8), ("Milan.", 0.2)])
    assert d.sentence == "I'm unsure \u2014 here are a few possibilities: The capital of Italy is Rome, Milan."
    assert d.answer == "The capital of Italy is Rome."  # the answer itself is untouched
    assert decide(0.95, "Rome.").sentence == "I'm very sure about this."


class _Counted:
    """The smallest backend an :class:`Answerer` serves multiple choice with (log-likelihoods by option)."""

    name = "hf"
    model_name = "counted"
    capabilities = frozenset({"score"})
    vocab_size = None

    def fingerprint(self):
        return "counted-1"

    def score_mc(self, reqs):
        from llmcal.core.requests import MCScore

        k = len(reqs[0].continuations)
        return [MCScore(np.array([0.0] + [-1.0] * (k - 1)), np.ones(k, dtype=int), np.zeros(k, dtype=bool))]

    def count_tokens(self, text):
        return 3


def test_reload_swaps_the_calibration_and_refuses_another_models(tmp_path):
    import hashlib

    from llmcal.serve.answerer import Answerer
    from llmcal.signals.mc import softmax

    run = _write_run(tmp_path)
    a = Answerer(_Counted(), SavedCalibration.from_run(run))
    v1 = hashlib.sha256((run / "calibration.json").read_bytes()).hexdigest()[:12]
    ll = np.array([0.0, -1.0, -1.0])
    with TestClient(create_app(a, api_key="k")) as c:
        ask = lambda: c.post("/v1/ask", headers={"X-API-Key": "k"},  # noqa: E731
                             json={"question": "q", "choices": ["a", "b", "c"]}).json()["confidence"]
        first = ask()
        assert first["calibration_version"] == v1 and first["score"] == pytest.approx(softmax(ll / 2.0)[0])
        assert c.post("/admin/reload").status_code == 401
        _write_run(tmp_path, threshold=0.3, calibrators={"temperature": {
            "name": "temperature", "version": 1, "bounds": [0.01, 100.0], "temperature_": 0.5, "mode_": "multiclass",
            "n_classes_": 4}})
        v2 = hashlib.sha256((run / "calibration.json").read_bytes()).hexdigest()[:12]
        r = c.post("/admin/reload", headers={"X-API-Key": "k"})
        assert r.json() == {"calibration_version": v2, "previous": v1}
        second = ask()
        assert second["calibration_version"] == v2 and second["score"] == pytest.approx(softmax(ll / 0.5)[0])
        assert second["thresholds"]["abstain"] == 0.3  # the new run's threshold
        assert c.get("/health", headers={"X-API-Key": "k"}).json()["calibration"]["calibration_version"] == v2
        _write_run(tmp_path, model_args={"pretrained": "someone/else"})
        r = c.post("/admin/reload", headers={"X-API-Key": "k"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "reload_failed"
        assert "a calibration belongs to its model" in r.json()["error"]["message"]
        assert ask()["calibration_version"] == v2  # the old one stays in use
    _write_run(tmp_path)
    fixed = Answerer(_Counted(), SavedCalibration.from_run(run), Thresholds(0.95, 0.5))
    _write_run(tmp_path, threshold=0.3)
    assert fixed.reload() == fixed.saved.version and fixed.saved.threshold == 0.3
    assert fixed.thresholds == Thresholds(0.95, 0.5)  # thresholds given by the caller survive a reload
    with pytest.raises(ValueError, match="nothing to reload"):
        Answerer(_Counted()).reload()


def test_the_run_is_chosen_only_when_there_is_one(tmp_path, monkeypatch, capsys):
    from llmcal.cli.main import build_parser
    from llmcal.cli.serve_commands import build_answerer
    from llmcal.pipeline.ask import choose_run

    root = tmp_path / "runs"
    with pytest.raises(FileNotFoundError, match="no calibrated run under"):
        choose_run(root)
    root.mkdir()
    only = _write_run(root)
    assert choose_run(root) == only
    (root / "old").mkdir()
    (root / "old" / "calibration.json").write_text((only / "calibration.json").read_text())
    with pytest.raises(ValueError, match=r"holds 2 calibrated runs \(.*run.*old.*; newest first\): choose one "
                                         "with --run DIR"):
        choose_run(root)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="choose one with --run DIR"):
        build_answerer(build_parser().parse_args(["serve", "--upstream", "http://127.0.0.1:9/v1"]))
    from llmcal.cli.main import main

    assert main(["ask", "q?", "--choices", "a;b"]) == 2
    assert "choose one with --run DIR" in capsys.readouterr().err


def test_the_shift_score_reaches_the_confidence_object():
    """A probe that saved a shift score says per answer whether the question looks like the calibration data;
    serve's confidence object carries it as ``in_distribution`` (absent without a score)."""
    import numpy as np

    from llmcal.policy import decide
    from llmcal.serve.answerer import Reply
    from llmcal.serve.saved import SavedCalibration

    class ShiftOnly:  # the part of ProbeArtifact serve calls for the shift score and combined
        def in_distribution(self, hidden, kept_positions=None):
            return bool(np.abs(hidden).max() < 10)

        def predict_one(self, sample, hidden, kept_positions=None):
            return {"combined": 0.6}

    saved = SavedCalibration.none()
    saved.probe = ShiftOnly()
    ll = np.log([0.7, 0.2, 0.1])
    for hidden, want in ((np.zeros((1, 4)), True), (np.full((1, 4), 50.0), False)):
        pred, conf = saved.mc(ll, np.array([1, 1, 1]), hidden=hidden)
        assert pred == 0 and conf.in_distribution is want
        reply = Reply("multiple_choice", "a", decide(conf.score, "a"), conf, None)
        assert reply.confidence_dict()["in_distribution"] is want
    saved.probe = None
    _, conf = saved.mc(ll, np.array([1, 1, 1]))
    assert "in_distribution" not in Reply("multiple_choice", "a", decide(conf.score, "a"), conf, None).confidence_dict()


def test_a_sampled_token_outside_its_alternatives_is_named_from_its_id():
    from llmcal.serve.answerer import generation_logprobs

    # token 0 is the greedy choice (listed among its alternatives); token 1 was sampled outside them
    gen = Generation(" Paris.", [7, 9], np.array([-0.1, -4.0]), np.array([0.3, 2.0]),
                     [[(" Paris", -0.1), (" Lyon", -2.5)], [(" ,", -0.2), ("!", -1.9)]])
    names = {7: " Paris", 9: "."}
    got = generation_logprobs(gen, 2, token_text=names.__getitem__)
    assert [e["token"] for e in got] == [" Paris", "."]
    assert [e["logprob"] for e in got] == [-0.1, -4.0] and got[1]["bytes"] == [46]
    assert [t["token"] for t in got[1]["top_logprobs"]] == [" ,", "!"]
    # without a tokenizer (an API backend that returned no ids) the text is unknown: ""
    assert [e["token"] for e in generation_logprobs(gen, 2)] == [" Paris", ""]
