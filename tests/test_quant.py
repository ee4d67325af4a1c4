"""llmcal.quant on tiny random-weight Llama models built here: observers, RTN, SmoothQuant, AWQ, errors."""

from __future__ import annotations

import copy
import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llmcal.quant import QuantArgs, QuantError, Recipe  # noqa: E402
from llmcal.quant.mapping import LLAMA, get_module, group_applies, input_keys, resolve_mapping  # noqa: E402
from llmcal.quant.observers import (  # noqa: E402
    act_clip,
    observe_range,
    params_from_range,
    quantize_weight,
    to_rows,
)
from llmcal.quant.quantizer import check_inputs, quantize_model  # noqa: E402
from llmcal.quant.stats import ActStats, capture_first_inputs, collect, run_layer  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matrices: one thread (two OpenMP threads on a shared 2-core machine cost 10-30 ms an op)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_llama(kv_heads: int = 2, seed: int = 0, salient: bool = False):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=kv_heads, vocab_size=256)
    model = transformers.LlamaForCausalLM(cfg).eval()
    if salient:  # a few input channels with large activations, as in real LLMs (AWQ's premise)
        with torch.no_grad():
            for layer in model.model.layers:
                layer.input_layernorm.weight[:4] *= 20.0
                layer.post_attention_layernorm.weight[:4] *= 20.0
    return model


def samples(n: int = 8, t: int = 24, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (1, t), generator=g) for _ in range(n)]


def logits(model, xs):
    with torch.no_grad():
        return torch.cat([model(input_ids=x).logits for x in xs], dim=1)


# ------------------------------------------------------------------ observers / RTN
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("gran,gs", [("tensor", None), ("channel", None), ("group", 16)])
@pytest.mark.parametrize("sym", [True, False])
def test_rtn_error_is_at_most_half_a_step(bits, gran, gs, sym):
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(bits)) * 0.05
    args = QuantArgs(bits, gran, gs, sym, "minmax").validate()
    wq, scale, zp = quantize_weight(w, args)
    # scale per element: broadcast the (rows,) scales back to the weight's layout
    per_el = to_rows(torch.ones_like(w), args) * scale.reshape(-1, 1)
    err = to_rows((w - wq).abs(), args)
    assert torch.all(err <= per_el / 2 + 1e-7)
    levels = torch.round(to_rows(wq, args) / scale.reshape(-1, 1)) + zp.reshape(-1, 1)
    assert levels.min() >= -(2 ** (bits - 1)) and levels.max() <= 2 ** (bits - 1) - 1
    assert len(torch.unique(levels)) <= 2 ** bits


def test_percentile_and_mse_beat_minmax_on_a_planted_outlier():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 4096, generator=g)
    w[0, 7] = 200.0  # one planted outlier
    bulk = torch.ones_like(w, dtype=torch.bool)
    bulk[0, 7] = False
    errs = {}
    for obs in ("minmax", "percentile", "mse"):
        args = QuantArgs(4, "channel", None, True, obs, 99.9)
        wq, _, _ = quantize_weight(w, args)
        errs[obs] = float((w - wq)[bulk].pow(2).mean())
    # min-max spends the whole range on the outlier: the bulk rounds to 0
    assert errs["percentile"] < errs["minmax"] / 10
    total = {o: float((w - quantize_weight(w, QuantArgs(4, "channel", None, True, o))[0]).pow(2).sum())
             for o in ("minmax", "mse")}
    assert total["mse"] <= total["minmax"]  # the MSE grid includes the min-max range


def test_activation_observers_on_a_planted_outlier():
    st = ActStats(32)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        st.update(torch.randn(1, 64, 32, generator=g))
    x = torch.randn(1, 64, 32, generator=g)
    x[0, 0, 0] = 1e4
    st.update(x)
    vals, wts = st.weighted_values()
    assert abs(float(wts.sum()) - st.n_values) / st.n_values < 1e-6
    clips = {o: act_clip(vals, wts, st.absmax, QuantArgs(8, "tensor", None, True, o, 99.99))
             for o in ("minmax", "percentile", "mse")}
    assert clips["minmax"] == pytest.approx(1e4)
    assert clips["percentile"] < 10
    # MSE clips an outlier only when clipping it costs less squared error than the rounding
    # error it causes in the bulk: one 1e4 among 43k N(0, 1) values is kept, ...
    assert clips["mse"] == pytest.approx(1e4)
    # ... one among a bulk 20x larger, relative to it, is clipped
    st.update(torch.randn(400, 64, 32, generator=g) * 20)
    vals, wts = st.weighted_values()
    assert act_clip(vals, wts, st.absmax, QuantArgs(8, "tensor", None, True, "mse")) < 0.5e4


def test_observe_range_asymmetric_holds_zero():
    rows = torch.tensor([[0.5, 1.0, 2.0]])
    lo, hi = observe_range(rows, QuantArgs(4, "channel", None, False))
    scale, zp = params_from_range(lo, hi, 4, False)
    assert float(zp) == -8 and float(scale) == pytest.approx(2.0 / 15)


def test_float_zero_point_reproduces_a_q4_1_grid_integer_zero_point_does_not():
    # GGUF Q4_1: blocks of 32, x = d * q + m with q in 0..15 and a float minimum m; the
    # embedded model's weights are exactly that.  Asymmetric RTN with a float zero point
    # reproduces such weights; the integer zero point of compressed-tensors / AutoAWQ
    # shifts the grid by up to half a step per block (a second rounding).
    g = torch.Generator().manual_seed(0)
    m = torch.rand(16, 1, generator=g) * 0.2 - 0.15  # (blocks, 1)
    d = torch.rand(16, 1, generator=g) * 0.02 + 0.005
    q = torch.randint(0, 16, (16, 32), generator=g).float()
    q[:, 0], q[:, 1] = 0, 15  # every block uses its full range
    w = (m + d * q).reshape(8, 64)  # (out, in): two blocks a row
    fz = QuantArgs(4, "group", 32, symmetric=False, float_zero_point=True)
    wq, scale, zp = quantize_weight(w, fz)
    torch.testing.assert_close(wq, w, rtol=0, atol=1e-6)
    assert scale.shape == zp.shape == (8, 2)
    wi = quantize_weight(w, QuantArgs(4, "group", 32, symmetric=False))[0]
    assert float((wi - w).abs().max()) > 1e-3
    with pytest.raises(QuantError, match="float_zero_point"):
        QuantArgs(4, "group", 32, symmetric=True, float_zero_point=True).validate()
    assert fz.label() == "4b-g32-asymf-minmax"


# ------------------------------------------------------------------ SmoothQuant / AWQ
def test_smoothquant_folding_leaves_the_float_model_unchanged():
    from llmcal.quant.smoothquant import smooth_group

    model = tiny_llama(salient=True)
    xs = samples()
    ref = logits(model, xs)
    layers = model.model.layers
    inputs = capture_first_inputs(model, layers, xs)
    keys = input_keys(LLAMA)
    smax = []
    for layer in layers:
        stats, _, _ = collect(layer, inputs, {k: k for k in set(keys.values())})
        for g in LLAMA.groups:
            if g.smooth:
                s = smooth_group(layer, g, stats[keys[g.linears[0]]].absmax_c, 0.5)
                smax.append(float(s.max() / s.min()))
        inputs.hidden = run_layer(layer, inputs)
    assert max(smax) > 2  # the scales did something
    torch.testing.assert_close(logits(model, xs), ref, rtol=1e-4, atol=1e-4)


def test_smoothquant_w8a8_stays_close_and_moves_outliers():
    model = tiny_llama(salient=True)
    xs = samples()
    ref = logits(model, xs)
    sq = copy.deepcopy(model)
    res = quantize_model(sq, xs, Recipe("smoothquant", QuantArgs(8, "channel", None),
                                        QuantArgs(8, "channel", None, dynamic=True), alpha=0.5))
    plain = copy.deepcopy(model)
    quantize_model(plain, xs, Recipe("rtn", QuantArgs(8, "channel", None), QuantArgs(8, "channel", None, dynamic=True)))
    e_sq = float((logits(sq, xs) - ref).pow(2).mean())
    e_plain = float((logits(plain, xs) - ref).pow(2).mean())
    assert res.smooth_max and e_sq < 1e-3
    assert e_sq < e_plain  # smoothing the salient channels helps the per-token activation quantizer


def test_awq_scaling_preserves_output_and_beats_rtn_on_the_block():
    from llmcal.quant import awq
    from llmcal.quant.rtn import quantize_linear_

    model = tiny_llama(salient=True)
    xs = samples()
    layer = model.model.layers[0]
    inputs = capture_first_inputs(model, model.model.layers, xs)
    ref = run_layer(layer, inputs)
    keys = input_keys(LLAMA)
    wargs = QuantArgs(4, "group", 16)
    capture = {g.inspect: g.inspect for g in LLAMA.groups}
    stats, kept, _ = collect(layer, inputs, {k: k for k in set(keys.values())}, capture, 10_000)

    rtn_layer = copy.deepcopy(layer)
    for p in LLAMA.linears:
        quantize_linear_(get_module(rtn_layer, p), wargs)
    rtn_err = sum(float((a - b).pow(2).sum()) for a, b in zip(run_layer(rtn_layer, inputs), ref))

    chosen = {}
    for g in LLAMA.groups:
        if group_applies(layer, g):
            s, a, losses = awq.search_scales(layer, g, stats[keys[g.linears[0]]].mean_abs(), kept[g.inspect],
                                             wargs, n_grid=10)
            assert min(losses) <= losses[0]  # exponent 0 is plain RTN
            awq.scale_group(layer, g, s)
            chosen[g.prev] = a
    # scaling alone is exact in float
    for a, b in zip(run_layer(layer, inputs), ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert any(a > 0 for a in chosen.values())
    for p in LLAMA.linears:
        quantize_linear_(get_module(layer, p), wargs)
    awq_err = sum(float((a - b).pow(2).sum()) for a, b in zip(run_layer(layer, inputs), ref))
    assert awq_err < rtn_err


def test_awq_clip_search_never_worse_than_no_clip():
    from llmcal.quant.awq import search_clip
    from llmcal.quant.observers import quantize_weight as qw

    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 64, generator=g) * 0.1
    x = torch.randn(256, 64, generator=g)
    args = QuantArgs(4, "group", 16)
    wc = search_clip(w, x, args, n_grid=10)
    e_clip = float((x @ (qw(wc, args)[0] - w).t()).pow(2).sum())
    e_rtn = float((x @ (qw(w, args)[0] - w).t()).pow(2).sum())
    assert e_clip <= e_rtn + 1e-6


def test_smoothquant_smooth_all_also_scales_up_to_down():
    model = tiny_llama(salient=True)
    xs = samples()
    ref = logits(model, xs)
    wargs, dyn = QuantArgs(8, "channel", None), QuantArgs(8, "channel", None, dynamic=True)
    paper = quantize_model(copy.deepcopy(model), xs, Recipe("smoothquant", wargs, dyn))
    allg = copy.deepcopy(model)
    res = quantize_model(allg, xs, Recipe("smoothquant", wargs, dyn, smooth_all=True))
    assert "model.layers.0.mlp.up_proj" in res.smooth_max
    assert "model.layers.0.mlp.up_proj" not in paper.smooth_max
    assert "model.layers.0.self_attn.v_proj" not in res.smooth_max  # GQA: v narrower than o's input
    assert float((logits(allg, xs) - ref).pow(2).mean()) < 1e-3
    assert res.recipe.label().endswith("-alpha0.5-all")


@pytest.mark.parametrize("fzp", [False, True])
def test_awq_asymmetric_w4_beats_rtn_asymmetric(fzp):
    model = tiny_llama(salient=True)
    xs, held = samples(8, seed=1), samples(4, seed=2)
    ref = logits(model, held)
    wargs = QuantArgs(4, "group", 16, symmetric=False, float_zero_point=fzp)
    errs = {}
    for method in ("rtn", "awq"):
        m = copy.deepcopy(model)
        res = quantize_model(m, xs, Recipe(method, wargs, awq_grid=10, awq_clip_grid=10))
        errs[method] = float((logits(m, held) - ref).pow(2).mean())
        zp = res.weights["model.layers.0.mlp.down_proj"]["zero_point"]
        assert zp.shape == (64, 128 // 16) and bool((zp != 0).any())
        if not fzp:
            assert torch.equal(zp, zp.round())
    assert errs["awq"] < errs["rtn"]


def test_v_to_o_group_only_when_shapes_match():
    gqa, mha = tiny_llama(kv_heads=2), tiny_llama(kv_heads=4)
    vo = LLAMA.groups[1]
    assert vo.prev == "self_attn.v_proj"
    assert not group_applies(gqa.model.layers[0], vo)
    assert group_applies(mha.model.layers[0], vo)
    xs = samples(4)
    ref = logits(mha, xs)
    res = quantize_model(mha, xs, Recipe("awq", QuantArgs(8, "channel", None), awq_grid=4, awq_clip_grid=4))
    assert "model.layers.0.self_attn.v_proj" in res.awq_exponents
    assert float((logits(mha, xs) - ref).abs().max()) < 0.05


def test_awq_w4_beats_rtn_w4_on_the_model():
    model = tiny_llama(salient=True)
    xs, held = samples(8, seed=1), samples(4, seed=2)
    ref = logits(model, held)
    errs = {}
    for method in ("rtn", "awq"):
        m = copy.deepcopy(model)
        quantize_model(m, xs, Recipe(method, QuantArgs(4, "group", 16), awq_grid=10, awq_clip_grid=10))
        errs[method] = float((logits(m, held) - ref).pow(2).mean())
    assert errs["awq"] < errs["rtn"]


def test_static_activation_outlier_breaks_minmax_not_percentile_or_mse():
    model = tiny_llama()
    xs, held = samples(8), samples(4, seed=2)
    ref = logits(model, held)
    errs, clips = {}, {}
    for obs in ("minmax", "percentile", "mse"):
        m = copy.deepcopy(model)
        res = quantize_model(m, xs, Recipe("rtn", QuantArgs(8, "channel", None),
                                           QuantArgs(8, "tensor", None, True, obs, 99.99)), outlier=1000.0)
        errs[obs] = float((logits(m, held) - ref).pow(2).mean())
        clips[obs] = res.act_clips["model.layers.0.self_attn.q_proj"]
    assert clips["minmax"] > 100 * clips["percentile"]
    assert errs["percentile"] < errs["minmax"] / 5
    # MSE keeps a single outlier when clipping it costs more squared error than it saves on
    # a bulk this small (12k values); it never does worse than min-max on its own objective
    assert clips["mse"] <= clips["minmax"]


# ------------------------------------------------------------------ errors before work
class _Counting:
    def __init__(self, model):
        self.calls = 0
        model.register_forward_pre_hook(self)

    def __call__(self, *a):
        self.calls += 1


def test_group_size_that_does_not_divide_names_the_field_and_layer():
    model = tiny_llama()
    calls = _Counting(model)
    with pytest.raises(QuantError, match="group_size.*48.*64") as err:
        quantize_model(model, samples(2), Recipe("awq", QuantArgs(4, "group", 48)))
    assert err.value.field == "weights.group_size" and "model.layers.0" in str(err.value)
    assert calls.calls == 0


@pytest.mark.parametrize("kw,field", [({"bits": 9}, "weights.bits"), ({"bits": 1}, "weights.bits"),
                                      ({"granularity": "row"}, "weights.granularity"),
                                      ({"observer": "kl"}, "weights.observer"),
                                      ({"group_size": 0}, "weights.group_size")])
def test_bad_weight_args_name_the_field(kw, field):
    with pytest.raises(QuantError) as err:
        Recipe("rtn", QuantArgs(**{**dict(bits=4, granularity="group", group_size=64), **kw})).validate()
    assert err.value.field == field


def test_bad_recipe_fields():
    with pytest.raises(QuantError, match="alpha"):
        Recipe("smoothquant", QuantArgs(8, "channel", None), alpha=1.5).validate()
    with pytest.raises(QuantError, match="method"):
        Recipe("hqq").validate()  # gptq is a method now (test_quant_gptq.py)


def test_calibration_set_smaller_than_requested(tmp_path):
    from llmcal.quant.data import load_texts

    f = tmp_path / "cal.txt"
    f.write_text("one sample\n\nanother sample\nthird\n")
    assert len(load_texts(str(f), 3)) == 3
    with pytest.raises(QuantError, match="3 samples, fewer than the 128 requested") as err:
        load_texts(str(f), 128)
    assert err.value.field == "n_samples"
    model = tiny_llama()
    calls = _Counting(model)
    with pytest.raises(QuantError, match="fewer than the 16 requested"):
        quantize_model(model, samples(4), Recipe("awq", QuantArgs(4, "group", 16)), n_required=16)
    assert calls.calls == 0


def test_jsonl_calibration(tmp_path):
    from llmcal.quant.data import load_texts

    f = tmp_path / "cal.jsonl"
    f.write_text(json.dumps({"text": "a b"}) + "\n" + json.dumps({"prompt": "c"}) + "\n")
    assert load_texts(str(f)) == ["a b", "c"]
    f.write_text(json.dumps({"other": 1}) + "\n")
    with pytest.raises(QuantError, match="text"):
        load_texts(str(f))


def test_unknown_architecture_needs_a_mapping(tmp_path):
    model = tiny_llama()
    model.config.model_type = "mystery"
    calls = _Counting(model)
    with pytest.raises(QuantError, match="'mystery' has no known layer mapping") as err:
        quantize_model(model, samples(2), Recipe("rtn", QuantArgs(4, "group", 16)))
    assert err.value.field == "mapping" and calls.calls == 0
    # the same architecture under another name works with the mapping given as data
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps({**LLAMA.to_dict(), "name": "mystery"}))
    res = quantize_model(model, samples(2), Recipe("rtn", QuantArgs(4, "group", 16)), mapping=str(path))
    assert res.mapping.name == "mystery" and len(res.weights) == 14
    bad = {**LLAMA.to_dict(), "linears": ["self_attn.qkv_proj"]}
    path.write_text(json.dumps(bad))
    with pytest.raises(QuantError, match="qkv_proj"):
        resolve_mapping(model, str(path))


def test_gpt2_has_no_mapping():
    cfg = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=32)
    with pytest.raises(QuantError, match="'gpt2'"):
        check_inputs(transformers.GPT2LMHeadModel(cfg), Recipe("rtn", QuantArgs(4, "group", 16)), None)


def test_cli_rejects_bad_bits_before_loading(monkeypatch):
    from llmcal.backends import hf
    from llmcal.cli.main import build_parser

    monkeypatch.setattr(hf.HFBackend, "load", classmethod(lambda cls, **k: pytest.fail("model loaded")))
    args = build_parser().parse_args(["quantize", "--method", "rtn", "--w_bits", "9"])
    with pytest.raises(QuantError, match="weights.bits"):
        args.func(args)
    args = build_parser().parse_args(["quantize", "--n_samples", "5000", "--calibration", "builtin"])
    with pytest.raises(QuantError, match="fewer than the 5000 requested"):
        args.func(args)


def test_quantize_cli_flags_reach_the_recipe_and_bad_combinations_fail_before_work():
    from llmcal.cli.main import build_parser
    from llmcal.cli.quant_commands import build_recipe, cmd_quantize
    from llmcal.quant.errors import QuantError

    parse = build_parser().parse_args
    r = build_recipe(parse(["quantize", "--method", "smoothquant", "--w_bits", "8", "--smooth_all"]))
    assert r.smooth_all and r.activations.dynamic and r.label().endswith("-all")
    r = build_recipe(parse(["quantize", "--method", "rtn", "--group_size", "32", "--asym", "--float_zero_point"]))
    assert r.weights.float_zero_point and not r.weights.symmetric
    with pytest.raises(QuantError, match="float_zero_point"):
        build_recipe(parse(["quantize", "--method", "rtn", "--float_zero_point"]))  # needs --asym
    with pytest.raises(ValueError, match="integer zero points"):
        cmd_quantize(parse(["quantize", "--method", "rtn", "--asym", "--float_zero_point", "--export",
                            "--output_path", "/nonexistent/never-written"]))


@pytest.mark.parametrize("method", ["rtn", "awq", "gptq"])
def test_quantizing_a_model_on_onednn_linears_changes_what_it_computes(method):
    """The backend may run linears on packed oneDNN copies of their weights (backends/fast_linear.py).

    The quantizers write the weights with version-bumping copies, so the packed copies are
    dropped and the quantized model computes with its quantized weights, exactly as the
    same quantization of a model on plain F.linear does.
    """
    from llmcal.backends.fast_linear import enable_onednn

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    model = tiny_llama(salient=True)
    xs = samples()
    plain = copy.deepcopy(model)
    assert enable_onednn(model) > 0
    ref = logits(plain, xs)
    recipe = Recipe(method, QuantArgs(4, "group", 16))
    quantize_model(model, xs, recipe)
    quantize_model(plain, xs, recipe)
    lost = float((logits(plain, xs) - ref).pow(2).mean())  # what W4 does to the logits
    apart = float((logits(model, xs) - logits(plain, xs)).pow(2).mean())
    # stale packed weights would compute the float model (apart == lost); oneDNN's round-off can
    # flip a few roundings, far fewer than the quantization itself
    assert lost > 0 and apart < 0.05 * lost, (apart, lost)
