"""One contract, every backend: what :class:`~llmcal.backends.base.Backend` promises the pipeline.

The same tests run against

* ``hf``: a tiny random-weight Llama (built here, saved, loaded back through
  ``load_backend("hf", pretrained=DIR)``) with a byte-level tokenizer and a
  chat template;
* ``openai`` on the fake OpenAI-compatible server of ``test_openai_backend.py``,
  on its chat endpoint and on ``/completions``;
* ``openai`` on llama-cpp-python's real server with the embedded GGUF, where
  ``llama-cpp-python[server]`` is installed (skipped, saying why, elsewhere);
* ``toy``: a third-party backend found through the ``llmcal.backends``
  entry-point group, declaring only ``score`` (so every default refusal is
  exercised).

The contract: ``score_mc`` gives one :class:`MCScore` per request with finite
log-likelihoods <= 0 and at least one token per option; ``generate`` gives
``n`` :class:`Generation` s per prompt whose per-token evidence lines up; the
declared capabilities work and the others raise
:class:`BackendCapabilityError`; ``fingerprint()`` is stable and
JSON-serializable; ``describe()`` names the backend.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import math
import subprocess
import sys
import types

import numpy as np
import pytest

from llmcal.backends import (CAPABILITIES, Backend, BackendCapabilityError, available_backends, backend_class,
                             load_backend, parse_backend_args)
from llmcal.core.requests import Generation, MCRequest, MCScore

REQUESTS = [
    MCRequest("Question: What is the capital of France?\nAnswer:", (" Paris", " Lyon", " Marseille city")),
    MCRequest("Question: 2 + 2 =\nAnswer: ", ("4", "five")),
]
PROMPTS = ["Question: What colour is the sky?\nAnswer:", "Question: Name a fruit.\nAnswer:"]
CHAT = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"


# ------------------------------------------------------------------ a plug-in backend
class ToyBackend(Backend):
    """Every byte equally likely: a backend that scores and does nothing else."""

    name = "toy"
    capabilities = frozenset({"score"})

    def __init__(self, alphabet: int = 256) -> None:
        self.alphabet = int(alphabet)
        self.model_name = f"uniform over {self.alphabet} bytes"

    @classmethod
    def load(cls, alphabet: int = 256) -> "ToyBackend":
        return cls(alphabet)

    def score_mc(self, requests, progress=None):
        out = []
        for r in requests:
            n = np.array([max(len(c.encode()), 1) for c in r.continuations])
            out.append(MCScore(logprobs=-n * math.log(self.alphabet), n_tokens=n, is_greedy=np.zeros(len(n), bool)))
            if progress:
                progress(1)
        return out

    def fingerprint(self) -> str:
        return hashlib.sha256(f"toy|{self.alphabet}".encode()).hexdigest()[:16]

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model_name, "alphabet": self.alphabet}


class NotABackend:
    pass


def _patch_entry_points(mp: pytest.MonkeyPatch) -> None:
    """Install ``toy`` (and two bad plug-ins) under ``llmcal.backends``, as a package's metadata would."""
    module = types.ModuleType("llmcal_toy_backend")
    module.ToyBackend, module.NotABackend = ToyBackend, NotABackend
    mp.setitem(sys.modules, "llmcal_toy_backend", module)
    eps = [importlib.metadata.EntryPoint("toy", "llmcal_toy_backend:ToyBackend", "llmcal.backends"),
           importlib.metadata.EntryPoint("broken", "llmcal_toy_backend:NotABackend", "llmcal.backends"),
           importlib.metadata.EntryPoint("hf", "llmcal_toy_backend:ToyBackend", "llmcal.backends"),
           importlib.metadata.EntryPoint("other", "somewhere:Else", "some.other.group")]
    real = importlib.metadata.entry_points

    def entry_points(**select):
        if select.get("group") == "llmcal.backends":
            return [ep for ep in eps if ep.group == "llmcal.backends"]
        return real(**select)

    mp.setattr(importlib.metadata, "entry_points", entry_points)


# ------------------------------------------------------------------ the backends under test
def _tiny_llama_dir(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from llmcal.posttrain.tiny import tiny_tokenizer

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=258, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                   tie_word_embeddings=True, eos_token_id=256, pad_token_id=257, bos_token_id=None)
    folder = tmp_path_factory.mktemp("tiny-llama")
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    tok = tiny_tokenizer()
    tok.chat_template = CHAT
    tok.save_pretrained(folder)
    return folder


def _fake_openai(**kw):
    from test_openai_backend import FakeLM, mock_transport  # tests/ is on sys.path

    from llmcal.backends.openai import RetryPolicy

    async def no_sleep(_):
        return None

    return load_backend("openai", base_url="http://fake.test/v1", model="fake-model",
                        transport=mock_transport(FakeLM()), sleep=no_sleep,
                        retry=RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.02), **kw)


@pytest.fixture(scope="module", params=["hf", "openai-fake", "openai-fake-completions", "openai-llamacpp", "toy"])
def backend(request, tmp_path_factory):
    kind = request.param
    if kind == "hf":
        yield load_backend("hf", pretrained=str(_tiny_llama_dir(tmp_path_factory)))
    elif kind == "openai-fake":
        yield _fake_openai()
    elif kind == "openai-fake-completions":
        yield _fake_openai(generate_endpoint="completions")
    elif kind == "openai-llamacpp":
        if not all(importlib.util.find_spec(m) for m in ("llama_cpp", "sse_starlette", "starlette_context")):
            pytest.skip("llama-cpp-python[server] is not installed (docs/openai_backend.md builds it)")
        from test_openai_backend_llamacpp import LlamaServer

        srv = LlamaServer()
        try:
            yield load_backend("openai", base_url=srv.url, model="smollm2", concurrency=2, timeout=60)
        finally:
            srv.kill()
    else:
        with pytest.MonkeyPatch.context() as mp:
            _patch_entry_points(mp)
            yield load_backend("toy")


def _gens(backend, prompts, **kw):
    return backend.generate(prompts, **{"max_new_tokens": 4, "top_k": 3, **kw})


# ------------------------------------------------------------------ the contract
def test_score_mc_gives_one_finite_score_per_request(backend):
    backend.require("score", "this test")  # every backend here scores
    seen = []
    scores = backend.score_mc(REQUESTS, progress=seen.append)
    assert len(scores) == len(REQUESTS) and sum(seen) == len(REQUESTS)
    for req, s in zip(REQUESTS, scores):
        k = len(req.continuations)
        assert isinstance(s, MCScore)
        assert s.logprobs.shape == (k,) and s.n_tokens.shape == (k,) and s.is_greedy.shape == (k,)
        assert np.isfinite(s.logprobs).all() and (s.logprobs <= 0).all()
        assert (s.n_tokens >= 1).all() and s.is_greedy.dtype == bool
        assert s.hidden is None or "hidden_states" in backend.capabilities
    assert backend.score_mc([]) == []


def test_generate_gives_n_answers_per_prompt_with_lined_up_evidence(backend):
    if "generate" not in backend.capabilities:
        pytest.skip(f"{backend.name} does not declare generate (its refusal is checked below)")
    greedy = _gens(backend, PROMPTS)
    assert [len(g) for g in greedy] == [1, 1]
    sampled = _gens(backend, PROMPTS, temperature=0.7, n=2, seed=3)
    assert [len(g) for g in sampled] == [2, 2]
    for g in [x for row in greedy + sampled for x in row]:
        assert isinstance(g, Generation) and isinstance(g.text, str)
        n = len(g.token_logprobs)
        assert n >= 1 and g.entropies.shape == (n,) and len(g.top_logprobs) == n
        assert np.isfinite(g.token_logprobs).all() and (g.token_logprobs <= 1e-9).all()
        assert all(len(row) <= 3 for row in g.top_logprobs)
        if g.token_ids:  # servers that send no ids give none; where given, one per scored token
            assert len(g.token_ids) == n
        assert g.finish_reason in ("stop", "length")
    assert [g[0].text for g in _gens(backend, PROMPTS)] == [g[0].text for g in greedy]  # greedy is repeatable
    with pytest.raises(ValueError, match="n > 1"):
        _gens(backend, PROMPTS[:1], n=2)


def _exercise(backend, capability: str) -> None:
    """Use one capability the way the pipeline does."""
    if capability == "score":
        backend.score_mc(REQUESTS[:1])
    elif capability == "generate":
        _gens(backend, PROMPTS[:1], max_new_tokens=2)
    elif capability == "hidden_states":
        before = backend.hidden_layers
        backend.set_hidden_layers([-1])
        try:
            (s,) = backend.score_mc(REQUESTS[:1])
            assert s.hidden is not None and s.hidden.shape == (1, backend.hidden_size)
        finally:
            backend.set_hidden_layers(before)
    elif capability == "chat_template":
        text = backend.apply_chat_template([{"role": "user", "content": "Is the sky blue?"}])
        assert isinstance(text, str) and "Is the sky blue?" in text
        assert backend.apply_chat_template("Is the sky blue?") == text  # a string is one user message
    elif capability == "score_tokens":
        (g,) = _gens(backend, PROMPTS[:1], max_new_tokens=3)[0]
        lp = backend.score_tokens(PROMPTS[0], g.token_ids)
        assert lp.shape == (len(g.token_ids),) and np.allclose(lp, g.token_logprobs[:len(lp)], atol=1e-4)
    elif capability == "next_token":
        if "next_token" not in backend.capabilities:
            backend.next_token_logprobs([PROMPTS[0]], ("a",))  # refuses before touching anything
        (g,) = _gens(backend, PROMPTS[:1], max_new_tokens=2)[0]
        tok = backend.tokenizer.decode([g.token_ids[0]])
        lp = backend.next_token_logprobs([PROMPTS[0]], (tok,))  # the first generated token's own log-prob
        assert lp.shape == (1, 1) and abs(float(lp[0, 0]) - float(g.token_logprobs[0])) <= 1e-4
    elif capability == "messages":
        (row,) = _gens(backend, [[{"role": "user", "content": "Is the sky blue?"}]], max_new_tokens=2)
        assert len(row) == 1 and len(row[0].token_logprobs) >= 1
    else:  # pragma: no cover
        raise AssertionError(capability)


@pytest.mark.parametrize("capability", sorted(CAPABILITIES))
def test_capabilities_are_honest(backend, capability):
    cls = type(backend)
    assert backend.capabilities <= cls.capabilities <= set(CAPABILITIES)
    if capability in backend.capabilities:
        backend.require(capability, "this test")
        cls.require(capability, "this test")
        _exercise(backend, capability)
    else:
        with pytest.raises(BackendCapabilityError, match="this test"):
            backend.require(capability, "this test")
        with pytest.raises(BackendCapabilityError):
            _exercise(backend, capability)


def test_identity_is_stable_and_serializable(backend):
    fp = backend.fingerprint()
    assert isinstance(fp, str) and fp and fp == backend.fingerprint()
    json.dumps(fp)
    d = backend.describe()
    assert json.loads(json.dumps(d)) == d and d["backend"] == backend.name
    assert backend.name in available_backends() or backend.name == "toy"
    assert isinstance(backend.model_name, str) and backend.model_name
    for attr in ("n_layers", "hidden_size", "vocab_size"):
        v = getattr(backend, attr)
        assert v is None or (isinstance(v, int) and v > 0), (attr, v)
    assert ("hidden_states" in backend.capabilities) == (backend.n_layers is not None)
    n = backend.count_tokens("Paris is a city")
    assert n is None or (isinstance(n, int) and n >= 1)


# ------------------------------------------------------------------ the registry
def test_unknown_backend_names_the_known_ones():
    with pytest.raises(ValueError, match=r"'nope': unknown backend; known: hf, openai"):
        load_backend("nope")
    with pytest.raises(ValueError, match="known: hf, openai"):
        parse_backend_args("nope", "")


def test_a_plugin_is_found_through_the_entry_point_group(monkeypatch):
    _patch_entry_points(monkeypatch)
    assert available_backends() == ["hf", "openai", "broken", "toy"]
    assert backend_class("toy") is ToyBackend
    assert backend_class("hf").__module__ == "llmcal.backends.hf"  # a plug-in cannot take a built-in name
    b = load_backend("toy", alphabet=4)
    assert isinstance(b, ToyBackend) and b.alphabet == 4
    assert parse_backend_args("toy", "alphabet=16") == {"alphabet": 16}
    with pytest.raises(ValueError, match="unknown key 'size'"):
        parse_backend_args("toy", "size=3")
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'size'"):
        load_backend("toy", size=3)
    with pytest.raises(TypeError, match="not a subclass"):
        backend_class("broken")


def test_refusals_name_the_backend_the_need_and_the_way_out():
    with pytest.raises(BackendCapabilityError,
                       match="--model openai cannot give hidden states, which --probe needs; use --model hf"):
        backend_class("openai").require("hidden_states", "--probe")
    backend_class("hf").require("hidden_states", "--probe")
    assert issubclass(BackendCapabilityError, ValueError)  # the CLI reports it in one line
    with pytest.raises(ValueError, match="unknown 'wings'"):
        backend_class("hf").require("wings", "--fly")


def test_model_args_are_parsed_and_checked_per_backend():
    assert parse_backend_args("hf", "") == {"dtype": "float32"}
    assert parse_backend_args("hf", "pretrained=x,dtype=bf16") == {"pretrained": "x", "dtype": "bf16"}
    assert parse_backend_args("hf", "pretrained=x", dtype="bfloat16")["dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="dtype: unknown 'int3'"):
        parse_backend_args("hf", "dtype=int3")
    assert parse_backend_args("openai", "base_url=http://h/v1,concurrency=4") == {
        "base_url": "http://h/v1", "concurrency": 4, "dtype": "server"}
    with pytest.raises(ValueError, match="needs --model_args base_url"):
        parse_backend_args("openai", "model=m")
    # model args given as a dict (the Python API) follow the same rules; the string overrides them
    assert parse_backend_args("hf", "dtype=bf16", base={"pretrained": "x", "dtype": "float32"}) == {
        "pretrained": "x", "dtype": "bf16"}
    assert parse_backend_args("openai", None, base={"base_url": "http://h/v1"})["dtype"] == "server"
    with pytest.raises(ValueError, match="unknown key 'base_url'"):
        parse_backend_args("hf", "", base={"base_url": "http://h/v1"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'pretrained'"):
        load_backend("openai", base_url="http://h/v1", pretrained="x")
    with pytest.raises(ValueError, match="needs base_url"):
        load_backend("openai")


def test_choosing_a_backend_imports_neither_torch_nor_httpx():
    code = ("import sys; from llmcal.backends import backend_class, parse_backend_args, available_backends; "
            "available_backends(); backend_class('hf'); backend_class('openai'); parse_backend_args('hf', ''); "
            "parse_backend_args('openai', 'base_url=http://h/v1'); "
            "backend_class('openai').require('score', 'x'); "
            "print(sorted(m for m in ('torch', 'transformers', 'httpx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
