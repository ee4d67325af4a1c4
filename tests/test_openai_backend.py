"""The openai backend against fake servers: transport, retries, response shapes, scoring, resume.

``FakeLM`` is a deterministic stand-in for a model server: words are tokens,
log-probabilities are hashes of (prefix, token), and it can echo prompt
log-probabilities lined up (vLLM) or one position late (llama-cpp-python
0.3.x on a model without BOS).  It answers through ``httpx.MockTransport``
(in-process) or a real loopback HTTP server that the resume test kills.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest

from llmcal.backends.openai import OpenAIBackend, parse_openai_args
from llmcal.backends.openai.generation import generation_from_choice
from llmcal.backends.openai.retry import (RetryPolicy, ServerError, ServerUnavailable, post_json,
                                          retry_after_seconds)
from llmcal.backends.openai.wire import continuation_tokens, parse_logprobs
from llmcal.core.requests import MCRequest

ALTS = (" a", " b", " c", " d", " e")


def _tokens(text: str) -> list[str]:
    return re.findall(r"\s*\S+|\s+$", text)


def fake_lp(prefix: str, token: str) -> float:
    """log p(token | prefix) of the fake model."""
    return -0.05 - (zlib.crc32(f"{prefix}|{token}".encode()) % 800) / 100.0


def fake_top(prefix: str, k: int) -> dict[str, float]:
    return dict(sorted(((a, fake_lp(prefix, a)) for a in ALTS), key=lambda kv: -kv[1])[:k])


class FakeLM:
    """Answers /v1/completions, /v1/chat/completions, /tokenize, /detokenize and /v1/models."""

    def __init__(self, shifted: bool = False, fail_first: list[int] | None = None,
                 retry_after: str | None = None, die_after: int | None = None, delay: float = 0.0) -> None:
        self.shifted = shifted
        self.fail_first = list(fail_first or [])  # statuses answered before the real answers
        self.retry_after = retry_after
        self.die_after = die_after
        self.delay = delay
        self.calls: list[tuple[str, dict]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.vocab: dict[str, int] = {}
        self.lock = threading.Lock()

    def _id(self, tok: str) -> int:
        return self.vocab.setdefault(tok, 1000 + len(self.vocab))

    def respond(self, path: str, body: dict) -> tuple[int, dict, dict]:
        with self.lock:
            self.calls.append((path, body))
            if self.fail_first:
                status = self.fail_first.pop(0)
                headers = {"Retry-After": self.retry_after} if self.retry_after and status == 429 else {}
                return status, {"error": {"message": f"fake {status}"}}, headers
        if path.startswith("/extras/"):  # llama-cpp-python's; this fake is vLLM-like
            return 404, {"detail": "Not Found"}, {}
        if path.endswith("/models"):
            return 200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}, {}
        if path.endswith("/tokenize"):
            return 200, {"tokens": [self._id(t) for t in _tokens(body["prompt"])]}, {}
        if path.endswith("/detokenize"):
            inv = {v: k for k, v in self.vocab.items()}
            return 200, {"prompt": "".join(inv[i] for i in body["tokens"])}, {}
        if path.endswith("/chat/completions"):
            return 200, self._chat(body), {}
        if path.endswith("/completions"):
            if "model" not in body:
                return 400, {"error": {"message": "model is required"}}, {}
            return 200, self._completion(body), {}
        return 404, {"detail": "Not Found"}, {}

    def _completion(self, body: dict) -> dict:
        prompt, k = body["prompt"], int(body.get("logprobs") or 0)
        toks = _tokens(prompt)
        bias = {int(t): b for t, b in (body.get("logit_bias") or {}).items()}
        inv = {v: t for t, v in self.vocab.items()}
        gen = inv[max(bias, key=bias.get)] if bias else next(iter(fake_top(prompt, 1)))
        all_toks = (toks if body.get("echo") else []) + [gen]
        offsets, pos, lps, tops = [], 0 if body.get("echo") else len(prompt), [], []
        for j, t in enumerate(all_toks):
            offsets.append(pos)
            before = "".join(all_toks[:j]) if body.get("echo") else prompt
            at = before + t if (self.shifted and body.get("echo") and j < len(toks)) else before
            lps.append(fake_lp(at, t))
            tops.append({**fake_top(at, k), t: fake_lp(at, t)})
            pos += len(t)
        if body.get("echo"):
            lps[0], tops[0] = None, None
        text = (prompt if body.get("echo") else "") + gen
        return {"id": "cmpl-1", "object": "text_completion", "model": body["model"],
                "choices": [{"text": text, "index": 0, "finish_reason": "length",
                             "logprobs": {"tokens": all_toks, "text_offset": offsets, "token_logprobs": lps,
                                          "top_logprobs": tops}}]}

    def _chat(self, body: dict) -> dict:
        prompt = body["messages"][-1]["content"]
        words = [" Paris", ".", "\n", " More"]
        content, acc = [], prompt
        for w in words:
            content.append({"token": w, "logprob": fake_lp(acc, w), "bytes": list(w.encode()),
                            "top_logprobs": [{"token": a, "logprob": v, "bytes": list(a.encode())}
                                             for a, v in fake_top(acc, int(body.get("top_logprobs") or 0)).items()]})
            acc += w
        return {"id": "chat-1", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": " Paris."}, "logprobs": {"content": content}}]}


def mock_transport(lm: FakeLM) -> httpx.MockTransport:
    async def handler(request: httpx.Request) -> httpx.Response:
        with lm.lock:
            lm.in_flight += 1
            lm.max_in_flight = max(lm.max_in_flight, lm.in_flight)
        try:
            if lm.delay:
                await asyncio.sleep(lm.delay)
            status, payload, headers = lm.respond(request.url.path, json.loads(request.content or b"{}"))
        finally:
            with lm.lock:
                lm.in_flight -= 1
        return httpx.Response(status, json=payload, headers=headers)

    return httpx.MockTransport(handler)


def make_backend(lm: FakeLM, sleeps: list[float] | None = None, **kw) -> OpenAIBackend:
    async def fake_sleep(s: float) -> None:
        if sleeps is not None:
            sleeps.append(s)

    kw.setdefault("retry", RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05))
    return OpenAIBackend("http://fake.test/v1", "fake-model", transport=mock_transport(lm), sleep=fake_sleep, **kw)


def expected(context: str, cont: str) -> float:
    """The fake model's true log-likelihood of ``cont`` after ``context`` (lm-eval's split)."""
    n = len(context) - len(context.rstrip())
    ctx, cont = (context[:-n], context[-n:] + cont) if n else (context, cont)
    toks = _tokens(ctx + cont)
    n_ctx = len(_tokens(ctx))
    return sum(fake_lp("".join(toks[:j]), toks[j]) for j in range(n_ctx, len(toks)))


REQS = [MCRequest("Question: What is the capital of France?\nAnswer:", (" Paris", " Lyon", " Marseille city")),
        MCRequest("Question: 2 + 2 =\nAnswer: ", ("4", "five")),
        MCRequest("Q: sky colour?\nA:", (" blue", " green", " red", " very dark grey")),
        # partial scoring (WinoGrande): one context per option, one shared continuation
        MCRequest("The trophy did not fit in the suitcase because the trophy",
                  (" was too big.", " was too big."),
                  contexts=("The trophy did not fit in the suitcase because the trophy",
                            "The trophy did not fit in the suitcase because the suitcase"))]


# ------------------------------------------------------------------ scoring
@pytest.mark.parametrize("shifted,mode", [(False, "echo"), (True, "forced"), (False, "forced")])
def test_scoring_matches_the_model(shifted, mode):
    lm = FakeLM(shifted=shifted)
    b = make_backend(lm, scoring="auto" if mode == "echo" or shifted else mode)
    scores = b.score_mc(REQS)
    assert b.resolved_scoring == mode
    for req, sc in zip(REQS, scores):
        want = [expected(req.context_of(i), c) for i, c in enumerate(req.continuations)]
        np.testing.assert_allclose(sc.logprobs, want, atol=1e-9)
        assert sc.hidden is None and sc.logprobs.dtype == np.float64
    assert list(scores[2].n_tokens) == [1, 1, 1, 3]
    assert scores[3].logprobs[0] != scores[3].logprobs[1]  # the two contexts really differ


def test_echo_on_a_shifted_server_is_wrong_and_the_probe_notices():
    lm = FakeLM(shifted=True)
    wrong = make_backend(lm, scoring="echo").score_mc(REQS[:1])[0].logprobs
    right = [expected(REQS[0].context, c) for c in REQS[0].continuations]
    assert np.abs(wrong - right).max() > 0.1
    b = make_backend(lm)
    b.score_mc(REQS[:1])
    assert b.probe_report["chosen"] == "forced"
    assert b.probe_report["echo_matches_one_before"] > b.probe_report["echo_matches_at"]


def test_progress_is_reported_once_per_request():
    seen = []
    make_backend(FakeLM()).score_mc(REQS, progress=seen.append)
    assert seen == [1] * len(REQS)


# ------------------------------------------------------------------ response shapes
def test_legacy_completions_shape_vllm_echo():
    # vLLM /v1/completions, echo=true, logprobs=1: the first prompt token has no logprob
    lp = {"text_offset": [0, 8, 9, 16], "token_logprobs": [None, -6.2, -0.3, -4.5],
          "tokens": ["Question", ":", " Answer", " Paris"],
          "top_logprobs": [None, {":": -6.2, ",": -1.0}, {" Answer": -0.3}, {" The": -1.2, " Paris": -4.5}]}
    toks = parse_logprobs(lp)
    assert [t.offset for t in toks] == [0, 8, 9, 16] and toks[0].logprob is None
    cont = continuation_tokens(toks, 16, 22)
    assert [t.token for t in cont] == [" Paris"] and cont[0].top[0] == (" The", -1.2)


def test_chat_shape_openai_vllm_ollama():
    # chat: logprobs.content[] with token/logprob/bytes/top_logprobs (Ollama sends the same keys)
    lp = {"content": [
        {"token": "Paris", "logprob": -0.1, "bytes": [80, 97, 114, 105, 115],
         "top_logprobs": [{"token": "Paris", "logprob": -0.1, "bytes": [80, 97, 114, 105, 115]},
                          {"token": "Lyon", "logprob": -2.5, "bytes": None}]},
        {"token": ".", "logprob": -0.7, "top_logprobs": []}]}
    g = generation_from_choice("Paris.", parse_logprobs(lp), "stop", ("\n",), top_k=5)
    assert g.text == "Paris." and g.finish_reason == "stop" and g.token_ids == []
    np.testing.assert_allclose(g.token_logprobs, [-0.1, -0.7])
    assert g.top_logprobs[0] == [("Paris", -0.1), ("Lyon", -2.5)]
    assert 0 < g.entropies[0] < np.log(2) and np.isnan(g.entropies[1])


def test_llamacpp_server_shape_with_ids_and_a_stop_token():
    # llama.cpp's server: the chat shape on /v1/completions too, with token ids; a reported stop token is cut
    lp = {"content": [
        {"id": 7, "token": " Rome", "bytes": [32, 82, 111, 109, 101], "logprob": -0.2,
         "top_logprobs": [{"id": 7, "token": " Rome", "bytes": [32, 82, 111, 109, 101], "logprob": -0.2}]},
        {"id": 198, "token": "\n", "bytes": [10], "logprob": -1.5, "top_logprobs": []}]}
    g = generation_from_choice(" Rome", parse_logprobs(lp), "stop", ("\n",), top_k=3)
    assert g.text == "Rome" and g.token_ids == [7] and len(g.token_logprobs) == 1


def test_empty_answer_keeps_the_token_that_ended_it_and_client_side_stop():
    lp = {"content": [{"token": "\n", "logprob": -0.4, "top_logprobs": [{"token": "\n", "logprob": -0.4}]}]}
    g = generation_from_choice("", parse_logprobs(lp), "stop", ("\n",), top_k=5)
    assert g.text == "" and list(g.token_logprobs) == [-0.4]
    # a server that ignored `stop`: text and tokens are cut here
    lp = {"tokens": [" yes", "\n", "more"], "token_logprobs": [-0.1, -0.2, -0.3], "top_logprobs": [{}, {}, {}],
          "text_offset": [30, 34, 35]}
    g = generation_from_choice(" yes\nmore", parse_logprobs(lp), "length", ("\n",), top_k=0)
    assert g.text == "yes" and g.finish_reason == "stop" and list(g.token_logprobs) == [-0.1]


def test_generate_through_chat_and_completions():
    lm = FakeLM()
    b = make_backend(lm)
    (gens,) = b.generate(["What is the capital of France?"], max_new_tokens=8)
    assert gens[0].text == "Paris." and len(gens[0].token_logprobs) == 2
    sent = lm.calls[-1][1]
    assert sent["logprobs"] is True and sent["top_logprobs"] == 5 and sent["stop"] == ["\n"]
    out = make_backend(lm, generate_endpoint="completions").generate(["a b", "c"], temperature=0.7, n=2, seed=3)
    assert [len(o) for o in out] == [2, 2]
    assert sorted(c[1]["seed"] for c in lm.calls[-4:]) == [3, 3, 4, 4]
    with pytest.raises(ValueError, match="n > 1"):
        b.generate(["x"], n=2)


# ------------------------------------------------------------------ transport
def test_retry_after_is_parsed():
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_429_with_retry_after_then_success():
    lm, sleeps = FakeLM(fail_first=[429], retry_after="2"), []
    make_backend(lm, sleeps).score_mc(REQS[:1])
    assert sleeps and sleeps[0] >= 2.0


def test_500_then_success_backs_off_with_jitter():
    lm, sleeps = FakeLM(fail_first=[500, 503]), []
    b = make_backend(lm, sleeps, retry=RetryPolicy(max_retries=3, base_delay=1.0, max_delay=8.0))
    b.score_mc(REQS[:1])
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 1.0 and 0 <= sleeps[1] <= 2.0


def test_non_retryable_status_fails_at_once_naming_url_and_body():
    lm = FakeLM(fail_first=[401])
    with pytest.raises(ServerError, match=r"http://fake.test/v1/completions: HTTP 401: .*fake 401"):
        make_backend(lm).score_mc(REQS[:1])
    assert len(lm.calls) == 1


def test_retries_are_bounded():
    lm, sleeps = FakeLM(fail_first=[503] * 10), []
    with pytest.raises(ServerUnavailable, match="4 attempt"):
        make_backend(lm, sleeps, scoring="echo").score_mc([MCRequest("Q:", (" x",))])
    assert len(sleeps) == 3 and len(lm.calls) == 4  # three retries after the first attempt


def test_connection_refused_gives_up_with_a_clear_error():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "m", scoring="echo",
                      retry=RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.02))
    with pytest.raises(ServerUnavailable, match=rf"127.0.0.1:{port}/v1/completions: no answer after 3 attempt.*Connect"):
        b.score_mc(REQS[:1])


def test_concurrency_bound_is_honoured():
    lm = FakeLM(delay=0.02)
    reqs = [MCRequest(f"Question {i}:", (" x", " y")) for i in range(12)]
    make_backend(lm, scoring="echo", concurrency=3).score_mc(reqs)
    assert lm.max_in_flight == 3
    lm2 = FakeLM(delay=0.02)
    make_backend(lm2, scoring="echo", concurrency=1).score_mc(reqs[:3])
    assert lm2.max_in_flight == 1


def test_api_key_comes_from_the_environment(monkeypatch):
    seen = []

    def handler(request):
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"data": [{"id": "m"}]})

    monkeypatch.setenv("MY_KEY", "sk-test")
    b = OpenAIBackend.load("http://fake.test/v1", api_key_env="MY_KEY", scoring="echo",
                           transport=httpx.MockTransport(handler))
    assert b.model == "m" and seen == ["Bearer sk-test"]
    with pytest.raises(ValueError, match="unknown key 'api_key'"):
        parse_openai_args("base_url=http://x/v1,api_key=sk-123")
    assert parse_openai_args("base_url=http://x/v1,model=m,concurrency=4")["concurrency"] == 4


def test_post_json_rng_and_sleep_are_injectable():
    lm = FakeLM(fail_first=[502])
    sleeps = []

    async def sleep(s):
        sleeps.append(s)

    async def go():
        async with httpx.AsyncClient(transport=mock_transport(lm)) as c:
            return await post_json(c, "http://fake.test/v1/models", {}, RetryPolicy(base_delay=4.0),
                                   sleep=sleep, rng=random.Random(0))

    assert asyncio.run(go())["data"][0]["id"] == "fake-model"
    assert sleeps == [pytest.approx(random.Random(0).uniform(0, 4.0))]


# ------------------------------------------------------------------ the server goes away, the run resumes
class _Handler(BaseHTTPRequestHandler):
    lm: FakeLM
    served = 0

    def do_POST(self):  # noqa: N802
        cls = type(self)
        cls.served += 1
        if cls.lm.die_after is not None and cls.served > cls.lm.die_after:
            self.server.dying = True  # the process "dies": drop the connection without an answer
            self.connection.close()
            return
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        status, payload, headers = cls.lm.respond(self.path, body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def _serve(lm: FakeLM, port: int = 0) -> ThreadingHTTPServer:
    handler = type("H", (_Handler,), {"lm": lm, "served": 0})
    ThreadingHTTPServer.allow_reuse_address = True
    srv = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_server_dies_mid_run_and_the_run_resumes(tmp_path):
    from llmcal.pipeline.measure import measure
    from llmcal.records.run_dir import RunDir
    from llmcal.core.items import MCItem

    items = [MCItem(f"q{i}", "fake", f"What is item {i}?", (f"yes {i}", "no", f"maybe {i}"), i % 3)
             for i in range(40)]
    config = {"model": "openai", "tasks": ["fake"]}

    def factory(port):
        return lambda: OpenAIBackend(f"http://127.0.0.1:{port}/v1", "fake-model", scoring="echo", concurrency=4,
                                     retry=RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.02))

    # a reference run on a server that never dies
    srv = _serve(FakeLM())
    ref = RunDir(tmp_path / "ref")
    ref.start(config, ["model"])
    measure(ref, items, factory(srv.server_address[1]), chunk=8, progress=False)
    srv.shutdown()
    srv.server_close()

    # the server dies after 50 requests (mid-chunk); the run stops with a clear error
    lm = FakeLM(die_after=50)
    srv = _serve(lm)
    port = srv.server_address[1]
    run = RunDir(tmp_path / "run")
    run.start(config, ["model"])
    with pytest.raises(ServerUnavailable, match=f"127.0.0.1:{port}"):
        measure(run, items, factory(port), chunk=8, progress=False)
    srv.shutdown()
    srv.server_close()
    kept = run.read_samples()
    assert 0 < len(kept) < len(items) and len(kept) % 8 == 0  # whole chunks only

    # later, the server is back (same port); the same command resumes
    time.sleep(0.05)
    srv = _serve(FakeLM(), port)
    try:
        n_new = measure(run, items, factory(port), chunk=8, progress=False)
    finally:
        srv.shutdown()
        srv.server_close()
    samples = run.read_samples()
    assert n_new == len(items) - len(kept)
    assert sorted(s.id for s in samples) == sorted(it.id for it in items)  # nothing lost or twice
    want = {s.id: s.option_logprobs for s in ref.read_samples()}
    assert all(s.option_logprobs == want[s.id] for s in samples)


def test_cli_measure_with_model_openai(tmp_path, capsys):
    from llmcal.cli.main import main
    from llmcal.records.run_dir import RunDir

    srv = _serve(FakeLM())
    url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    out = tmp_path / "run"
    try:
        rc = main(["measure", "--model", "openai", "--model_args", f"base_url={url},model=fake-model,concurrency=2",
                   "--tasks", "builtin", "--limit", "6", "--output_path", str(out), "--quiet"])
    finally:
        srv.shutdown()
        srv.server_close()
    assert rc == 0
    run = RunDir(out)
    assert len(run.read_samples()) == 6
    meta = run.config()
    assert meta["backend"]["backend"] == "openai" and meta["backend"]["scoring"] == "echo"
    assert meta["model_args"]["base_url"] == url and meta["dtype"] == "server"
    # a server that is down: a clear error and exit status, not a traceback
    assert main(["measure", "--model", "openai", "--model_args", f"base_url={url},model=m,max_retries=0",
                 "--tasks", "builtin", "--limit", "7", "--output_path", str(out), "--quiet"]) != 0
    assert url in capsys.readouterr().err
