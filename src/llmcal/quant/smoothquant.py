"""SmoothQuant (Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training
Quantization for Large Language Models", ICML).

Activation outliers sit in a few input channels; weights are smooth.  Dividing
input channel j of the activations by

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)          (eq. 4)

and multiplying the weights' column j by it leaves X W^T unchanged but moves
part of the quantization difficulty from the activations into the weights.
The division is folded into the preceding norm's weight, so it costs nothing
at inference.  alpha = 0.5 is the paper's default for most models; an alpha
sweep picks it per model (``benchmarks/quant.py --alphas``).
"""

from __future__ import annotations

import torch

from llmcal.quant.mapping import Group, fold_scales, get_module


def smooth_scales(act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s (C,) from the per-channel max |X_j| (C,) and the weights (out_i, C) that read X."""
    w_absmax = torch.stack([w.abs().amax(dim=0) for w in weights]).amax(dim=0)  # (C,)
    a = act_absmax.clamp_min(1e-5)
    s = a.pow(alpha) / w_absmax.clamp_min(1e-5).pow(1.0 - alpha)
    return s.clamp_min(1e-5)


def smooth_group(layer, group: Group, act_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """Fold SmoothQuant's scales into ``group``'s prev module and linears; return s (C,)."""
    linears = [get_module(layer, p) for p in group.linears]
    s = smooth_scales(act_absmax, [lin.weight.data.float() for lin in linears], alpha)
    fold_scales(get_module(layer, group.prev), linears, s, group.offset)
    return s
