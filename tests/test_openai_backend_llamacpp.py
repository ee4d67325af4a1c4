"""The openai backend against a real server: llama-cpp-python's, serving the embedded GGUF on loopback.

Skipped, saying why, where ``llama-cpp-python[server]`` is not installed (it
builds from source in about 9 minutes; see docs/openai_backend.md).  Checks
that option log-probabilities and greedy answers agree with the HF backend
on the same questions, that the alignment probe picks ``forced`` scoring on
this server (its echo is one position late, module docstring of
``backends/openai/scoring.py``), and that a run survives the server being
killed mid-run and resumes without losing or repeating an item.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

if not all(importlib.util.find_spec(m) for m in ("llama_cpp", "sse_starlette", "starlette_context")):
    pytest.skip("llama-cpp-python[server] is not installed: build it with CMAKE_ARGS=-DGGML_NATIVE=OFF "
                "pip install 'llama-cpp-python[server]' (about 9 minutes; docs/openai_backend.md)",
                allow_module_level=True)

from llmcal.backends.openai import OpenAIBackend, RetryPolicy, ServerUnavailable  # noqa: E402
from llmcal.backends.registry import load_backend  # noqa: E402

# Tolerances measured (docs/openai_backend.md, 30 built-in items, 120 options):
# * the embedded Q4_1 GGUF: llama.cpp multiplies Q4_1 weights with 8-bit quantized
#   activations, transformers runs the same weights dequantized in fp32; option
#   log-likelihoods differ by up to 1.12 nats (mean 0.21), every prediction agrees;
# * the same weights as an F32 GGUF: the arithmetic is the same up to rounding;
#   the difference is ~1e-3 (the backend itself adds nothing).
Q4_1_TOL = 1.5
F32_TOL = 0.02
N_ITEMS = 6  # item 1's greedy answer is one that a repeat penalty changes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """``python -m llama_cpp.server`` on 127.0.0.1 (loopback only) for the embedded GGUF."""

    def __init__(self, port: int | None = None, model: str | None = None) -> None:
        from llmcal.backends.model_args import EMBEDDED_GGUF, embedded_model_dir

        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        model = model or str(embedded_model_dir() / EMBEDDED_GGUF)
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", model,
               "--host", "127.0.0.1", "--port", str(self.port), "--model_alias", "smollm2",
               "--n_ctx", "512", "--n_threads", str(max(1, min(2, os.cpu_count() or 1))), "--verbose", "False"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait()

    def _wait(self, limit: float = 60.0) -> None:
        import httpx

        t0 = time.time()
        while time.time() - t0 < limit:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/models", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"llama_cpp.server did not answer on {self.url} within {limit:.0f} s")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server():
    """The embedded Q4_1 GGUF, as a user would serve it."""
    srv = LlamaServer()
    yield srv
    srv.kill()


@pytest.fixture(scope="module")
def server_f32(tmp_path_factory):
    """The same weights dequantized to F32 by llama.cpp (what transformers computes with)."""
    import llama_cpp

    from llmcal.backends.model_args import EMBEDDED_GGUF, embedded_model_dir

    out = tmp_path_factory.mktemp("gguf") / "smollm2-f32.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = llama_cpp.LLAMA_FTYPE_ALL_F32, True, 2
    src = str(embedded_model_dir() / EMBEDDED_GGUF).encode()
    assert llama_cpp.llama_model_quantize(src, str(out).encode(), params) == 0
    srv = LlamaServer(model=str(out))
    yield srv
    srv.kill()


@pytest.fixture(scope="module")
def items():
    from llmcal.tasks.registry import load_task

    return load_task("builtin", limit=N_ITEMS)


def _backend(url: str, **kw) -> OpenAIBackend:
    kw.setdefault("retry", RetryPolicy(max_retries=2, base_delay=0.05, max_delay=0.1))
    kw.setdefault("concurrency", 2)
    return load_backend("openai", base_url=url, model="smollm2", timeout=60, **kw)


def _compare(url, items, hf_backend, label, **kw):
    from llmcal.tasks.prompts import build_request

    reqs = [build_request(it, "cloze") for it in items]
    hf = hf_backend.score_mc(reqs)
    b = _backend(url, **kw)
    t0 = time.perf_counter()
    api = b.score_mc(reqs)
    took = time.perf_counter() - t0
    assert b.resolved_scoring == "forced", b.probe_report  # this server's echo is one position late
    assert all((a.n_tokens == h.n_tokens).all() for a, h in zip(api, hf))  # the same tokenization
    diff = np.abs(np.concatenate([a.logprobs - h.logprobs for a, h in zip(api, hf)]))
    agree = np.mean([np.argmax(a.logprobs) == np.argmax(h.logprobs) for a, h in zip(api, hf)])
    print(f"\n[{label} vs hf] {len(reqs)} items, {len(diff)} options: max|dlogprob| {diff.max():.4f}, "
          f"mean {diff.mean():.4f}, predictions agree {agree:.3f}; {b.requests_sent} requests in {took:.1f} s")
    return diff, agree, api, hf


@pytest.mark.slow
def test_embedded_gguf_agrees_with_the_hf_backend(server, items, embedded_backend):
    # one request at a time: two in flight are batched together by the server, and llama.cpp's
    # numbers can then depend on the batching (the likely cause: under a loaded run one prediction of six
    # flipped, max |dlogprob| 0.59, in two suites of sessions 8 and 9; alone it always agreed)
    diff, agree, api, hf = _compare(server.url, items, embedded_backend, "llama.cpp Q4_1", concurrency=1)
    assert diff.max() < Q4_1_TOL and agree == 1.0
    assert all((a.is_greedy == h.is_greedy).all() for a, h in zip(api, hf))


@pytest.mark.slow
def test_same_weights_in_f32_agree_exactly(server_f32, items, embedded_backend):
    diff, agree, _, _ = _compare(server_f32.url, items, embedded_backend, "llama.cpp F32")
    assert diff.max() < F32_TOL and agree == 1.0


@pytest.mark.slow
def test_echo_reports_the_next_positions_logprob(server_f32, embedded_backend):
    """The diagnosis, as a regression test: echoed value j == log p(next = t_j | t_0..t_j)."""
    import torch

    text = "Question: What is the capital of France?\nAnswer: Paris"
    tok, model = embedded_backend.tokenizer, embedded_backend.model
    ids = tok(text, add_special_tokens=False).input_ids
    with torch.inference_mode():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)  # (t, vocab)
    right = np.array([lp[j - 1, ids[j]].item() for j in range(1, len(ids))])
    shifted = np.array([lp[j, ids[j]].item() for j in range(1, len(ids))])
    b = _backend(server_f32.url, scoring="echo")
    data = b.client.session(lambda http: b.client.completion(http, {"prompt": text, "max_tokens": 1, "echo": True,
                                                                    "logprobs": 1, "temperature": 0.0}))
    echoed = np.array(data["choices"][0]["logprobs"]["token_logprobs"][1:len(ids)], dtype=float)
    assert np.abs(echoed - shifted).max() < F32_TOL
    assert np.abs(echoed - right).max() > 1.0
    assert b.probe_report == {} and _backend(server_f32.url).resolved_scoring == "forced"


@pytest.mark.slow
def test_greedy_answers_agree_with_the_hf_backend(server_f32, items, embedded_backend):
    # with the server's default repeat_penalty=1.1, the first came back different
    questions = [items[1].question, items[2].question]
    prompts = [embedded_backend.apply_chat_template(q) for q in questions]
    hf = embedded_backend.generate(prompts, max_new_tokens=8, temperature=0.0, top_k=5)
    # the templated text through /completions, and the plain question through /chat/completions
    comp = _backend(server_f32.url, scoring="forced", generate_endpoint="completions").generate(prompts, max_new_tokens=8)
    chat = _backend(server_f32.url, scoring="forced").generate(questions, max_new_tokens=8)
    for h, c, ch in zip(hf, comp, chat):
        assert c[0].text == h[0].text == ch[0].text
        n = min(len(c[0].token_logprobs), len(h[0].token_logprobs))
        assert n > 0 and np.abs(c[0].token_logprobs[:n] - h[0].token_logprobs[:n]).max() < F32_TOL
        assert np.abs(ch[0].token_logprobs[:n] - c[0].token_logprobs[:n]).max() < F32_TOL


@pytest.mark.slow
def test_open_answers_and_signals_through_the_server_agree_with_the_hf_backend(server_f32, embedded_backend):
    """An open-ended run through the chat endpoint (the server applies the GGUF's chat template,
    the multi-turn verbalized question included) gives the HF backend's answers and signals."""
    from llmcal.pipeline.measure_open import OpenSettings, answer_batch
    from llmcal.tasks.registry import load_task

    items = load_task("builtin_open", limit=4)
    s = OpenSettings(families=("tokens", "ptrue", "verbalized"))
    api = answer_batch(_backend(server_f32.url), items, s)
    hf = answer_batch(embedded_backend, items, s)
    assert isinstance(api[0].prompt, list) and api[0].prompt[0]["role"] == "user"  # the server templates
    for a, h in zip(api, hf):
        assert a.prediction_text == h.prediction_text and a.correct == h.correct
        assert a.extra["replies"]["verbalized"] == h.extra["replies"]["verbalized"]
        for name in ("seq_prob", "mean_token_prob", "min_token_prob", "ptrue"):
            assert abs(a.signals[name] - h.signals[name]) < 0.01, (name, a.signals, h.signals)


@pytest.mark.slow
def test_server_killed_mid_run_and_resumed(server, items, tmp_path):
    """Runs last: kills the module's Q4_1 server mid-run, restarts it on the same port, resumes."""
    from llmcal.pipeline.measure import measure
    from llmcal.records.run_dir import RunDir

    run = RunDir(tmp_path / "run")
    run.start({"model": "openai"}, ["model"])

    def killer():  # kill the server once a chunk is in, in the middle of the next
        while not run.samples_path.exists() or run.samples_path.read_bytes().count(b"\n") < 2:
            time.sleep(0.01)
        server.kill()

    threading.Thread(target=killer, daemon=True).start()
    with pytest.raises(ServerUnavailable, match=f"127.0.0.1:{server.port}"):
        measure(run, items, lambda: _backend(server.url, scoring="forced"), chunk=2, progress=False)
    kept = run.read_samples()
    assert 0 < len(kept) < len(items)
    server.proc = LlamaServer(server.port).proc  # back on the same address (the fixture stops it)
    measure(run, items, lambda: _backend(server.url, scoring="forced"), chunk=2, progress=False)
    ids = [s.id for s in run.read_samples()]
    assert sorted(ids) == sorted(it.id for it in items) and len(ids) == len(set(ids))
