"""Gemma 3 in llmcal.quant: the (1 + w) norm fold, per-layer masks, and every method, on a tiny random Gemma 3.

Gemma3RMSNorm computes ``x_hat * (1 + w)`` (transformers' modeling_gemma3), so folding
1 / s into it must set ``w' = (1 + w) / s - 1``; its sliding-window layers get a banded
mask and local RoPE, every ``sliding_window_pattern``-th layer the full ones.  The model is
built here (no download); the real Gemma 3 270M is in tests/test_gemma_model.py.
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "Gemma3ForCausalLM"):
    pytest.skip("this transformers has no Gemma3ForCausalLM", allow_module_level=True)

from llmcal.quant import QuantArgs, Recipe  # noqa: E402
from llmcal.quant.mapping import GEMMA3, fold_scales, get_module, group_applies, resolve_mapping  # noqa: E402
from llmcal.quant.quantizer import quantize_model  # noqa: E402
from llmcal.quant.stats import capture_first_inputs, run_layer  # noqa: E402
from test_quant import _one_thread, logits  # noqa: E402,F401  (the autouse one-thread fixture)
from test_quant import samples as quant_samples  # noqa: E402


def tiny_gemma3(kv_heads: int = 4, seed: int = 0):
    """3 layers (sliding, sliding, full), a window of 4 tokens, norms away from zero."""
    torch.manual_seed(seed)
    cfg = transformers.Gemma3TextConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=kv_heads, head_dim=16, sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=128, query_pre_attn_scalar=16)
    model = transformers.Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():  # Gemma's norms are initialised at w = 0; real ones are not
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.5)
    return model


def samples(n: int = 4, t: int = 12, seed: int = 1):
    return quant_samples(n, t, seed)


def _fold_everywhere(model, offset_of):
    """Fold a random s (0.25-4) into every group of every layer; ``offset_of(group)`` the norm offset."""
    g = torch.Generator().manual_seed(7)
    folded = 0
    for layer in model.model.layers:
        for grp in GEMMA3.groups:
            if not group_applies(layer, grp):
                continue
            width = get_module(layer, grp.linears[0]).in_features
            s = torch.exp(torch.empty(width).uniform_(-1.4, 1.4, generator=g))  # (C,)
            fold_scales(get_module(layer, grp.prev), [get_module(layer, p) for p in grp.linears], s,
                        offset_of(grp))
            folded += 1
    return folded


def test_gemma3_resolves_by_model_type_and_matches_the_norm_convention():
    model = tiny_gemma3()
    assert model.config.model_type == "gemma3_text"
    assert resolve_mapping(model) is GEMMA3
    norm = model.model.layers[0].input_layernorm
    x = torch.randn(2, 5, 64)
    x_hat = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)
    # the convention the mapping's offset 1 encodes: y = x_hat * (1 + w)
    torch.testing.assert_close(norm(x), x_hat * (1.0 + norm.weight), rtol=1e-6, atol=1e-6)
    assert {g.prev: g.offset for g in GEMMA3.groups} == {
        "input_layernorm": 1.0, "self_attn.v_proj": 0.0, "pre_feedforward_layernorm": 1.0, "mlp.up_proj": 0.0}
    # post_attention_layernorm normalizes the attention output; it feeds no linear
    assert "post_attention_layernorm" not in {g.prev for g in GEMMA3.groups}


@pytest.mark.parametrize("kv_heads", [4, 1])
def test_smoothing_a_gemma3_leaves_its_float_function_unchanged(kv_heads):
    model = tiny_gemma3(kv_heads)
    xs = samples()
    ref = logits(model, xs)
    folded = _fold_everywhere(model, lambda g: g.offset)
    # v -> o applies with as many key-value heads as query heads, not under grouped-query attention
    assert folded == 3 * (4 if kv_heads == 4 else 3)
    torch.testing.assert_close(logits(model, xs), ref, rtol=1e-5, atol=1e-5)


def test_folding_as_if_the_norm_were_llamas_changes_gemma3():
    """The control: w' = w / s (offset 0) on a (1 + w) norm is not exact."""
    model = tiny_gemma3()
    xs = samples()
    ref = logits(model, xs)
    _fold_everywhere(model, lambda g: 0.0)
    assert float((logits(model, xs) - ref).abs().max()) > 1e-2


def test_layer_by_layer_replay_uses_each_layers_mask_and_rope():
    """Running the captured inputs through the layers one by one gives the model's own hidden states.

    With 12 tokens and a window of 4, the sliding layers' mask differs from the full layer's:
    replaying layer 0's kwargs everywhere would not match.
    """
    model = tiny_gemma3()
    xs = samples()
    layers = model.model.layers
    inputs = capture_first_inputs(model, layers, xs)
    assert inputs.layer_kwargs[0][0]["attention_mask"] is not inputs.layer_kwargs[2][0]["attention_mask"]
    for i, layer in enumerate(layers):
        inputs.use_layer(i)
        inputs.hidden = run_layer(layer, inputs)
    with torch.no_grad():
        want = [model.model(input_ids=x, output_hidden_states=True).hidden_states[-1] for x in xs]
    got = [model.model.norm(h) for h in inputs.hidden]  # hidden_states[-1] is after the final norm
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("recipe", [
    Recipe("awq", QuantArgs(8, "group", 16)),
    Recipe("gptq", QuantArgs(8, "group", 16)),
    Recipe("smoothquant", QuantArgs(8, "channel", None), QuantArgs(8, "channel", None, dynamic=True)),
    Recipe("rtn", QuantArgs(8, "group", 16)),
], ids=["awq", "gptq", "smoothquant", "rtn"])
def test_every_method_runs_on_gemma3_and_stays_close_at_8_bits(recipe):
    model = tiny_gemma3()
    xs = samples(8)
    ref = logits(model, xs)
    q = copy.deepcopy(model)
    res = quantize_model(q, xs, recipe)
    assert res.mapping is GEMMA3 and len(res.weights) == 3 * 7
    out = logits(q, xs)
    assert torch.isfinite(out).all()
    rel = float((out - ref).pow(2).mean() / ref.pow(2).mean())
    assert rel < (5e-3 if recipe.activations is not None else 1e-3), rel  # W8A8 also rounds activations
    if recipe.method == "awq":
        assert len(res.awq_exponents) == 3 * 4  # input norm, v -> o (no GQA here), pre-feedforward norm, up -> down


def test_awq_w4_on_gemma3_beats_rtn_w4():
    model = tiny_gemma3()
    with torch.no_grad():  # salient input channels (AWQ's premise)
        for layer in model.model.layers:
            layer.input_layernorm.weight[:4] += 20.0
            layer.pre_feedforward_layernorm.weight[:4] += 20.0
    xs = samples(8)
    ref = logits(model, xs)
    errs = {}
    for method in ("rtn", "awq"):
        q = copy.deepcopy(model)
        quantize_model(q, xs, Recipe(method, QuantArgs(4, "group", 16)))
        errs[method] = float((logits(q, xs) - ref).pow(2).mean())
    assert errs["awq"] < errs["rtn"], errs


def test_calibration_text_keeps_the_bos_the_tokenizer_prepends():
    """Gemma's tokenizer prepends <bos> (id 2); the calibration and perplexity samples keep it, no end token."""
    from llmcal.quant.data import tokenize

    class Tok:
        def __init__(self, prefix, suffix):
            self.prefix, self.suffix = prefix, suffix

        def __call__(self, text, add_special_tokens=True):
            ids = [ord(c) for c in text]
            ids = self.prefix + ids + self.suffix if add_special_tokens else ids
            return type("Enc", (), {"input_ids": ids})()

    assert tokenize(Tok([2], []), ["abc"])[0].tolist() == [[2, 97, 98, 99]]
    assert tokenize(Tok([], [1]), ["abc"])[0].tolist() == [[97, 98, 99]]  # an appended end token is dropped
    assert tokenize(Tok([], []), ["abc"], seq_len=2)[0].tolist() == [[97, 98]]


@pytest.mark.parametrize("recipe", [
    Recipe("awq", QuantArgs(4, "group", 16), awq_grid=4, awq_clip_grid=4),
    Recipe("gptq", QuantArgs(4, "group", 16)),
    Recipe("smoothquant", QuantArgs(8, "channel", None), QuantArgs(8, "channel", None, dynamic=True)),
], ids=["awq-w4", "gptq-w4", "smoothquant-w8a8"])
def test_a_gemma3_export_reloads_in_transformers_and_in_llmcal(tmp_path, recipe):
    """The round trip of issue 18 on the second architecture: the compressed-tensors folder of a quantized
    Gemma 3 reloads in plain transformers with the simulated model's logits, and ``llmcal`` scores it
    through its own backend as it scores the simulated model (within 1e-4, fp32)."""
    pytest.importorskip("compressed_tensors")
    import numpy as np

    from llmcal.backends import load_backend
    from llmcal.backends.hf import HFBackend
    from llmcal.core.requests import MCRequest
    from llmcal.posttrain.tiny import tiny_tokenizer
    from llmcal.quant.export import export_compressed, load_compressed

    model = tiny_gemma3()
    xs = samples(6)
    q = copy.deepcopy(model)
    res = quantize_model(q, xs, recipe)
    tok = tiny_tokenizer()
    out = export_compressed(q, res, tmp_path / "export", tokenizer=tok)
    reloaded = load_compressed(out, via="transformers")
    assert type(reloaded).__name__ == "Gemma3ForCausalLM"
    diff = float((logits(reloaded, xs) - logits(q, xs)).abs().max())
    assert diff <= 1e-4, diff
    assert float((logits(model, xs) - logits(q, xs)).abs().max()) > 1e-3  # the quantization is real
    reqs = [MCRequest("Question: abc?\nAnswer:", (" d", " ef", " ghi")), MCRequest("xy", ("z", "zz"))]
    want = HFBackend(q, tok).score_mc(reqs)
    got = load_backend("hf", pretrained=str(out)).score_mc(reqs)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.logprobs, w.logprobs, rtol=0, atol=1e-4)
