"""Quantization recipes as YAML files: stages in order, per-layer ignore lists, errors with file/line/field."""

from __future__ import annotations

import copy
import textwrap

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from llmcal.quant import QuantArgs, Recipe  # noqa: E402
from llmcal.quant.errors import QuantError  # noqa: E402
from llmcal.quant.quantizer import quantize_model  # noqa: E402
from llmcal.quant.recipe_file import load_recipe  # noqa: E402
from test_quant import _one_thread, samples, tiny_llama  # noqa: E402,F401  (tests/ is on sys.path)

SQ_GPTQ = """\
# W8A8 as llm-compressor's SmoothQuant + GPTQ recipe
stages:
  - smoothquant:
      alpha: 0.6
  - gptq:
      weights: {bits: 8, granularity: channel}
      activations: {bits: 8, dynamic: true}
      act_order: true
      damp: 0.02
ignore:
  - 'model\\.layers\\.0\\..*'
  - '.*down_proj'
"""


def _write(tmp_path, text: str, name: str = "recipe.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_a_recipe_file_becomes_the_recipe_it_describes(tmp_path):
    r = load_recipe(_write(tmp_path, SQ_GPTQ))
    assert r.method == "gptq" and r.smooth == 0.6 and r.gptq_act_order and r.gptq_damp == 0.02
    assert r.weights == QuantArgs(8, "channel", 64) and r.activations.dynamic and r.activations.granularity == "channel"
    assert r.ignores("model.layers.0.self_attn.q_proj") and r.ignores("model.layers.1.mlp.down_proj")
    assert not r.ignores("model.layers.1.mlp.up_proj")
    assert r.label() == "sq0.6+gptq-w8b-c-sym-minmax-a8-dyn-act-ignore2"


@pytest.mark.parametrize("text, message", [
    ("stages:\n  - gptq:\n      weights: {bits: 4}\n      dampp: 0.1\n",
     "line 4: field 'stages[0].gptq.dampp': unknown option of gptq"),
    ("stages:\n  - gptq: {}\n  - awq: {}\n", "line 2: field 'stages[0].gptq': only one quantizing stage"),
    ("stages:\n  - gptq:\n      weights: {bits: 9}\n", "line 3: field 'stages[0].gptq.weights': weights.bits: must be"),
    ("stages:\n  - rtn: {}\nignore: ['model(']\n", "line 3: field 'ignore': ignore[0]: 'model(' is not a regular"),
    ("stages:\n  - rtn: {}\nignore: ['.*']\n", None),  # valid file; refused at quantize time (nothing left)
    ("stage:\n  - rtn: {}\n", "line 1: field 'stage': unknown key"),
    ("stages: [\n", "not valid YAML"),
])
def test_recipe_errors_name_the_file_line_and_field(tmp_path, text, message):
    p = _write(tmp_path, text)
    if message is None:
        r = load_recipe(p)
        with pytest.raises(QuantError, match="leave no linear layer to quantize"):
            quantize_model(tiny_llama(), samples(2), r)
        return
    with pytest.raises(QuantError) as err:
        load_recipe(p)
    assert str(p) in str(err.value) and message in str(err.value)


def test_ignored_linears_stay_float_and_the_rest_are_quantized():
    base = tiny_llama()
    model = copy.deepcopy(base)
    res = quantize_model(model, samples(2), Recipe("rtn", QuantArgs(4, "group", 16), ignore=(r"model\.layers\.0\..*",)))
    assert res.weights and all(not k.startswith("model.layers.0.") for k in res.weights)
    before, after = dict(base.named_parameters()), dict(model.named_parameters())
    assert torch.equal(before["model.layers.0.mlp.down_proj.weight"], after["model.layers.0.mlp.down_proj.weight"])
    assert not torch.equal(before["model.layers.1.mlp.down_proj.weight"], after["model.layers.1.mlp.down_proj.weight"])


def test_a_smoothing_stage_then_rtn_is_exactly_smoothquant():
    """sq(alpha) + rtn W8A8 and --method smoothquant (same alpha, formats) are the same algorithm (up to the
    float round-off of the next layer's inputs, which one path takes from the layer before smoothing and the
    other after: the same function, summed in another order)."""
    xs = samples(4)
    w8, a8 = QuantArgs(8, "channel", None), QuantArgs(8, "channel", None, dynamic=True)
    a, b = tiny_llama(salient=True), tiny_llama(salient=True)
    ra = quantize_model(a, xs, Recipe("smoothquant", w8, a8, alpha=0.5))
    rb = quantize_model(b, xs, Recipe("rtn", w8, a8, smooth=0.5))
    assert ra.smooth_max == pytest.approx(rb.smooth_max, rel=1e-5)
    layer0 = [(n, p, q) for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()) if ".layers.0." in n]
    assert layer0 and all(torch.equal(p, q) for _, p, q in layer0)  # the first layer sees identical inputs
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-4, msg=n)


def test_export_lists_the_ignored_linears(tmp_path):
    pytest.importorskip("compressed_tensors")
    import json

    from llmcal.posttrain.tiny import tiny_tokenizer
    from llmcal.quant.export import export_compressed, load_compressed

    model = tiny_llama()
    res = quantize_model(model, samples(2), Recipe("rtn", QuantArgs(4, "group", 16), ignore=(r".*\.0\.mlp\..*",)))
    out = export_compressed(model, res, tmp_path / "export", tokenizer=tiny_tokenizer())
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert {"model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj",
            "model.layers.0.mlp.down_proj"} <= set(cfg["ignore"])
    back = load_compressed(out)
    x = samples(1)[0]
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=x).logits, model(input_ids=x).logits, rtol=0, atol=1e-4)


def test_the_documented_recipes_load():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[1] / "docs" / "recipes").glob("*.yaml"))
    assert len(files) >= 2
    for f in files:
        r = load_recipe(f)
        assert r.method == "gptq"
