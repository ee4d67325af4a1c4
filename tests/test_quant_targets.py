"""Export targets (``llmcal quantize --export --target vllm|transformers``) and round trips of what llmcal writes.

* every refusal happens before any work (the calibration texts, the model, the
  quantizer and the evaluation are replaced by functions that fail the test if
  called) and leaves no folder behind; the message names the option;
* what a target accepts loads in plain transformers, in the source
  checkpoint's dtype;
* a freshly exported folder loads back into ``llmcal run`` and ``llmcal posttrain svd``.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

from llmcal.cli.main import main  # noqa: E402
from test_quant import _one_thread  # noqa: E402,F401  (tests/ is on sys.path)


def _save_tiny(folder, dtype=torch.float32):
    from llmcal.posttrain.tiny import tiny_llama, tiny_tokenizer

    model = tiny_llama(hidden_size=64).to(dtype)  # widths 64 and 128: groups of 32 and 64 divide them
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return _save_tiny(tmp_path_factory.mktemp("tiny") / "fp32")


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    p = tmp_path_factory.mktemp("calib") / "calib.txt"
    p.write_text("\n".join(f"Sentence {i}: the quick brown fox jumps over {i} lazy dogs." for i in range(8)))
    return p


def _no_work(monkeypatch):
    def fail(*a, **k):
        pytest.fail("work started before the export check")

    import llmcal.backends.registry as registry
    import llmcal.quant.data as data
    import llmcal.quant.evaluate as evaluate
    import llmcal.quant.quantizer as quantizer

    monkeypatch.setattr(data, "load_texts", fail)
    monkeypatch.setattr(registry, "load_backend", fail)
    monkeypatch.setattr(quantizer, "quantize_model", fail)
    monkeypatch.setattr(evaluate, "evaluate_model", fail)


@pytest.mark.parametrize("flags,option", [
    (["--method", "rtn", "--w_bits", "3"], "--w_bits"),  # vLLM's WNA16 takes 4 or 8 bits
    (["--method", "awq", "--asym", "--target", "transformers"], "--asym"),  # packed zero points
    (["--method", "rtn", "--asym", "--float_zero_point"], "--float_zero_point"),
    (["--method", "rtn", "--asym", "--float_zero_point", "--target", "transformers"], "--float_zero_point"),
    (["--method", "smoothquant", "--w_bits", "8", "--a_bits", "4"], "--a_bits"),
    (["--method", "smoothquant", "--w_bits", "8", "--a_bits", "4", "--target", "transformers"], "--a_bits"),
    (["--method", "rtn", "--group_size", "16"], "--group_size"),  # Marlin: 32, 64, 128
    (["--method", "rtn", "--granularity", "tensor"], "--granularity"),
    (["--method", "smoothquant", "--w_bits", "4"], "--w_bits"),  # W4A8 is not vLLM's int8 scheme
    (["--method", "smoothquant", "--w_bits", "8", "--asym"], "--asym"),
    (["--method", "gptq", "--w_bits", "2"], "--w_bits"),
])
def test_export_refusals_come_before_any_work_and_leave_nothing(monkeypatch, tmp_path, capsys, flags, option):
    _no_work(monkeypatch)
    out = tmp_path / "never"
    rc = main(["quantize", *flags, "--export", "--output_path", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"error: {option}:" in err, err
    assert not out.exists()


def test_the_same_recipes_without_export_are_not_refused_up_front(monkeypatch, tmp_path):
    """The refusals are about the export target, not the simulation: without --export the checks pass and the
    command goes on to read the calibration texts (stubbed here to stop it there)."""
    import llmcal.quant.data as data

    class Reached(Exception):
        pass

    monkeypatch.setattr(data, "load_texts", lambda *a, **k: (_ for _ in ()).throw(Reached()))
    from llmcal.cli.main import build_parser

    for flags in (["--method", "rtn", "--w_bits", "3"], ["--method", "rtn", "--group_size", "16"],
                  ["--method", "awq", "--asym"]):
        args = build_parser().parse_args(["quantize", *flags, "--output_path", str(tmp_path / "x")])
        with pytest.raises(Reached):
            args.func(args)
        args = build_parser().parse_args(["quantize", *flags, "--export", "--target", "transformers",
                                          "--output_path", str(tmp_path / "x")])
        if "--asym" in flags:
            continue
        with pytest.raises(Reached):  # transformers loads 3 bits and groups of 16
            args.func(args)


def test_group_size_that_does_not_divide_a_width_is_refused_before_calibration(monkeypatch, tmp_path, capsys,
                                                                               tiny_dir, calib):
    import llmcal.quant.evaluate as evaluate
    import llmcal.quant.quantizer as quantizer

    monkeypatch.setattr(quantizer, "quantize_model", lambda *a, **k: pytest.fail("calibration started"))
    monkeypatch.setattr(evaluate, "evaluate_model", lambda *a, **k: pytest.fail("evaluation started"))
    out = tmp_path / "never"
    rc = main(["quantize", "--method", "gptq", "--group_size", "48", "--target", "transformers",
               "--model_args", f"pretrained={tiny_dir}", "--calibration", str(calib), "--n_samples", "4",
               "--no_eval", "--export", "--output_path", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "group_size: 48 does not divide the input width 64" in err, err
    assert not out.exists()


def _quantize(tiny, calib, out, *flags):
    rc = main(["quantize", "--model_args", f"pretrained={tiny}", "--calibration", str(calib), "--n_samples", "4",
               "--seq_len", "32", "--no_eval", "--export", "--output_path", str(out), "--quiet", *flags])
    assert rc == 0
    return out / "model"


def test_accepted_exports_load_in_transformers_in_the_source_dtype(tmp_path, capsys, tiny_dir, calib):
    bf16 = _save_tiny(tmp_path / "bf16", torch.bfloat16)
    cases = [  # (source, flags, the dtype the export must say)
        (tiny_dir, ["--method", "gptq", "--group_size", "32"], "float32"),  # default target vllm
        (tiny_dir, ["--method", "rtn", "--w_bits", "3", "--group_size", "16", "--target", "transformers"],
         "float32"),
        (tiny_dir, ["--method", "smoothquant", "--w_bits", "8"], "float32"),  # W8A8 int8
        (bf16, ["--method", "awq", "--group_size", "32"], "bfloat16"),  # the source's dtype, not float32
        (tiny_dir, ["--method", "rtn", "--group_size", "32", "--export_dtype", "float16"], "float16"),
    ]
    for i, (src, flags, dtype) in enumerate(cases):
        folder = _quantize(src, calib, tmp_path / f"q{i}", *flags)
        err = capsys.readouterr().err
        cfg = json.loads((folder / "config.json").read_text())
        assert cfg.get("dtype", cfg.get("torch_dtype")) == dtype, (flags, cfg.get("dtype"))
        model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype="auto").eval()
        assert str(model.dtype) == f"torch.{dtype}"
        ids = torch.tensor([[5, 6, 7, 8]])
        with torch.no_grad():
            assert torch.isfinite(model(input_ids=ids).logits.float()).all()
        results = json.loads((tmp_path / f"q{i}" / "quant_results.json").read_text())
        assert results["export_dtype"] == dtype
        if "--target" not in flags and "smoothquant" not in flags:
            # vLLM: widths 64 are not multiples of Marlin's 128: a warning, not a refusal
            assert "warning: --target vllm: input widths [64]" in err, err


def test_a_bf16_export_holds_the_same_integers_as_the_float32_one(tmp_path, tiny_dir, calib):
    from safetensors.torch import load_file

    a = _quantize(tiny_dir, calib, tmp_path / "a", "--method", "rtn", "--group_size", "32")
    b = _quantize(tiny_dir, calib, tmp_path / "b", "--method", "rtn", "--group_size", "32",
                  "--export_dtype", "bfloat16")
    sa, sb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    packed = [k for k in sa if k.endswith("weight_packed")]
    assert packed and all(torch.equal(sa[k], sb[k]) for k in packed)
    assert sb["model.layers.0.mlp.down_proj.weight_scale"].dtype == torch.bfloat16


def test_export_helper_checks_before_it_creates_the_folder(tmp_path):
    import copy

    from llmcal.quant import QuantArgs, QuantError, Recipe
    from llmcal.quant.export import export_compressed
    from llmcal.quant.quantizer import quantize_model
    from test_quant import samples, tiny_llama

    m = tiny_llama()
    res = quantize_model(copy.deepcopy(m), samples(2), Recipe("rtn", QuantArgs(3, "group", 16)))
    for target, field in (("vllm", "--w_bits"), ("nope", "--target")):
        with pytest.raises(QuantError, match=field):
            export_compressed(m, res, tmp_path / "e", target=target)
        assert not (tmp_path / "e").exists()
    with pytest.raises(QuantError, match="--export_dtype"):
        export_compressed(m, res, tmp_path / "e", dtype="int8")
    assert not (tmp_path / "e").exists()


# ------------------------------------------------------------------ round trips
def _tasks_file(tmp_path):
    p = tmp_path / "mini.jsonl"
    rows = [{"question": f"What is {i} plus {i}?", "choices": [str(2 * i), str(2 * i + 1), str(i)], "answer": 0}
            for i in range(1, 9)]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


@pytest.mark.parametrize("method", ["gptq"])  # W8A8 exports through the backend: test_quant_export.py
def test_llmcal_run_and_posttrain_svd_on_a_fresh_export(tmp_path, capsys, tiny_dir, calib, method):
    flags = ["--method", method, "--group_size", "32"] + (["--w_bits", "8"] if method == "smoothquant" else [])
    export = _quantize(tiny_dir, calib, tmp_path / "q", *flags)
    capsys.readouterr()
    run_dir = tmp_path / "run"
    rc = main(["run", "--model_args", f"pretrained={export}", "--tasks", str(_tasks_file(tmp_path)),
               "--limit", "8", "--bootstrap", "0", "--output_path", str(run_dir)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert any(run_dir.rglob("*.json")), list(run_dir.rglob("*"))
    rc = main(["posttrain", "svd", str(tiny_dir), str(export), "--out", str(tmp_path / "svd"), "--k", "8"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    res = json.loads((tmp_path / "svd" / "svd.json").read_text())
    assert res["n_matrices"] == 14  # 7 linears x 2 layers, all decompressed
    assert res["summary"]["all"]["median_rel_change"] > 0  # the quantization is seen as a change
