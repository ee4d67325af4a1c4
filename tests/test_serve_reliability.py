"""``llmcal serve`` cannot be wedged, blames the right party, and leaks nothing (issue 14: 9, 10, 13, 14, 16, 17).

Each test reproduces one failure of the old server and asserts the new outcome.  A fake answerer
(tests/test_serve.py) stands in for the model; the upstream faults go through the real openai
backend against a fake OpenAI server (an httpx transport, or a real socket for the drip); the
abandoned clients are real sockets on loopback that a real uvicorn sees close.  No sleeps decide
an outcome: every wait is a bounded loop on an observable state.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from test_openai_backend import FakeLM, mock_transport  # noqa: E402
from test_serve import FakeAnswerer, _write_run, chat  # noqa: E402

from llmcal.backends.openai import OpenAIBackend, RetryPolicy  # noqa: E402
from llmcal.backends.openai.retry import APIError  # noqa: E402
from llmcal.serve.answerer import Answerer, DeadlineExceeded, Query  # noqa: E402
from llmcal.serve.app import MAX_SEED, SECURITY_HEADERS, ModelQueue, _Gone, _Late, create_app  # noqa: E402
from llmcal.serve.saved import SavedCalibration  # noqa: E402

MC = {"question": "What is the capital of France?", "choices": ["Paris", "Lyon"]}


def wait_for(cond, seconds: float = 10.0) -> bool:
    """Poll ``cond`` until it holds (bounded); True when it did."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


# ------------------------------------------------------------------ 9: deadlines and cancellation
def test_the_queue_drops_a_request_whose_client_left_before_the_model_runs():
    """The worker is busy; a waiting request's client leaves; at its turn it is dropped, never run."""
    ran: list[str] = []
    gate = threading.Event()

    def work(name):
        ran.append(name)
        if name == "first":
            assert gate.wait(10)
        return name

    async def main():
        q = ModelQueue(max_queue=4, poll_s=0.01)
        left = {"flag": False}

        async def gone():
            return left["flag"]

        first = asyncio.ensure_future(q.run(work, "first"))
        while not ran:
            await asyncio.sleep(0.005)
        second = asyncio.ensure_future(q.run(work, "second", gone=gone))
        third = asyncio.ensure_future(q.run(work, "third"))
        await asyncio.sleep(0.05)
        assert q.in_flight == 3
        left["flag"] = True  # the second client disconnects while it waits
        for _ in range(500):
            if q.in_flight == 2:
                break
            await asyncio.sleep(0.005)
        assert q.in_flight == 2 and q.abandoned == 1  # it left the line at once
        gate.set()
        assert await first == "first" and await third == "third"
        with pytest.raises(_Gone):
            await second
        assert q.in_flight == 0
        return q

    q = asyncio.run(main())
    assert ran == ["first", "third"]  # "second" never reached the model
    q.executor.shutdown()


def test_a_request_past_its_deadline_while_waiting_never_runs():
    ran: list[str] = []
    gate = threading.Event()

    def work(name):
        ran.append(name)
        assert gate.wait(10)
        return name

    async def main():
        q = ModelQueue(max_queue=4, poll_s=0.01)
        first = asyncio.ensure_future(q.run(work, "first", deadline=time.monotonic() + 0.2))
        while not ran:
            await asyncio.sleep(0.005)
        second = asyncio.ensure_future(q.run(work, "second", deadline=time.monotonic() + 0.2))
        with pytest.raises(_Late) as late_first:
            await first
        with pytest.raises(_Late) as late_second:
            await second
        assert late_first.value.running and not late_second.value.running
        assert q.in_flight == 1 and q.timed_out == 2  # the running call still holds the worker: honest
        gate.set()
        for _ in range(500):
            if q.in_flight == 0:
                break
            await asyncio.sleep(0.005)
        assert q.in_flight == 0
        assert await q.run(lambda: "next") == "next"  # and the worker serves again
        return q

    q = asyncio.run(main())
    assert ran == ["first"]
    q.executor.shutdown()


def test_deadline_is_504_with_a_clear_message_and_the_server_recovers():
    """Old: one slow request held the only worker, and everyone behind it waited (36 s)."""
    fake = FakeAnswerer()
    fake.gate = threading.Event()
    app = create_app(fake, max_queue=4, request_timeout=0.3, poll_s=0.01)
    with TestClient(app) as c, ThreadPoolExecutor(2) as pool:
        slow = pool.submit(c.post, "/v1/ask", json=MC)
        assert fake.started.wait(10)
        queued = pool.submit(c.post, "/v1/ask", json={**MC, "question": "queued?"})
        for f in (slow, queued):
            r = f.result(timeout=10)
            assert r.status_code == 504, r.text
            err = r.json()["error"]
            assert err["code"] == "request_timeout" and "0.3 s" in err["message"]
        assert "still working" in slow.result().json()["error"]["message"]
        assert "without running" in queued.result().json()["error"]["message"]
        assert [q.question for q in fake.seen] == [MC["question"]]  # the queued one never ran
        fake.gate.set()
        assert wait_for(lambda: app.state.queue.in_flight == 0)
        assert c.post("/v1/ask", json=MC).status_code == 200
        assert c.get("/health").json()["queue"]["timed_out"] == 2


class _Backend:
    """A backend whose calls are counted (for the answerer's own deadline checks)."""

    name = "hf"
    model_name = "counting"
    capabilities = frozenset({"score", "generate"})
    vocab_size = None

    def __init__(self):
        self.calls = 0

    def fingerprint(self):
        return "counting-0"

    def score_mc(self, reqs):
        from llmcal.core.requests import MCScore

        self.calls += 1
        return [MCScore(np.array([-0.1, -2.0]), np.array([1, 1]), np.array([True, False]))]

    def count_tokens(self, text):
        return 3

    def apply_chat_template(self, text):
        return text


def test_no_model_call_starts_after_the_querys_deadline():
    be = _Backend()
    a = Answerer(be)
    assert a.answer(Query("q", ["a", "b"], deadline=time.monotonic() + 60)).model_answer == "a"
    with pytest.raises(DeadlineExceeded):
        a.answer(Query("q", ["a", "b"], deadline=time.monotonic() - 1))
    gone = Query("q", ["a", "b"])
    gone.cancelled.set()  # what the server does when the client of a running request leaves
    with pytest.raises(DeadlineExceeded, match="client left"):
        a.answer(gone)
    assert be.calls == 1


def test_a_local_generation_stops_once_the_client_has_left():
    """The transformers backend's generate() gets a stopping criterion tied to the request's
    ``cancelled`` event (set by the server when the client leaves or the deadline passes)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from llmcal.backends import hf_generation
    from llmcal.core.requests import Generation

    seen = []

    class Gen(_Backend):
        def generate(self, prompts, **kw):
            seen.append(getattr(hf_generation._cancel, "event", None))
            return [[Generation("Paris", [1], np.array([-0.1]), np.array([0.1]), [[("Paris", -0.1)]])]]

        def chat_prompt(self, *a, **k):
            return "prompt"

    q = Query("Capital of France?")
    Answerer(Gen()).answer(q)
    assert seen == [q.cancelled] and getattr(hf_generation._cancel, "event", None) is None
    stop = hf_generation._event_stop(q.cancelled)
    assert not stop(torch.zeros((2, 3), dtype=torch.long), None).any()
    q.cancelled.set()
    assert stop(torch.zeros((2, 3), dtype=torch.long), None).all()


class _Served:
    """A real uvicorn on a free loopback port, in a thread."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        assert wait_for(lambda: self.server.started, 30), "uvicorn did not start"

    def close(self):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def _raw_post(port: int, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"POST /v1/ask HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


def test_abandoned_clients_leave_the_queue_and_never_reach_the_model():
    """Old: 10 abandoned long requests gave everyone 503 for a minute.  Now they leave the line as soon
    as their connection closes, the model never sees them, and the staying clients are served."""
    pytest.importorskip("uvicorn")
    fake = FakeAnswerer()
    fake.gate = threading.Event()
    app = create_app(fake, max_queue=10, poll_s=0.02)
    srv = _Served(app)
    try:
        with ThreadPoolExecutor(2) as pool:
            staying = pool.submit(httpx.post, srv.url + "/v1/ask", json=MC, timeout=30)
            assert fake.started.wait(10)
            abandoned = [_raw_post(srv.port, {**MC, "question": f"abandoned {i}?"}) for i in range(10)]
            assert wait_for(lambda: app.state.queue.in_flight == 11)
            # the queue is full: one more is refused at once
            assert httpx.post(srv.url + "/v1/ask", json=MC, timeout=10).status_code == 503
            for s in abandoned:
                s.close()
            assert wait_for(lambda: app.state.queue.in_flight == 1), app.state.queue.stats()
            assert app.state.queue.abandoned == 10
            late = pool.submit(httpx.post, srv.url + "/v1/ask", json={**MC, "question": "late?"}, timeout=30)
            assert wait_for(lambda: app.state.queue.in_flight == 2)  # admitted: the abandoned freed the line
            fake.gate.set()
            assert staying.result(timeout=30).status_code == 200
            assert late.result(timeout=30).status_code == 200
        assert [q.question for q in fake.seen] == [MC["question"], "late?"]  # no abandoned one ran
    finally:
        fake.gate.set()
        srv.close()


# ------------------------------------------------------------------ 10: upstream faults are 502
class BadLM(FakeLM):
    """A fake OpenAI server that answers scoring and chat with ``fault``: a JSON list, NaN or string
    log-probabilities, or an object without choices."""

    def __init__(self, fault: str):
        super().__init__()
        self.fault = fault

    def respond(self, path, body):
        status, payload, headers = super().respond(path, body)
        if not path.endswith("completions"):
            return status, payload, headers
        if self.fault == "list":
            return 200, [1, 2, 3], {}
        if self.fault == "no_choices":
            return 200, {"object": "text_completion"}, {}
        bad = float("nan") if self.fault == "nan" else "zero"
        for ch in payload.get("choices", []):
            lp = ch.get("logprobs") or {}
            if "token_logprobs" in lp:
                lp["token_logprobs"] = [None] + [bad] * (len(lp["token_logprobs"]) - 1)
            for tok in lp.get("content") or []:
                tok["logprob"] = bad
        return status, payload, headers


UPSTREAM = "http://upstream.test/v1"


def _upstream_app(lm, tmp_path, **kw):
    be = OpenAIBackend(UPSTREAM, "fake-model", transport=mock_transport(lm), scoring="echo",
                       retry=RetryPolicy(max_retries=0, base_delay=0.01, max_delay=0.01), **kw)
    return create_app(Answerer(be, SavedCalibration.from_run(_write_run(tmp_path))))


@pytest.mark.parametrize("fault", ["list", "nan", "string", "no_choices"])
@pytest.mark.parametrize("kind", ["mc", "free"])
def test_an_upstreams_unusable_answer_is_502_naming_it(tmp_path, fault, kind):
    """Old: a JSON list gave 500, NaN or string log-probs 400 (the client blamed)."""
    body = MC if kind == "mc" else {"question": MC["question"]}
    with TestClient(_upstream_app(BadLM(fault), tmp_path)) as c:
        r = c.post("/v1/ask", json=body)
    assert r.status_code == 502, (fault, kind, r.text)
    err = r.json()["error"]
    assert err["type"] == "upstream_error" and UPSTREAM in err["message"], err


def test_a_good_upstream_still_answers(tmp_path):
    with TestClient(_upstream_app(FakeLM(), tmp_path)) as c:
        assert c.post("/v1/ask", json=MC).status_code == 200
        assert c.post("/v1/ask", json={"question": MC["question"]}).status_code == 200


class _Drip(BaseHTTPRequestHandler):
    """Headers at once, then the body one byte every 0.1 s: every read is quick, the answer never ends."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "400")
        self.end_headers()
        try:
            for _ in range(400):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:  # the client gave up
            pass

    def log_message(self, *args):
        pass


def test_the_upstream_timeout_is_for_the_whole_answer_not_per_read():
    """Old: an upstream sending a byte a second with timeout=3 took 41 s.  Now timeout=1 ends in ~1 s."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    srv.block_on_close = False
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    try:
        be = OpenAIBackend(url, "m", scoring="echo", timeout=1.0, retry=RetryPolicy(max_retries=0))
        from llmcal.core.requests import MCRequest

        t0 = time.perf_counter()
        with pytest.raises(APIError, match="within 1 s"):
            be.score_mc([MCRequest("Question: q\nAnswer:", (" a", " b"))])
        assert time.perf_counter() - t0 < 5.0
        with TestClient(create_app(Answerer(be))) as c:
            t0 = time.perf_counter()
            r = c.post("/v1/ask", json=MC)
            assert r.status_code == 502 and url in r.json()["error"]["message"]
            assert time.perf_counter() - t0 < 5.0
    finally:
        srv.shutdown()
        srv.server_close()


# ------------------------------------------------------------------ 13, 14: bodies
@pytest.mark.parametrize("body,field", [
    ({**MC, "choices": ["", "Paris"]}, "choices.0"),
    ({**MC, "choices": ["Paris", "   "]}, "choices.1"),
    ({"question": "   "}, "question"),
])
def test_empty_options_are_422_naming_the_field(body, field):
    """Old: ``["", "Paris"]`` returned the empty answer."""
    fake = FakeAnswerer()
    with TestClient(create_app(fake)) as c:
        r = c.post("/v1/ask", json=body)
        assert r.status_code == 422 and r.json()["error"]["message"].startswith(field), r.text
        r = c.post("/v1/chat/completions", json=chat(options=["Lyon", ""]))
        assert r.status_code == 422 and r.json()["error"]["message"].startswith("options.1"), r.text
    assert fake.seen == []


@pytest.mark.parametrize("seed", [2**70, -1, MAX_SEED + 1])
def test_seed_out_of_range_is_422(seed):
    """Old: 400 (the model's error) for ``seed`` 2^70."""
    with TestClient(create_app(FakeAnswerer())) as c:
        for path, body in (("/v1/ask", {**MC, "seed": seed}), ("/v1/chat/completions", chat(seed=seed))):
            r = c.post(path, json=body)
            assert r.status_code == 422 and r.json()["error"]["message"].startswith("seed"), r.text
        assert c.post("/v1/ask", json={**MC, "seed": MAX_SEED}).status_code == 200


def test_json_nested_90000_deep_is_422_not_a_recursion_error():
    with TestClient(create_app(FakeAnswerer())) as c:
        for body in (b"[" * 90000 + b"]" * 90000, b'{"question": ' + b"[" * 90000 + b"]" * 90000 + b"}"):
            r = c.post("/v1/ask", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_body", r.text


def test_an_unexpected_model_failure_is_a_json_500_not_a_traceback():
    class Broken(FakeAnswerer):
        def answer(self, q):
            raise RuntimeError("CUDA out of memory at /home/me/secret")

    with TestClient(create_app(Broken()), raise_server_exceptions=True) as c:
        r = c.post("/v1/ask", json=MC)
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert "secret" not in r.text


# ------------------------------------------------------------------ 16: a file:// base_url
@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://h/v1", "localhost:8080/v1", "http:///v1"])
def test_a_non_http_base_url_is_refused_when_parsed(url):
    """Old: a ``file://`` base_url was retried 6 times."""
    from llmcal.backends.registry import parse_backend_args
    from llmcal.cli.main import build_parser
    from llmcal.cli.serve_commands import build_answerer

    with pytest.raises(ValueError, match="base_url"):
        parse_backend_args("openai", f"base_url={url}")
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="base_url"):
        build_answerer(build_parser().parse_args(["serve", "--run", "none", "--upstream", url]))
    assert time.perf_counter() - t0 < 2.0  # refused, not retried


# ------------------------------------------------------------------ 17: small exposures
def test_security_headers_on_every_response():
    with TestClient(create_app(FakeAnswerer(), api_key="k")) as c:
        responses = [c.get("/"), c.get("/health"), c.post("/v1/ask", json=MC),  # 401
                     c.post("/v1/ask", json={}, headers={"X-API-Key": "k"}),  # 422
                     c.post("/v1/ask", json=MC, headers={"X-API-Key": "k"}), c.get("/nothing")]
        assert [r.status_code for r in responses] == [200, 200, 401, 422, 200, 404]
        for r in responses:
            for name, value in SECURITY_HEADERS.items():
                assert name in r.headers, (r.request.url, name)
            assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert "cdn.jsdelivr.net" in c.get("/docs").headers["content-security-policy"]


def test_the_host_check_refuses_other_names():
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 must not reach a loopback server."""
    with TestClient(create_app(FakeAnswerer(), allowed_hosts=["127.0.0.1", "localhost", "::1"])) as c:
        r = c.get("/health", headers={"Host": "evil.example"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "host_not_allowed"
        assert r.headers["x-frame-options"] == "DENY"
        assert c.post("/v1/ask", json=MC, headers={"Host": "evil.example:8000"}).status_code == 400
        for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
            assert c.get("/health", headers={"Host": host}).status_code == 200, host
    from llmcal.cli.serve_commands import parse_allowed_hosts

    assert parse_allowed_hosts(None, "127.0.0.1") == ["127.0.0.1", "localhost", "::1"]
    assert parse_allowed_hosts(None, "0.0.0.0") is None and parse_allowed_hosts("*", "127.0.0.1") is None
    assert parse_allowed_hosts("a.example, b.example", "0.0.0.0") == ["a.example", "b.example"]


class _Leaky(FakeAnswerer):
    model_name = "qwen (via http://10.0.0.5:8000/v1)"

    def describe(self):
        return {"model": self.model_name, "backend": "openai", "pretrained": "/srv/models/secret-weights",
                **self.saved.describe()}


def test_health_shows_no_paths_or_upstream_urls_without_the_key():
    """Old: /health without a key showed the upstream URL or the model path."""
    for key in (None, "k"):
        with TestClient(create_app(_Leaky(), api_key=key)) as c:
            h = c.get("/health")
            assert h.status_code == 200
            assert "10.0.0.5" not in h.text and "/srv/models" not in h.text, h.text
            assert h.json()["model"] == "qwen" and h.json()["calibration"]["pretrained"] == "secret-weights"
            a = c.post("/v1/ask", json=MC, headers={"X-API-Key": "k"} if key else {})
            assert a.status_code == 200 and "10.0.0.5" not in a.text
            if key:
                full = c.get("/health", headers={"Authorization": "Bearer k"}).json()
                assert "10.0.0.5" in full["model"] and full["calibration"]["pretrained"].startswith("/srv/")


def test_an_empty_api_key_refuses_to_start(monkeypatch, capsys):
    """Old: ``LLMCAL_API_KEY=`` (empty) silently turned authentication off."""
    from llmcal.cli.serve_commands import api_key_from_env, main

    for empty in ("", "   "):
        monkeypatch.setenv("LLMCAL_API_KEY", empty)
        t0 = time.perf_counter()
        assert main(["--run", "none"]) == 2
        assert time.perf_counter() - t0 < 5.0  # before any model is loaded
        err = capsys.readouterr().err
        assert "LLMCAL_API_KEY" in err and "empty" in err
    with pytest.raises(ValueError, match="empty"):
        create_app(FakeAnswerer(), api_key="")
    monkeypatch.delenv("LLMCAL_API_KEY")
    assert api_key_from_env("LLMCAL_API_KEY") is None
    monkeypatch.setenv("LLMCAL_API_KEY", "s3cret")
    assert api_key_from_env("LLMCAL_API_KEY") == "s3cret"


def test_serve_refuses_a_bad_request_timeout(capsys):
    from llmcal.cli.serve_commands import main

    for bad in ("0", "-5", "nan", "inf"):
        assert main(["--run", "none", "--request_timeout", bad]) == 2
        assert "--request_timeout" in capsys.readouterr().err
