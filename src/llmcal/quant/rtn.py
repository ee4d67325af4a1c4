"""Round-to-nearest (RTN) fake quantization of weights, and simulated activation quantization.

Weights are replaced in place by their dequantized values (what an integer
kernel computes, in float); the scales and zero points are returned for the
export.  Activations are quantized by a forward pre-hook on the linear:

* dynamic, per token (granularity ``channel``): each token's scale is its own
  max |x| / qmax, computed at run time (SmoothQuant's W8A8 setting);
* static, per tensor: one clip for all tokens, chosen on the calibration set
  by the observer (min-max, percentile or MSE): the setting where one outlier
  in the calibration data ruins min-max.
"""

from __future__ import annotations

import torch

from llmcal.quant.observers import qrange, quantize_weight
from llmcal.quant.scheme import QuantArgs

HANDLES_ATTR = "_llmcal_act_quant"


def quantize_linear_(linear: torch.nn.Linear, args: QuantArgs) -> dict[str, torch.Tensor]:
    """Replace ``linear.weight`` by its RTN fake-quantized value; return scale and zero point."""
    with torch.no_grad():
        wq, scale, zp = quantize_weight(linear.weight.data, args)
        linear.weight.copy_(wq)  # not .data: the copy must bump the version (fast_linear's check)
    return {"scale": scale, "zero_point": zp}


def fake_quant_activation(x: torch.Tensor, bits: int, clip: float | None = None) -> torch.Tensor:
    """Symmetric fake quantization of x (..., C): per token when ``clip`` is None, else static."""
    qmin, qmax = qrange(bits)
    half = (qmax - qmin) / 2.0  # compressed-tensors' (and vLLM's) convention: max |x| / 127.5
    if clip is None:
        scale = (x.abs().amax(dim=-1, keepdim=True) / half).clamp_min(1e-10)  # (..., 1)
    else:
        scale = torch.tensor(max(clip / half, 1e-10), dtype=x.dtype)
    return torch.clamp(torch.round(x / scale), qmin, qmax) * scale


class ActQuantHook:
    """A forward pre-hook quantizing a linear's input (``clip`` None = dynamic per token)."""

    def __init__(self, bits: int, clip: float | None) -> None:
        self.bits, self.clip = bits, clip

    def __call__(self, module, args):
        return (fake_quant_activation(args[0], self.bits, self.clip),) + tuple(args[1:])


def add_act_quant(model, linear: torch.nn.Linear, bits: int, clip: float | None) -> None:
    """Quantize ``linear``'s inputs from now on; the handle is kept on ``model``."""
    handles = getattr(model, HANDLES_ATTR, None)
    if handles is None:
        handles = []
        object.__setattr__(model, HANDLES_ATTR, handles)
    handles.append(linear.register_forward_pre_hook(ActQuantHook(bits, clip)))


def remove_act_quant(model) -> None:
    for h in getattr(model, HANDLES_ATTR, []) or []:
        h.remove()
    object.__setattr__(model, HANDLES_ATTR, [])
