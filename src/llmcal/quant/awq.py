"""AWQ, activation-aware weight quantization (Lin et al. 2024, "AWQ: Activation-aware
Weight Quantization for On-Device LLM Compression and Acceleration", MLSys).

Weight channels that meet large activations matter most.  Scaling input channel
j of a group of linears up by s_j (and the producer of their input down by
s_j) is exact in float but shrinks the relative rounding error of the salient
channels.  AWQ takes s = s_X^a, with s_X the mean |x| per channel over the
calibration set (sec. 3.3), and searches the exponent a on a grid of
``n_grid`` points in [0, 1) against the error of the block's output (the
attention block for q,k,v; the MLP for gate,up; the linear itself for o and
down).  Then it searches, per output channel and group, a clipping ratio of
the weight range in [0.5, 1] that minimizes the linear's output error
(skipping q and k, whose errors the attention scores amplify).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from llmcal.quant.mapping import Group, fold_scales, get_module
from llmcal.quant.observers import fake_quant, params_from_range
from llmcal.quant.scheme import QuantArgs


def _run(module, captured: list) -> list[torch.Tensor]:
    outs = []
    with torch.no_grad():
        for args, kwargs in captured:
            o = module(*args, **kwargs)
            outs.append(o[0] if isinstance(o, tuple) else o)
    return outs


def search_scales(layer, group: Group, mean_abs: torch.Tensor, captured: list, wargs: QuantArgs,
                  n_grid: int = 20) -> tuple[torch.Tensor, float, list[float]]:
    """The best s (C,) for ``group``, its exponent, and the loss at every grid point.

    Loss = mean squared difference between the inspect module's output with
    the group's weights quantized as q(W s) / s and its float output, on the
    captured calibration inputs.  Exponent 0 (s = 1) is plain RTN, so the
    chosen scales never do worse than RTN on the search set.
    """
    from llmcal.quant.observers import quantize_weight

    inspect = get_module(layer, group.inspect)
    linears = [get_module(layer, p) for p in group.linears]
    originals = [lin.weight.data.clone() for lin in linears]
    search_args = replace(wargs, observer="minmax")  # the paper's search uses plain RTN
    reference = _run(inspect, captured)  # each (1, T, out)
    x = mean_abs.float().clamp_min(1e-8)  # (C,)
    losses, best, best_s, best_a = [], float("inf"), torch.ones_like(x), 0.0
    try:
        for i in range(n_grid):
            a = i / n_grid
            s = x.pow(a)
            s = s / (s.max() * s.min()).sqrt()  # (C,), centred so that max * min = 1
            with torch.no_grad():  # a copy that bumps the weight's version (fast_linear re-packs)
                for lin, w0 in zip(linears, originals):
                    wq = quantize_weight(w0.float() * s[None, :], search_args)[0]  # (out, C)
                    lin.weight.copy_((wq / s[None, :]).to(w0.dtype))
            outs = _run(inspect, captured)
            loss = float(sum((o - r).float().pow(2).sum() for o, r in zip(outs, reference))
                         / sum(r.numel() for r in reference))
            losses.append(loss)
            if loss < best:
                best, best_s, best_a = loss, s.clone(), a
    finally:
        with torch.no_grad():
            for lin, w0 in zip(linears, originals):
                lin.weight.copy_(w0)
    return best_s, best_a, losses


def scale_group(layer, group: Group, s: torch.Tensor) -> None:
    """Fold the chosen s into the group (exact in float)."""
    fold_scales(get_module(layer, group.prev), [get_module(layer, p) for p in group.linears], s,
                group.offset)


def search_clip(weight: torch.Tensor, x: torch.Tensor, wargs: QuantArgs, n_grid: int = 20,
                max_shrink: float = 0.5) -> torch.Tensor:
    """Clip ``weight`` (out, in) to the range per (output channel, group) minimizing the output error.

    ``x`` (n, in) are calibration inputs of the linear.  For each ratio r in
    1, 1 - max_shrink/n_grid, ..., 1 - max_shrink, the range [min, max] of
    each group is shrunk to r [min, max], the weights clamped to it and
    RTN-quantized, and the error sum_t (x_t,g . (w_g - q(w_g)))^2 compared per
    (row, group).  Returns the clamped weight (out, in); per-tensor
    granularity is left as it is.

    The error is the quadratic form d^T (X_g^T X_g) d of the rounding error
    d = w_g - q(w_g) with each group's Gram matrix (g, g), computed once: the
    same sum as through the n inputs, at g / n of the cost when the group is
    narrower than the sample (128 against 512 by default).
    """
    if wargs.granularity == "tensor":
        return weight
    out, inp = weight.shape
    g = inp if wargs.granularity == "channel" else int(wargs.group_size)  # type: ignore[arg-type]
    n_groups = inp // g
    w = weight.float().reshape(out, n_groups, g)  # (out, G, g)
    xg = x.float().reshape(-1, n_groups, g).permute(1, 0, 2)  # (G, n, g)
    gram = g < xg.shape[1]
    if gram:
        xg = torch.bmm(xg.transpose(1, 2), xg)  # (G, g, g): X_g^T X_g
    lo0 = w.amin(dim=2, keepdim=True)  # (out, G, 1)
    hi0 = w.amax(dim=2, keepdim=True)
    if wargs.symmetric:
        hi0 = torch.maximum(lo0.abs(), hi0)
        lo0 = -hi0
    best = torch.full((out, n_groups, 1), float("inf"))
    best_lo, best_hi = lo0.clone(), hi0.clone()
    fzp = wargs.float_zero_point  # validate(): only with symmetric=False
    for i in range(n_grid + 1):
        r = 1.0 - max_shrink * i / n_grid
        lo, hi = lo0 * r, hi0 * r
        wc = torch.maximum(torch.minimum(w, hi), lo)  # (out, G, g)
        scale, zp = params_from_range(lo, hi, wargs.bits, wargs.symmetric, fzp)
        d = (w - fake_quant(wc, scale, zp, wargs.bits, fzp)).permute(1, 0, 2)  # (G, out, g)
        if gram:
            err = (torch.bmm(d, xg) * d).sum(dim=2)  # (G, out): d^T X^T X d
        else:
            err = torch.bmm(d, xg.transpose(1, 2)).pow(2).sum(dim=2)  # (G, out): sum_t (x_t . d)^2
        err = err.t()[..., None]  # (out, G, 1)
        better = err < best
        best = torch.where(better, err, best)
        best_lo = torch.where(better, lo, best_lo)
        best_hi = torch.where(better, hi, best_hi)
    clipped = torch.maximum(torch.minimum(w, best_hi), best_lo)
    return clipped.reshape(out, inp).to(weight.dtype)
