"""Export a quantized model in the compressed-tensors format (``pack-quantized``), which vLLM serves.

Weight-only recipes are written ``pack-quantized``; W8A8 recipes ``int-quantized``
(int8 weights unpacked, the activation scheme in the config), the format
vLLM's int8 W8A8 kernels read.

The fake-quantized float weights of :func:`llmcal.quant.quantizer.quantize_model`
and the scales / zero points it returned are handed to the ``compressed-tensors``
library: a :class:`~compressed_tensors.quantization.QuantizationScheme` per
recipe (weights int, per tensor / channel / group, symmetric or not; for W8A8
the input activations per token dynamic or per tensor static), our scales
written into the modules' ``weight_scale`` / ``weight_zero_point``, the
integers packed into int32 (``weight_packed``) by its ``ModelCompressor``, and
``config.json`` given the ``quantization_config``.  Folded SmoothQuant / AWQ
scales live in the norm weights, which stay float.

``transformers.AutoModelForCausalLM.from_pretrained(folder)`` (with
``compressed-tensors`` installed) and vLLM load the folder; the test reloads it
and compares its outputs with the simulated model.  Needs the ``quant`` extra
(``pip install compressed-tensors``).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

from llmcal.quant.errors import QuantError


def _ct_args(q, activation: bool = False):
    from compressed_tensors.quantization import QuantizationArgs

    if activation:
        strategy = "token" if q.dynamic else "tensor"
        return QuantizationArgs(num_bits=q.bits, type="int", symmetric=True, strategy=strategy,
                                dynamic=bool(q.dynamic))
    return QuantizationArgs(num_bits=q.bits, type="int", symmetric=q.symmetric, strategy=q.granularity,
                            group_size=q.group_size if q.granularity == "group" else None)


def export_compressed(model, result, out_dir: str | Path, tokenizer=None, target: str | None = None,
                      dtype: str | None = None) -> Path:
    """Write ``model`` (quantized by ``result``'s recipe) to ``out_dir`` as pack-quantized.

    ``target`` (``vllm``, ``transformers`` or None): what must load the folder;
    :mod:`llmcal.quant.targets` refuses what it cannot, before the folder is
    created.  ``dtype`` (``float32``, ``bfloat16``, ``float16``; None = the
    model's): the dtype of the float tensors written (scales, norms,
    embeddings) and of ``config.json``; the integers are computed in float32
    first, so a bf16 export holds the same integers.  A failure part-way
    removes the folder if this call created it.  The model passed in is not
    changed (a copy is compressed).
    """
    try:
        import compressed_tensors  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise QuantError("export", "needs compressed-tensors: pip install 'llmcal[quant]'") from err
    from llmcal.quant.targets import check_dtype, check_export, check_widths, linear_shapes

    recipe = result.recipe
    check_export(recipe, target)
    check_widths(recipe, target, linear_shapes(model, result.mapping))
    dtype = check_dtype(dtype)
    out = Path(out_dir)
    created = not out.exists()
    try:
        _export(model, result, out, tokenizer, dtype)
    except BaseException:
        if created and out.exists():
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def _export(model, result, out: Path, tokenizer, dtype: str | None) -> None:
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationConfig,
        QuantizationScheme,
        QuantizationStatus,
        apply_quantization_config,
    )

    from llmcal.quant.rtn import HANDLES_ATTR

    recipe = result.recipe
    out.mkdir(parents=True, exist_ok=True)
    handles = getattr(model, HANDLES_ATTR, None)
    try:  # the activation hooks are simulation only; the scheme says it instead
        object.__setattr__(model, HANDLES_ATTR, None)
        m = copy.deepcopy(model)
    finally:
        object.__setattr__(model, HANDLES_ATTR, handles)
    for mod in m.modules():
        mod._forward_pre_hooks.clear()
    if getattr(m.config, "quantization_config", None) is not None:  # the GGUF marker of a dequantized model
        del m.config.quantization_config
    m.hf_quantizer = None

    names = "|".join(re.escape(p) for p in result.mapping.linears)
    scheme = QuantizationScheme(
        targets=[f"re:.*\\.({names})$"],
        weights=_ct_args(recipe.weights),
        input_activations=_ct_args(recipe.activations, True) if recipe.activations is not None else None,
    )
    # the linears the recipe left in float (matched by the scheme's target regex, but not quantized)
    skipped = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear) and n != "lm_head"
               and re.fullmatch(f".*\\.({names})", n) and n not in result.weights]
    config = QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head", *skipped],
                                quantization_status=QuantizationStatus.FROZEN)
    apply_quantization_config(m, config)
    modules = dict(m.named_modules())
    with torch.no_grad():
        for name, qp in result.weights.items():
            mod = modules[name]
            mod.weight_scale.data = qp["scale"].to(mod.weight.dtype).reshape(mod.weight_scale.shape)
            zp = getattr(mod, "weight_zero_point", None)
            if zp is not None:
                zp.data = qp["zero_point"].to(zp.dtype).reshape(zp.shape)
            clip = result.act_clips.get(name)
            if clip is not None and hasattr(mod, "input_scale"):
                mod.input_scale.data = torch.full_like(mod.input_scale, clip / 127.5)
    # weight-only: int4/int8 packed into int32; W8A8: int8 weights as they are (vLLM's int8 kernels)
    fmt = "pack-quantized" if recipe.activations is None else "int-quantized"
    compressor = ModelCompressor.from_pretrained_model(m, quantization_format=fmt)
    compressor.compress_model(m)
    if dtype is not None:  # the integers are fixed; now the float tensors take the model's own dtype
        tdt = getattr(torch, dtype)
        m.to(tdt)
        m.config.dtype = tdt
    m.save_pretrained(out)
    compressor.update_config(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


def load_compressed(folder: str | Path, via: str = "transformers"):
    """Reload an export and decompress its packed weights into a float model.

    ``via="transformers"``: ``AutoModelForCausalLM.from_pretrained`` (what a user
    runs; transformers' compressed-tensors integration).  ``via="compressed_tensors"``:
    the library's own decompressor on a model built from ``config.json``
    (transformers 5.24 cannot load *asymmetric* pack-quantized folders: it
    re-initializes the packed zero points for a size mismatch).
    """
    if via == "transformers":
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    import json

    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    qcfg = QuantizationConfig.model_validate(json.loads((folder / "config.json").read_text())
                                             ["quantization_config"])
    config = AutoConfig.from_pretrained(str(folder))
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    compressor = ModelCompressor(quantization_config=qcfg)
    apply_quantization_config(model, qcfg)
    compressor.compress_model(model)  # the packed layout the checkpoint has
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the embeddings
    if missing or unexpected:
        raise QuantError("export", f"{folder}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    compressor.decompress_model(model)
    return model
