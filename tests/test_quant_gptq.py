"""GPTQ (llmcal.quant.gptq): against a plain unblocked implementation, against RTN on the tiny Llama, exported.

The reference below is the Optimal Brain Quantization loop the paper starts
from (Frantar et al. 2023, eq. 2-3), in float64, with none of GPTQ's tricks:
the inverse Hessian is inverted once and the quantized column is eliminated
from it by Gaussian elimination after each step; every later column gets its
update at once.  GPTQ's Cholesky rows and lazy block updates must give the
same weights (1e-5), whatever the block size.
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llmcal.quant import QuantArgs, Recipe  # noqa: E402
from llmcal.quant.gptq import gptq_quantize  # noqa: E402
from llmcal.quant.mapping import LLAMA, get_module  # noqa: E402
from llmcal.quant.observers import dequantize, observe_range, params_from_range, quantize  # noqa: E402
from llmcal.quant.quantizer import quantize_model  # noqa: E402
from test_quant import _one_thread, samples, tiny_llama  # noqa: E402,F401  (tests/ is on sys.path)


def reference_gptq(W, H, args: QuantArgs, damp=0.01, act_order=False):
    """Unblocked OBQ loop, fixed column order, float64."""
    W = W.double().clone()  # (out, n)
    H = H.double().clone()  # (n, n)
    out, n = W.shape
    g = args.group_size if args.granularity == "group" else n

    def params(cols):
        lo, hi = observe_range(cols.float(), args)
        s, z = params_from_range(lo, hi, args.bits, args.symmetric)
        return s.double()[:, 0], z.double()[:, 0]

    order = torch.argsort(torch.diag(H), descending=True, stable=True) if act_order else torch.arange(n)
    fixed = {}
    if act_order or args.granularity == "channel":  # groups from the original weights
        for k in range(n // g):
            fixed[k] = params(W[:, k * g:(k + 1) * g])
    Hinv = torch.linalg.inv(H + damp * torch.diag(H).mean() * torch.eye(n, dtype=H.dtype))
    Q = torch.zeros_like(W)
    cur = {}
    for step in range(n):
        j = int(order[step])
        k = j // g
        if k in fixed:
            s, z = fixed[k]
        else:
            if j % g == 0:
                cur[k] = params(W[:, j:j + g])
            s, z = cur[k]
        q = dequantize(quantize(W[:, j], s, z, args.bits), s, z)
        Q[:, j] = q
        err = (W[:, j] - q) / Hinv[j, j]  # (out,)
        W -= err[:, None] * Hinv[j, :][None, :]  # OBS: every remaining column at once
        W[:, j] = q
        Hinv = Hinv - Hinv[:, j:j + 1] @ Hinv[j:j + 1, :] / Hinv[j, j]  # eliminate column j
    return Q


def _problem(seed, out=24, n=64, t=256):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n, n, generator=g) / n ** 0.5 + torch.eye(n)  # correlated inputs
    X = torch.randn(t, n, generator=g) @ mix * (1 + 4 * torch.rand(n, generator=g))  # (t, n)
    W = torch.randn(out, n, generator=g) * 0.1  # (out, n)
    return W, 2 * X.t() @ X / t, X


@pytest.mark.parametrize("args", [QuantArgs(4, "group", 16), QuantArgs(3, "channel", None),
                                  QuantArgs(4, "group", 16, symmetric=False)], ids=["w4g16", "w3c", "w4g16-asym"])
@pytest.mark.parametrize("act_order", [False, True], ids=["ordered", "act-order"])
@pytest.mark.parametrize("seed", [0, 1])
def test_gptq_equals_the_unblocked_reference_for_any_block_size(args, act_order, seed):
    W, H, _ = _problem(seed)
    want = reference_gptq(W, H, args, act_order=act_order).float()
    for bs in (64, 32, 16, 5):  # = n_cols, then smaller (5 is rounded up to whole groups without act-order)
        got, scale, zp = gptq_quantize(W, H, args, block_size=bs, act_order=act_order)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=f"block size {bs}")
    # the scales and zero points reproduce the integers (what the export stores)
    n_per = W.shape[1] // scale.shape[1]
    s, z = scale.repeat_interleave(n_per, 1), zp.repeat_interleave(n_per, 1)
    ints = torch.round(got / s) + z
    torch.testing.assert_close((ints - z) * s, got, rtol=0, atol=1e-6)
    assert ints.min() >= -(2 ** (args.bits - 1)) and ints.max() <= 2 ** (args.bits - 1) - 1


def test_gptq_beats_rtn_on_a_random_matrix():
    from llmcal.quant.observers import quantize_weight

    for seed in range(3):
        W, H, X = _problem(seed)
        args = QuantArgs(4, "group", 16)
        err = {name: float((X @ (W - q).t()).norm()) for name, q in [
            ("rtn", quantize_weight(W, args)[0]), ("gptq", gptq_quantize(W, H, args)[0]),
            ("gptq-act", gptq_quantize(W, H, args, act_order=True)[0])]}
        assert err["gptq"] < 0.9 * err["rtn"] and err["gptq-act"] < 0.9 * err["rtn"], err


def _layer0_inputs(model, xs):
    """{linear path: X (tokens, in)} of layer 0's linears on the float model."""
    layer = get_module(model, LLAMA.layers)[0]
    got, handles = {}, []
    for path in LLAMA.linears:
        def hook(mod, args, path=path):
            got.setdefault(path, []).append(args[0].reshape(-1, args[0].shape[-1]))
        handles.append(get_module(layer, path).register_forward_pre_hook(hook))
    with torch.no_grad():
        for x in xs:
            model(input_ids=x)
    for h in handles:
        h.remove()
    return {p: torch.cat(v) for p, v in got.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gptq_layer_output_error_below_rtn_on_the_tiny_llama(seed):
    """||X W^T - X Q^T|| on the calibration data, every linear of the first layer (whose inputs are the
    same float activations for both methods), for W4 groups of 16, in order and with act-order."""
    base, xs = tiny_llama(seed=seed, salient=seed == 2), samples(8, 32, seed=seed + 1)
    X = _layer0_inputs(base, xs)
    errs = {}
    for recipe in (Recipe("rtn", QuantArgs(4, "group", 16)), Recipe("gptq", QuantArgs(4, "group", 16)),
                   Recipe("gptq", QuantArgs(4, "group", 16), gptq_act_order=True)):
        m = copy.deepcopy(base)
        quantize_model(m, xs, recipe)
        l0, b0 = get_module(m, LLAMA.layers)[0], get_module(base, LLAMA.layers)[0]
        with torch.no_grad():
            errs[recipe.label()] = {p: float((X[p] @ (get_module(b0, p).weight - get_module(l0, p).weight).t())
                                             .norm()) for p in LLAMA.linears}
    rtn, gp, act = errs.values()
    for p in LLAMA.linears:
        assert gp[p] < rtn[p] and act[p] < rtn[p], (p, rtn[p], gp[p], act[p])
    assert sum(gp.values()) < 0.95 * sum(rtn.values())  # near-isotropic random inputs: a modest gain


def test_gptq_is_deterministic_and_leaves_nothing_behind():
    base, xs = tiny_llama(), samples(6)
    runs = []
    for _ in range(2):
        m = copy.deepcopy(base)
        res = quantize_model(m, xs, Recipe("gptq", QuantArgs(4, "group", 16), gptq_act_order=True))
        runs.append((m.state_dict(), res))
    (a, ra), (b, rb) = runs
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for k in ra.weights:
        assert torch.equal(ra.weights[k]["scale"], rb.weights[k]["scale"])
    m = copy.deepcopy(base)
    quantize_model(m, xs, Recipe("gptq", QuantArgs(4, "group", 16)))
    assert all(not mod._forward_pre_hooks for mod in m.modules())


def test_gptq_recipe_fields_are_checked():
    from llmcal.quant import QuantError

    with pytest.raises(QuantError, match="gptq_block"):
        Recipe("gptq", gptq_block=0).validate()
    with pytest.raises(QuantError, match="gptq_damp"):
        Recipe("gptq", gptq_damp=0.0).validate()
    assert Recipe("gptq", gptq_act_order=True).validate().label().endswith("-act")


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_export_round_trips(tmp_path, act_order):
    pytest.importorskip("compressed_tensors")
    from llmcal.quant.export import export_compressed, load_compressed

    base, xs = tiny_llama(), samples(6)
    m = copy.deepcopy(base)
    res = quantize_model(m, xs, Recipe("gptq", QuantArgs(4, "group", 32), gptq_act_order=act_order))
    out = export_compressed(m, res, tmp_path / "gptq", target="transformers")
    reloaded = load_compressed(out)  # plain transformers
    with torch.no_grad():
        diff = max(float((reloaded(input_ids=x).logits - m(input_ids=x).logits).abs().max()) for x in xs)
    assert diff <= 1e-4, diff
