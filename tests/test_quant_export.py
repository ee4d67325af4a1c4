"""The compressed-tensors export reloads to the simulated quantized model.

Stated tolerance: the reloaded model's logits equal the simulated model's within
1e-4 absolute (fp32; the integers, scales and zero points are the same numbers,
so in practice they agree exactly).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

from llmcal.quant import QuantArgs, Recipe  # noqa: E402
from llmcal.quant.export import export_compressed, load_compressed  # noqa: E402
from llmcal.quant.quantizer import quantize_model  # noqa: E402
from test_quant import _one_thread, samples, tiny_llama  # noqa: E402,F401  (tests/ is on sys.path)

TOL = 1e-4


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(), samples(6)


def _logits(model, xs):
    with torch.no_grad():
        return torch.cat([model(input_ids=x).logits for x in xs], dim=1)


@pytest.mark.parametrize("recipe,via,fmt", [
    (Recipe("awq", QuantArgs(4, "group", 32), awq_grid=4, awq_clip_grid=4), "transformers", "pack-quantized"),
    (Recipe("rtn", QuantArgs(8, "channel", None, observer="mse")), "transformers", "pack-quantized"),
    (Recipe("rtn", QuantArgs(4, "group", 16, symmetric=False)), "compressed_tensors", "pack-quantized"),
    (Recipe("awq", QuantArgs(4, "group", 16, symmetric=False), awq_grid=4, awq_clip_grid=4),
     "compressed_tensors", "pack-quantized"),
    (Recipe("smoothquant", QuantArgs(8, "channel", None), QuantArgs(8, "channel", None, dynamic=True)),
     "transformers", "int-quantized"),
])
def test_export_round_trip(tiny, tmp_path, recipe, via, fmt):
    base, xs = tiny
    model = copy.deepcopy(base)
    res = quantize_model(model, xs, recipe)
    out = export_compressed(model, res, tmp_path / "export")
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["format"] == fmt and cfg["quant_method"] == "compressed-tensors"
    w = cfg["config_groups"]["group_0"]["weights"]
    assert w["num_bits"] == recipe.weights.bits and w["symmetric"] == recipe.weights.symmetric
    reloaded = load_compressed(out, via=via)
    diff = float((_logits(reloaded, xs) - _logits(model, xs)).abs().max())
    assert diff <= TOL, diff
    # and the quantization is real: the float model differs by much more
    assert float((_logits(base, xs) - _logits(model, xs)).abs().max()) > 10 * TOL
    if fmt == "pack-quantized":
        from safetensors.torch import load_file

        state = load_file(str(out / "model.safetensors"))
        packed = state["model.layers.0.mlp.down_proj.weight_packed"]
        assert packed.dtype == torch.int32 and packed.shape[1] == 128 * recipe.weights.bits // 32


def test_export_leaves_the_simulated_model_alone(tiny, tmp_path):
    base, xs = tiny
    model = copy.deepcopy(base)
    res = quantize_model(model, xs, Recipe("rtn", QuantArgs(8, "channel", None), QuantArgs(8, "channel", None, dynamic=True)))
    before = _logits(model, xs)
    export_compressed(model, res, tmp_path / "e")
    torch.testing.assert_close(_logits(model, xs), before, rtol=0, atol=0)


def test_export_refuses_a_float_zero_point(tiny, tmp_path):
    from llmcal.quant import QuantError

    base, xs = tiny
    model = copy.deepcopy(base)
    res = quantize_model(model, xs, Recipe("rtn", QuantArgs(4, "group", 16, symmetric=False,
                                                            float_zero_point=True)))
    with pytest.raises(QuantError, match="float_zero_point"):
        export_compressed(model, res, tmp_path / "e")


@pytest.mark.parametrize("recipe", [
    Recipe("rtn", QuantArgs(4, "group", 16)),
    Recipe("smoothquant", QuantArgs(8, "channel", None), QuantArgs(8, "channel", None, dynamic=True)),
], ids=["w4-pack-quantized", "w8a8-int-quantized"])
def test_llmcal_loads_its_own_export(tiny, tmp_path, recipe):
    """``--model_args pretrained=EXPORT`` scores exactly as the simulated model (the backend calls the decoder
    and ``lm_head`` itself, so it must run the decompression compressed-tensors defers to ``forward``)."""
    from llmcal.backends import load_backend
    from llmcal.backends.hf import HFBackend
    from llmcal.core.requests import MCRequest
    from llmcal.posttrain.tiny import tiny_tokenizer

    base, xs = tiny
    model = copy.deepcopy(base)
    res = quantize_model(model, xs, recipe)
    tok = tiny_tokenizer()
    out = export_compressed(model, res, tmp_path / "export", tokenizer=tok)
    reqs = [MCRequest("Question: abc?\nAnswer:", (" d", " ef", " ghi")), MCRequest("xy", ("z", "zz"))]
    loaded = load_backend("hf", pretrained=str(out))
    want = HFBackend(model, tok).score_mc(reqs)
    for got, w in zip(loaded.score_mc(reqs), want):
        np.testing.assert_allclose(got.logprobs, w.logprobs, rtol=0, atol=TOL)
