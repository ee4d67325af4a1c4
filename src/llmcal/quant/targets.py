"""What each export target can load: checked up front, before any calibration work.

``llmcal quantize --export --target vllm|transformers`` runs :func:`check_export`
right after the recipe is built (before the calibration texts, the model or a
single forward pass), and :func:`check_widths` once the model is loaded (still
before any pass); :func:`llmcal.quant.export.export_compressed` runs both again
before it creates the folder.  A refusal is a :class:`QuantError` naming the
command-line option at fault.

Every target (compressed-tensors itself):

* integer zero points only (``--float_zero_point`` is simulation only);
* 8-bit activations only (``--a_bits 8``): the export writes int8 activation schemes.

``transformers`` (5.24 with compressed-tensors 0.20, checked by the tests):

* loads pack-quantized weights of 2 to 8 bits, per tensor, channel or group;
* not asymmetric weights (``--asym``): it builds ``weight_zero_point`` unpacked
  (out, groups) while the checkpoint holds it packed (out / (32 / bits), groups)
  and refuses the size mismatch.  ``load_compressed(folder, via="compressed_tensors")``
  still reads such a folder.

``vllm`` (its compressed-tensors schemes):

* weight-only (``CompressedTensorsWNA16``): ``WNA16_SUPPORTED_BITS = [4, 8]``,
  per channel or per group (no per-tensor weight scale); the Marlin kernels take
  group sizes 32, 64 and 128 (``MARLIN_SUPPORTED_GROUP_SIZES``);
* W8A8 (``CompressedTensorsW8A8Int8``): 8-bit symmetric weights per channel or
  per tensor, 8-bit symmetric activations per token (dynamic) or per tensor (static);
* warned, not refused: Marlin needs input widths that are multiples of 128 and
  output widths multiples of 64 (``GPTQ_MARLIN_MIN_THREAD_K/N``); the embedded
  model's hidden size 576 is not a multiple of 128, so vLLM has to pick another
  kernel (or refuses to load, depending on the GPU and version).

The export also writes the model's original dtype (``torch_dtype`` of the
source checkpoint; ``--export_dtype`` overrides it), not the float32 llmcal
computes in.
"""

from __future__ import annotations

from llmcal.quant.errors import QuantError
from llmcal.quant.scheme import Recipe

TARGETS = ("vllm", "transformers")
VLLM_WNA16_BITS = (4, 8)
VLLM_MARLIN_GROUP_SIZES = (32, 64, 128)
VLLM_MARLIN_MIN_K = 128  # input width multiple
VLLM_MARLIN_MIN_N = 64  # output width multiple
EXPORT_DTYPES = ("float32", "bfloat16", "float16")


def check_export(recipe: Recipe, target: str | None) -> None:
    """Refuse, naming the option, what ``target`` cannot load; ``None`` = only the format's own limits."""
    w, a = recipe.weights, recipe.activations
    if target is not None and target not in TARGETS:
        raise QuantError("--target", f"unknown {target!r}; use one of {', '.join(TARGETS)}")
    if w.float_zero_point:
        raise QuantError("--float_zero_point", "compressed-tensors stores integer zero points; a float zero "
                         "point (GGUF Q4_1 style) is simulation only: drop --export or --float_zero_point")
    if a is not None and a.bits != 8:
        raise QuantError("--a_bits", f"the export writes 8-bit activation schemes only, got --a_bits {a.bits}")
    if target == "transformers":
        if not w.symmetric:
            raise QuantError("--asym", "transformers cannot load asymmetric pack-quantized weights (it "
                             "expects the zero points unpacked and refuses the packed checkpoint's shape); "
                             "drop --asym, or use --target vllm")
    elif target == "vllm":
        if a is None:
            if w.bits not in VLLM_WNA16_BITS:
                raise QuantError("--w_bits", f"vLLM's compressed-tensors weight-only scheme (WNA16) takes "
                                 f"4 or 8 bits, got --w_bits {w.bits}; use --target transformers to export "
                                 "it anyway")
            if w.granularity == "tensor":
                raise QuantError("--granularity", "vLLM's weight-only scheme needs per-channel or per-group "
                                 "scales, not --granularity tensor")
            if w.granularity == "group" and w.group_size not in VLLM_MARLIN_GROUP_SIZES:
                raise QuantError("--group_size", f"vLLM's Marlin kernels take group sizes "
                                 f"{', '.join(map(str, VLLM_MARLIN_GROUP_SIZES))}, got --group_size "
                                 f"{w.group_size}")
        else:
            if w.bits != 8:
                raise QuantError("--w_bits", f"vLLM's int8 W8A8 scheme needs 8-bit weights, got --w_bits {w.bits}")
            if w.granularity == "group":
                raise QuantError("--granularity", "vLLM's int8 W8A8 scheme takes per-channel or per-tensor "
                                 "weight scales, not groups")
            if not w.symmetric:
                raise QuantError("--asym", "vLLM's int8 W8A8 scheme needs symmetric weights; drop --asym")


def check_widths(recipe: Recipe, target: str | None, shapes: dict[str, tuple[int, int]]) -> list[str]:
    """Shapes {module path: (out, in)} of the quantized linears against ``target``'s kernels.

    A group size that does not divide an input width is refused (no target can
    store it); vLLM's Marlin shape limits are returned as warnings.
    """
    w = recipe.weights
    for path, (_, inp) in shapes.items():
        w.check_width(inp, path)
    warnings: list[str] = []
    if target == "vllm" and recipe.activations is None:
        bad_k = sorted({inp for _, inp in shapes.values() if inp % VLLM_MARLIN_MIN_K})
        bad_n = sorted({out for out, _ in shapes.values() if out % VLLM_MARLIN_MIN_N})
        if bad_k:
            warnings.append(f"input widths {bad_k} are not multiples of {VLLM_MARLIN_MIN_K}: vLLM's Marlin "
                            "kernels cannot run these layers, vLLM must fall back to another kernel "
                            "(which may not exist on your GPU)")
        if bad_n:
            warnings.append(f"output widths {bad_n} are not multiples of {VLLM_MARLIN_MIN_N}: the same "
                            "Marlin limit on the output side")
    return warnings


def linear_shapes(model, mapping) -> dict[str, tuple[int, int]]:
    """{full path: (out_features, in_features)} of every linear the mapping quantizes."""
    from llmcal.quant.mapping import get_module

    out = {}
    for i, layer in enumerate(get_module(model, mapping.layers)):
        for path in mapping.linears:
            lin = get_module(layer, path)
            out[f"{mapping.layers}.{i}.{path}"] = (int(lin.out_features), int(lin.in_features))
    return out


def check_dtype(name: str | None) -> str | None:
    if name is None or name == "auto":
        return None
    if name not in EXPORT_DTYPES:
        raise QuantError("--export_dtype", f"unknown {name!r}; use auto or one of {', '.join(EXPORT_DTYPES)}")
    return name


def source_dtype(pretrained: str | None, gguf_file: str | None = None) -> str | None:
    """The dtype the source checkpoint was saved in (its config.json's ``dtype`` / ``torch_dtype``).

    A GGUF file (the embedded model) has no float dtype of its own: its block
    scales are float16, and float16 is what vLLM runs GGUF models in, so that is
    what the export writes.  ``None`` when nothing says.
    """
    import json
    from pathlib import Path

    if not pretrained or gguf_file:
        return "float16"
    cfg = Path(pretrained) / "config.json"
    if not cfg.is_file():
        return None
    try:
        d = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return None
    name = d.get("dtype") or d.get("torch_dtype")
    return name if name in EXPORT_DTYPES else None
