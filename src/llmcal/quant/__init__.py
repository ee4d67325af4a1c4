"""Calibration for quantization: observers, round-to-nearest, SmoothQuant, AWQ, GPTQ; trust before and after.

Quantizing a model needs calibration in the other sense of the word: run a
few hundred real samples through it to set the integer scales.  This stage
does that (min-max, percentile and MSE observers; SmoothQuant, Xiao et al.
2023; AWQ, Lin et al. 2024; GPTQ, Frantar et al. 2023), simulates the quantized model in float, exports
it in the compressed-tensors ``pack-quantized`` format that vLLM serves, and
measures what quantization did: perplexity, accuracy, and the confidence
calibration (ECE, Brier, mean confidence) that no quantization tool reports.

Modules: ``scheme`` (formats, recipe), ``observers``, ``stats`` (hooks, layer by
layer), ``rtn``, ``smoothquant``, ``awq``, ``gptq``, ``mapping`` (layer groups as
data), ``quantizer`` (the driver), ``data`` (calibration text), ``evaluate``,
``export``, ``targets`` (what vLLM / transformers load), ``errors``.  Importing this package imports no torch.
"""

from llmcal.quant.errors import QuantError
from llmcal.quant.scheme import QuantArgs, Recipe

__all__ = ["QuantArgs", "QuantError", "Recipe"]
