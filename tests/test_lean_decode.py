"""The lean decode loop and the oneDNN linear path against the paths they replace (issue #17).

A tiny random Llama with a character-level tokenizer, built here: the lean loop must give
the greedy answers and token log-probs of transformers' ``generate`` (1e-4 in fp32), the
same samples under the same seed, and reuse prompts and the shared prefix; the oneDNN
linear path must be exact and the flag must turn it off.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

PREFIX = "<|sys|> you are a careful assistant. answer briefly.\n"
QUESTIONS = ["what is two plus two?", "name a colour", "capital of france?", "x", "spell cat backwards, please"]


def _tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, "<unk>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789 .,?:!\n<>|_":
        vocab.setdefault(c, len(vocab))
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    t.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<eos>", unk_token="<unk>", pad_token="<eos>")


@pytest.fixture(scope="module")
def backend():
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmcal.backends.hf import HFBackend

    tok = _tokenizer()
    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # a peaked output whose answers end ("\n") after 10-11 tokens or run to the limit
        model.lm_head.weight.normal_(0, 2.0 / 48 ** 0.5)
        model.lm_head.weight[[0, tok.convert_tokens_to_ids("\n")]] += 0.1
    return HFBackend(model, tok, "tiny")


def _prompts():
    return [PREFIX + q + "\n>" for q in QUESTIONS]


def _generate(backend, monkeypatch, path, **kw):
    from llmcal.backends.hf_generation import generate_hf
    from llmcal.backends.lean_decode import prompt_cache

    monkeypatch.setenv("LLMCAL_DECODE", path)
    prompt_cache(backend).clear()
    return generate_hf(backend, _prompts(), **kw)


def _same(a, b, tol=1e-4):
    for ga, gb in zip(a, b):
        for x, y in zip(ga, gb):
            assert x.text == y.text and x.token_ids == y.token_ids and x.finish_reason == y.finish_reason
            assert np.max(np.abs(x.token_logprobs - y.token_logprobs), initial=0) <= tol
            assert np.max(np.abs(x.entropies - y.entropies), initial=0) <= tol
            assert [t for t, _ in x.top_logprobs[0]] == [t for t, _ in y.top_logprobs[0]]


@pytest.mark.parametrize("stop", [("\n",), ()])
def test_greedy_equals_generate(backend, monkeypatch, stop):
    ref = _generate(backend, monkeypatch, "generate", max_new_tokens=12, stop=stop)
    lean = _generate(backend, monkeypatch, "lean", max_new_tokens=12, stop=stop)
    _same(ref, lean)
    finishes = {g[0].finish_reason for g in lean}
    assert finishes == {"stop", "length"} if stop else "length" in finishes  # both endings were exercised


def _count_groups(monkeypatch):
    """Record the size of each group of prompts that starts decoding, and each join to a running batch."""
    from llmcal.backends import lean_decode

    seen = {"groups": [], "joins": 0}
    start, join = lean_decode._start, lean_decode._join

    def counted_start(model, store, encoded, *a, **k):
        seen["groups"].append(len(encoded))
        return start(model, store, encoded, *a, **k)

    def counted_join(*a, **k):
        seen["joins"] += 1
        return join(*a, **k)

    monkeypatch.setattr(lean_decode, "_start", counted_start)
    monkeypatch.setattr(lean_decode, "_join", counted_join)
    return seen


@pytest.mark.parametrize("rows", [1, 2, 3])
@pytest.mark.parametrize("stop", [("\n",), ()])
def test_continuous_batching_gives_the_answers_of_one_batch(backend, monkeypatch, rows, stop):
    """Fewer decode rows than prompts: prompts join the batch as rows finish (continuous batching),
    and every answer, log-prob and entropy is that of ``generate`` on the whole batch (1e-4, fp32)."""
    ref = _generate(backend, monkeypatch, "generate", max_new_tokens=12, stop=stop)
    seen = _count_groups(monkeypatch)
    monkeypatch.setattr(backend, "decode_rows", rows)
    lean = _generate(backend, monkeypatch, "lean", max_new_tokens=12, stop=stop)
    _same(ref, lean)
    assert sum(seen["groups"]) == len(QUESTIONS) and max(seen["groups"]) <= rows
    if rows == 2 and stop:  # these rows end at different steps: waiting prompts joined a running batch
        assert seen["joins"] >= 1
    assert all(len(g[0].token_logprobs) <= 12 for g in lean)


def test_continuous_batching_of_samples_is_reproducible_and_from_the_model(backend, monkeypatch):
    """k samples a prompt with room for two prompts' samples at a time: a seed reproduces them, and
    each sample's log-probs are the model's own, rescored (the joined cache holds the right keys)."""
    kw = dict(max_new_tokens=16, temperature=1.2, n=2, seed=11, stop=("\n",))
    seen = _count_groups(monkeypatch)
    monkeypatch.setattr(backend, "decode_rows", 4)
    a = _generate(backend, monkeypatch, "lean", **kw)
    assert max(seen["groups"]) <= 2 and seen["joins"] >= 1
    _same(a, _generate(backend, monkeypatch, "lean", **kw), tol=0)
    tok = backend.tokenizer
    for p, gens in zip(_prompts(), a):
        ids = tok(p, add_special_tokens=False).input_ids
        for g in gens:
            with torch.inference_mode():
                logp = torch.log_softmax(backend.model(torch.tensor([ids + g.token_ids])).logits[0].float(), -1)
            want = [float(logp[len(ids) - 1 + s, t]) for s, t in enumerate(g.token_ids)]
            assert np.allclose(g.token_logprobs[: len(want)], want, atol=1e-4)


def test_samples_reproducible_and_from_the_model(backend, monkeypatch):
    kw = dict(max_new_tokens=10, temperature=0.8, n=4, seed=11, stop=("\n",))
    a = _generate(backend, monkeypatch, "lean", **kw)
    b = _generate(backend, monkeypatch, "lean", **kw)
    _same(a, b, tol=0)
    assert all(len(g) == 4 for g in a)
    assert len({x.text for g in a for x in g}) > len(QUESTIONS)  # the samples differ
    c = _generate(backend, monkeypatch, "lean", **{**kw, "seed": 12})
    assert [x.text for g in c for x in g] != [x.text for g in a for x in g]
    # each sample's log-probs are the model's own (T = 1) log-probs of its tokens: rescore them
    tok = backend.tokenizer
    g = a[0][1]
    ids = tok(_prompts()[0], add_special_tokens=False).input_ids
    with torch.inference_mode():
        logp = torch.log_softmax(backend.model(torch.tensor([ids + g.token_ids])).logits[0].float(), -1)
    want = [float(logp[len(ids) - 1 + s, t]) for s, t in enumerate(g.token_ids)]
    assert np.allclose(g.token_logprobs[: len(want)], want, atol=1e-4)


def test_sampler_draws_from_the_tempered_distribution():
    """The lean loop's sampler: frequencies of 40,000 draws match softmax(logits / T) within 4.5
    standard errors, a zero-probability token is never drawn, and a seed reproduces the draws."""
    from llmcal.backends.lean_decode import sample_rows

    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, float("-inf"), 0.5])  # (vocab,)
    t, n = 0.8, 40000
    want = torch.softmax(logits / t, dim=-1).double()
    draws = sample_rows(logits.expand(n, -1), t, torch.Generator().manual_seed(1))  # (n,)
    freq = torch.bincount(draws, minlength=len(logits)).double() / n
    assert freq[4] == 0
    se = (want * (1 - want) / n).sqrt()
    assert torch.all((freq - want).abs() <= 4.5 * se + 1e-12)
    again = sample_rows(logits.expand(n, -1), t, torch.Generator().manual_seed(1))
    other = sample_rows(logits.expand(n, -1), t, torch.Generator().manual_seed(2))
    assert torch.equal(draws, again) and not torch.equal(draws, other)


def test_prompt_cache_and_fork_reuse_the_prefill(backend, monkeypatch):
    from llmcal.backends.hf_generation import generate_hf
    from llmcal.backends.lean_decode import prompt_cache

    monkeypatch.setenv("LLMCAL_DECODE", "lean")
    store = prompt_cache(backend)
    store.clear()
    greedy = generate_hf(backend, _prompts(), max_new_tokens=8)
    assert store.misses == len(QUESTIONS) and store.hits == 0
    assert len(store.prefixes) == 1 and len(next(iter(store.prefixes))) >= len(PREFIX)  # the shared prefix
    sampled = generate_hf(backend, _prompts(), max_new_tokens=8, temperature=0.8, n=3, seed=5)
    assert store.hits == len(QUESTIONS)  # the samples started from the greedy call's prefill
    fresh = _generate(backend, monkeypatch, "lean", max_new_tokens=8, temperature=0.8, n=3, seed=5)
    _same(sampled, fresh)  # reused cache = a fresh prefill
    _same(greedy, _generate(backend, monkeypatch, "generate", max_new_tokens=8))
    monkeypatch.setenv("LLMCAL_DECODE", "lean")
    store = prompt_cache(backend)
    generate_hf(backend, _prompts(), max_new_tokens=8)
    store.forget_prompts()  # the benchmarks' reset after a warm-up: prompts go, the shared prefix stays
    assert not store.prompts and store._bytes == 0 and len(store.prefixes) == 1
    with torch.no_grad():  # changed weights empty the cache
        backend.model.lm_head.weight.mul_(1.0)
    assert not prompt_cache(backend).prompts


def test_follow_up_prompts_reuse_the_earlier_prompt(backend, monkeypatch):
    """A follow-up that quotes an earlier prompt and its greedy answer (the verbalized question)
    prefills only what follows the answer's tokens, with the numbers of a fresh prefill."""
    from llmcal.backends.hf_generation import generate_hf
    from llmcal.backends.lean_decode import _known_part, prompt_cache

    first = _generate(backend, monkeypatch, "lean", max_new_tokens=6)
    follow = [p + g[0].text + "\nhow sure are you?\n>" for p, g in zip(_prompts(), first)]
    def ids(text):
        return backend.tokenizer(text, add_special_tokens=False).input_ids

    beyond = 0
    for p, f, g in zip(_prompts(), follow, first):
        known = _known_part(prompt_cache(backend), ids(f))[0]
        answer = g[0].token_ids
        assert known >= len(ids(p))
        if answer and ids(p + g[0].text) == ids(p) + answer:  # the quoted answer tokenizes as generated:
            assert known >= len(ids(p)) + len(answer) - 1  # all but (at most) its last token are reused
            beyond += 1
    assert beyond >= 1  # the case was exercised
    lean = generate_hf(backend, follow, max_new_tokens=8)
    monkeypatch.setenv("LLMCAL_DECODE", "generate")
    _same(generate_hf(backend, follow, max_new_tokens=8), lean)


@pytest.mark.parametrize("rows", [None, 2])
def test_next_token_logprobs_reuse_the_answer_and_equal_a_fresh_score(backend, monkeypatch, rows):
    """The follow-up P(True) path: after the greedy answers, the follow-up prompt's next-token
    log-probs reuse the answers' keys/values (only what follows them is prefilled) and equal the
    packed scorer's log-probs of the same one-token continuations on an empty cache (1e-4, fp32);
    also when the answers were decoded two rows at a time (continuous batching)."""
    from llmcal.backends.lean_decode import _known_part, prompt_cache
    from llmcal.core.requests import MCRequest

    if rows:
        monkeypatch.setattr(backend, "decode_rows", rows)
    first = _generate(backend, monkeypatch, "lean", max_new_tokens=6)
    follow = [p + g[0].text + "\nis it right? a or b\n>" for p, g in zip(_prompts(), first)]
    ids = [backend.tokenizer(f, add_special_tokens=False).input_ids for f in follow]
    answer_lens = [len(backend.tokenizer(p, add_special_tokens=False).input_ids) + len(g[0].token_ids) - 1
                   for p, g in zip(_prompts(), first)]
    store = prompt_cache(backend)
    known = [_known_part(store, x)[0] for x in ids]
    assert sum(k >= n for k, n in zip(known, answer_lens)) >= 1  # the answers' keys/values are reused
    misses = store.misses
    got = backend.next_token_logprobs(follow, ("a", "b"))  # (5, 2)
    assert got.shape == (len(follow), 2) and store.misses == misses + len(follow)
    again = backend.next_token_logprobs(follow, ("a", "b"))  # now every prompt is stored: no prefill
    assert store.hits >= len(follow)
    np.testing.assert_allclose(again, got, rtol=0, atol=1e-6)
    store.clear()
    want = np.array([sc.logprobs for sc in backend.score_mc([MCRequest(f, ("a", "b")) for f in follow])])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    assert np.all(got < 0) and np.ptp(got) > 1e-3  # real log-probs that differ between prompts


def test_next_token_logprobs_refuse_what_is_not_one_token(backend):
    with pytest.raises(ValueError, match="'ab' is 2 tokens"):
        backend.next_token_logprobs(["x"], ("a", "ab"))
    with pytest.raises(ValueError, match="share a token"):
        backend.next_token_logprobs(["x"], ("a", "a"))


def test_cancel_event_stops_every_row(backend, monkeypatch):
    import threading

    from llmcal.backends.hf_generation import stop_when

    event = threading.Event()
    event.set()
    with stop_when(event):
        out = _generate(backend, monkeypatch, "lean", max_new_tokens=20, stop=())
    assert all(len(g[0].token_logprobs) <= 1 for g in out)


def _need(kernel):
    from llmcal.backends import fast_linear

    if not fast_linear.kernel_available(kernel):
        pytest.skip(f"this torch build has no {kernel} kernel")


@pytest.mark.parametrize("kernel", ["onednn", "mkl"])
def test_packed_linear_exact_and_flag_turns_it_off(backend, monkeypatch, kernel):
    from llmcal.backends import fast_linear

    _need(kernel)
    model = backend.model
    ids = torch.tensor([[3, 5, 7, 9, 11, 13]])
    with torch.inference_mode():
        ref = torch.log_softmax(model(ids).logits, -1)
    assert fast_linear.enable_packed(model, kernel) == 2 * 7 + 1  # q k v o gate up down a layer, and lm_head
    try:
        assert fast_linear.onednn_enabled(model) and fast_linear.packed_kernel(model) == kernel
        with torch.inference_mode():
            got = torch.log_softmax(model(ids).logits, -1)
        assert float((got - ref).abs().max()) <= 1e-4 and bool((got.argmax(-1) == ref.argmax(-1)).all())
        # autograd (post-training) takes the default path, so gradients flow
        loss = model(ids).logits.sum()
        loss.backward()
        assert model.model.layers[0].self_attn.q_proj.weight.grad is not None
        model.zero_grad(set_to_none=True)
    finally:
        fast_linear.disable_onednn(model)
    assert not fast_linear.onednn_enabled(model)

    off = fast_linear.choose_matmul(model, "default")
    assert off == {"matmul": "default", "requested": "default", "reason": "turned off (matmul=default)"}
    monkeypatch.setenv("LLMCAL_MATMUL", "default")
    assert fast_linear.choose_matmul(model)["matmul"] == "default" and not fast_linear.onednn_enabled(model)
    forced = fast_linear.choose_matmul(model, kernel)
    try:
        assert forced["matmul"] == kernel and forced["exact"] and forced["max_delta_logprob"] <= 1e-4
        assert forced["checked"] == kernel and fast_linear.packed_kernel(model) == kernel
        assert forced["default_gflops"] > 0 and forced[f"{kernel}_gflops"] > 0
    finally:
        fast_linear.disable_onednn(model)
    with pytest.raises(ValueError, match=r"--model_args matmul: unknown 'fast'; use one of auto, onednn, mkl, default"):
        fast_linear.choose_matmul(model, "fast")
    monkeypatch.setenv("LLMCAL_MATMUL", "amx")
    with pytest.raises(ValueError, match=r"LLMCAL_MATMUL: unknown 'amx'"):
        fast_linear.requested_mode(None)


def test_auto_takes_the_fastest_exact_kernel_and_falls_back_when_it_is_not_exact(backend, monkeypatch, tmp_path):
    """The probe's choice, with the timings and the check stubbed: the fastest kernel when exact; the
    other when the fastest is not; none when no kernel beats the default by 5 %."""
    from llmcal.backends import fast_linear

    for k in fast_linear.KERNELS:
        _need(k)
    monkeypatch.setenv("LLMCAL_CACHE_DIR", str(tmp_path))
    model = backend.model
    times = {None: 1.0, "onednn": 0.8, "mkl": 0.5}
    monkeypatch.setattr(fast_linear, "_time_shapes", lambda m, kernel, budget: (times[kernel], 1e9))
    exact = {"onednn": True, "mkl": True}
    monkeypatch.setattr(fast_linear, "exactness", lambda m, n_tokens=(12,), kernel="onednn", keep=False: {
        "max_delta_logprob": 0.0 if exact[kernel] else 1e-2, "same_argmax": True, "exact": exact[kernel]})
    try:
        got = fast_linear.choose_matmul(model, "auto")
        assert got["matmul"] == "mkl" and got["speedup"] == 2.0 and got["mkl_gflops"] == 2.0
        fast_linear.disable_onednn(model)
        exact["mkl"] = False
        got = fast_linear.choose_matmul(model, "auto")
        assert got["matmul"] == "onednn" and got["speedup"] == 1.25 and fast_linear.packed_kernel(model) == "onednn"
        fast_linear.disable_onednn(model)
        exact["onednn"] = False
        got = fast_linear.choose_matmul(model, "auto")
        assert got["matmul"] == "default" and "onednn is not exact" in got["reason"] and not fast_linear.onednn_enabled(model)
        (tmp_path / "matmul_probe.json").unlink()
        times.update({"onednn": 0.99, "mkl": 0.97})  # within 5 % of the default: not worth it
        got = fast_linear.choose_matmul(model, "auto")
        assert got["matmul"] == "default" and got["reason"] == "no packed kernel is faster on this CPU"
    finally:
        fast_linear.disable_onednn(model)


@pytest.mark.parametrize("kernel", ["onednn", "mkl"])
def test_packed_linear_falls_back_when_weights_change(backend, kernel):
    from llmcal.backends import fast_linear

    _need(kernel)
    model = backend.model
    lin = model.model.layers[0].mlp.down_proj
    x = torch.randn(3, lin.in_features)
    fast_linear.enable_packed(model, kernel)
    try:
        with torch.no_grad():
            lin.weight.add_(1.0)  # the packed copy is stale now
            want = torch.nn.functional.linear(x, lin.weight)
            assert torch.equal(lin(x), want)
            lin.weight.sub_(1.0)
        lin.weight = torch.nn.Parameter(lin.weight.detach() * 2.0)  # replaced, as quantization may do
        with torch.no_grad():
            assert torch.equal(lin(x), torch.nn.functional.linear(x, lin.weight))
        lin.weight = torch.nn.Parameter(lin.weight.detach() / 2.0)
    finally:
        fast_linear.disable_onednn(model)


@pytest.mark.parametrize("kernel", ["onednn", "mkl"])
def test_a_model_on_a_packed_kernel_can_be_deep_copied_and_the_copy_is_exact(backend, kernel):
    """Quantization, post-training and the exports deep-copy a loaded model: oneDNN's packed weights
    cannot be copied, so the copy runs on the default path (and its in-place changes take effect)."""
    import copy

    from llmcal.backends import fast_linear

    _need(kernel)
    model = backend.model
    ids = torch.tensor([[3, 5, 7, 9, 11, 13]])
    fast_linear.enable_packed(model, kernel)
    try:
        twin = copy.deepcopy(model)
        with torch.inference_mode():
            a, b = model(ids).logits, twin(ids).logits
        assert float((a - b).abs().max()) <= 1e-4
        lin = twin.model.layers[0].mlp.down_proj
        x = torch.randn(2, lin.in_features)
        with torch.no_grad():
            lin.weight.mul_(0.5)  # the copy's own change is what it computes with
            assert torch.equal(lin(x), torch.nn.functional.linear(x, lin.weight))
        assert fast_linear.onednn_enabled(model)  # the original keeps its packed weights
    finally:
        fast_linear.disable_onednn(model)


@pytest.mark.slow
def test_embedded_model_lean_equals_generate(embedded_backend, monkeypatch):
    """The real model, real chat prompts: the lean loop's greedy answers are ``generate``'s."""
    from llmcal.backends.hf_generation import generate_hf
    from llmcal.backends.lean_decode import prompt_cache

    b = embedded_backend
    prompts = [b.apply_chat_template(q) for q in ("What is the capital of France?", "What is 7 times 6?",
                                                  "Name the largest planet.")]
    got = {}
    for path in ("generate", "lean"):
        monkeypatch.setenv("LLMCAL_DECODE", path)
        prompt_cache(b).clear()
        got[path] = generate_hf(b, prompts, max_new_tokens=16, stop=("\n",))
    _same(got["generate"], got["lean"])
    assert all(g[0].text for g in got["lean"])


@pytest.mark.slow
def test_embedded_model_verbalized_follow_up_reuses_the_answer(embedded_backend, monkeypatch):
    """The verbalized follow-up (chat template, the greedy answer quoted) prefills from after the
    answer's tokens, and its replies and log-probs are those of a fresh ``generate``."""
    from llmcal.backends.hf_generation import generate_hf
    from llmcal.backends.lean_decode import _known_part, prompt_cache
    from llmcal.signals.verbalized import SCALES

    b = embedded_backend
    questions = ("What is the capital of France?", "Who wrote Hamlet?", "Name the largest planet.")
    monkeypatch.setenv("LLMCAL_DECODE", "lean")
    prompt_cache(b).clear()
    answers = generate_hf(b, [b.apply_chat_template(q) for q in questions], max_new_tokens=16, stop=("\n",))
    follow = [b.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": g[0].text},
                                     {"role": "user", "content": SCALES["1-10"]}]) for q, g in zip(questions, answers)]
    ids = [b.tokenizer(f, add_special_tokens=False).input_ids for f in follow]
    prompt_len = [len(b.tokenizer(b.apply_chat_template(q), add_special_tokens=False).input_ids) for q in questions]
    known = [_known_part(prompt_cache(b), x)[0] for x in ids]
    assert all(k >= p for k, p in zip(known, prompt_len))
    assert sum(k >= p + len(g[0].token_ids) - 1 for k, p, g in zip(known, prompt_len, answers)) >= 1
    lean = generate_hf(b, follow, max_new_tokens=12, stop=("\n",))
    monkeypatch.setenv("LLMCAL_DECODE", "generate")
    _same(generate_hf(b, follow, max_new_tokens=12, stop=("\n",)), lean)


def _ptrue_chat_reference(b, items, records, chat):
    """P(True) in the chat scored afresh (empty cache) by the packed scorer: what ptrue_chat must equal."""
    from llmcal.backends.lean_decode import prompt_cache
    from llmcal.core.requests import MCRequest
    from llmcal.signals.ptrue import CHAT_QUESTION, chat_candidates, ptrue_from_logprobs
    from llmcal.tasks.prompts import followup_messages, render

    template = b.apply_chat_template if chat else None
    texts = [render(followup_messages(it, r.prediction_text, CHAT_QUESTION), template) for it, r in zip(items, records)]
    prompt_cache(b).clear()
    scores = b.score_mc([MCRequest(t, chat_candidates(t)) for t in texts])
    return [ptrue_from_logprobs(*sc.logprobs) for sc in scores]


def test_ptrue_chat_without_one_token_candidates_scores_them(backend, monkeypatch):
    """The tiny tokenizer has no chat template and spells " True" in characters: the follow-up is
    plain text ending in ``Answer:`` and the two candidates are scored by the packed scorer."""
    from llmcal.core.items import OpenItem
    from llmcal.pipeline.measure_open import OpenSettings, answer_batch

    monkeypatch.setenv("LLMCAL_DECODE", "lean")
    items = [OpenItem(f"q{i}", "tiny", q, ("4",)) for i, q in enumerate(QUESTIONS)]
    records = answer_batch(backend, items, OpenSettings(families=("tokens", "ptrue_chat"), max_new_tokens=6))
    want = _ptrue_chat_reference(backend, items, records, chat=False)
    got = [r.signals["ptrue_chat"] for r in records]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert all(0 < v < 1 for v in got) and len(set(got)) > 1


@pytest.mark.slow
def test_embedded_model_ptrue_chat_reuses_the_answer_and_equals_a_fresh_score(embedded_backend, monkeypatch):
    """The real model and chat template: ptrue_chat asks right after the greedy call, reads the
    reply's first token ("True" / "False", one token each) from the cached answers, and equals the
    packed scorer's P(True) on the same follow-up prompt with an empty cache (1e-4 in log-prob)."""
    from llmcal.backends.lean_decode import prompt_cache
    from llmcal.core.items import OpenItem
    from llmcal.pipeline.measure_open import OpenSettings, answer_batch

    b = embedded_backend
    monkeypatch.setenv("LLMCAL_DECODE", "lean")
    prompt_cache(b).clear()
    items = [OpenItem("a", "t", "What is the capital of France?", ("Paris",)),
             OpenItem("b", "t", "Who wrote Hamlet?", ("Shakespeare",)),
             OpenItem("c", "t", "Name the largest planet.", ("Jupiter",))]
    store = prompt_cache(b)
    records = answer_batch(b, items, OpenSettings(families=("tokens", "ptrue_chat"), max_new_tokens=16))
    assert len(store.answers) >= 1  # the greedy call kept its answers for the follow-up
    got = np.array([r.signals["ptrue_chat"] for r in records])
    want = np.array(_ptrue_chat_reference(b, items, records, chat=True))
    logit = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731  the log-prob difference True - False
    np.testing.assert_allclose(logit(got), logit(want), rtol=0, atol=1e-4)
    assert b.next_token_logprobs(["Hi"], ("True", "False")).shape == (1, 2)  # one token each: the cached path ran


def test_the_speed_probe_is_timed_once_per_machine(backend, monkeypatch, tmp_path):
    """The timings depend on the CPU, torch and the shapes only: the second load reads them back."""
    import json

    from llmcal.backends import fast_linear

    monkeypatch.setenv("LLMCAL_CACHE_DIR", str(tmp_path / "cache"))
    first = fast_linear.choose_matmul(backend.model, "auto")
    fast_linear.disable_onednn(backend.model)
    second = fast_linear.choose_matmul(backend.model, "auto")
    fast_linear.disable_onednn(backend.model)
    assert first["probe"] == "measured" and second["probe"] == "cached"
    kernels = [k for k in fast_linear.KERNELS if fast_linear.kernel_available(k)]
    for k in ["speedup", "matmul", "default_gflops"] + [f"{k}_gflops" for k in kernels]:
        assert first[k] == second[k], k
    stored = json.loads((tmp_path / "cache" / "matmul_probe.json").read_text())
    (key, entry), = stored.items()
    assert "torch" in key and set(entry) == {"t_default", "flops"} | {f"t_{k}" for k in kernels}
    # VMs of two CPU generations can share a "model name" ("AMD EPYC" on Zen 3 and on Zen 5):
    # the key names the family, model and vector extensions, so one's timings are not read on the other
    assert " family " in key and " model " in key
    try:
        flags = next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        flags = []
    assert all(f in key.split("|")[0].split() for f in flags if f.startswith("avx"))


def test_decode_rows_is_a_model_arg_and_is_described(backend):
    from llmcal.backends.hf import HFBackend
    from llmcal.backends.lean_decode import DECODE_ROWS
    from llmcal.backends.model_args import parse_model_args

    assert parse_model_args("decode_rows=8") == {"decode_rows": 8}
    assert backend.decode_rows == DECODE_ROWS and backend.describe()["decode_rows"] == DECODE_ROWS
    assert HFBackend(backend.model, backend.tokenizer, "tiny", decode_rows=3).describe()["decode_rows"] == 3
    assert HFBackend(backend.model, backend.tokenizer, "tiny", decode_rows=0).decode_rows == 1


def test_end_token_ids_are_kept_and_follow_a_changed_generation_config(backend):
    from llmcal.backends.hf_generation import end_token_ids

    cfg = backend.model.generation_config
    before = cfg.eos_token_id
    first = end_token_ids(backend)
    assert first == end_token_ids(backend) and 0 in first
    try:
        cfg.eos_token_id = [0, 5]
        assert end_token_ids(backend)[:2] == [0, 5]
    finally:
        cfg.eos_token_id = before
    assert end_token_ids(backend) == first


@pytest.mark.parametrize("dense_call", [True, False], ids=["linear_pointwise", "mkldnn_linear"])
def test_onednn_kernel_with_a_bias_matches_f_linear_by_either_call(monkeypatch, dense_call):
    """oneDNN runs through the dense-in, dense-out ``_linear_pointwise`` where torch has it, else through
    ``mkldnn_linear`` with conversions; both give F.linear's values, bias included, for any row count
    (the weight is packed for 16 rows, a hint only)."""
    from llmcal.backends import fast_linear

    _need("onednn")
    if dense_call and not fast_linear._pointwise_available():
        pytest.skip("this torch build has no mkldnn._linear_pointwise")
    monkeypatch.setattr(fast_linear, "_pointwise_available", lambda: dense_call)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.Linear(40, 8, bias=False))
    assert fast_linear.enable_packed(model, "onednn") == 2
    try:
        for rows in (1, 5, 16, 37):
            x = torch.randn(rows, 24)
            with torch.inference_mode():
                got = model(x)
                want = torch.nn.functional.linear(torch.nn.functional.linear(x, model[0].weight, model[0].bias),
                                                  model[1].weight)
            assert got.shape == (rows, 8) and got.layout == torch.strided
            assert float((got - want).abs().max()) <= 1e-5
    finally:
        fast_linear.disable_onednn(model)
