"""llmcal.quant on the embedded SmolLM2-135M-Instruct (slow: loads the model; kept short)."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from llmcal.quant import QuantArgs, QuantError, Recipe  # noqa: E402

pytestmark = pytest.mark.slow


def test_embedded_group_sizes_and_w8_rtn(embedded_backend):
    from llmcal.quant.quantizer import check_inputs, quantize_model

    model = embedded_backend.model
    # hidden size 576 does not divide by 128: the error says so before any work
    with pytest.raises(QuantError, match="128 does not divide the input width 576"):
        check_inputs(model, Recipe("awq", QuantArgs(4, "group", 128)), None)
    assert check_inputs(model, Recipe("awq", QuantArgs(4, "group", 64)), None).name == "llama"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    q = None
    try:
        q = copy.deepcopy(model)  # also with oneDNN's packed weights (backends/fast_linear._Packed)
        res = quantize_model(q, [torch.tensor([[1, 2, 3]])], Recipe("rtn", QuantArgs(8, "channel", None)))
        assert len(res.weights) == 30 * 7
        ids = embedded_backend.tokenizer("Question: What gas do plants take in?\nAnswer:",
                                         return_tensors="pt").input_ids
        with torch.no_grad():
            a, b = model(input_ids=ids).logits[0, -1], q(input_ids=ids).logits[0, -1]
        assert int(a.argmax()) == int(b.argmax())
        assert 0 < float((a - b).abs().max()) < 1.0
    finally:
        torch.set_num_threads(n)
        del q


def test_sciq_support_calibration_texts(data_dir):
    from llmcal.quant.data import load_texts

    texts = load_texts("sciq_support:valid", 128, data_dir)
    assert len(texts) == 128 and all(len(t) > 20 for t in texts)
    with pytest.raises(QuantError, match="fewer than the 5000 requested"):
        load_texts("sciq_support:test", 5000, data_dir)
