"""Observers: from a tensor (or a summary of many) to integer scales and zero points.

* ``minmax``: the range is the observed minimum and maximum.  Exact for what
  was seen, and fragile: one outlier stretches the scale for everything else.
* ``percentile``: the range is a percentile of the values (e.g. 99.9 or 99.99
  of |x|), so the rare extremes are clipped.
* ``mse``: the range is the observed one shrunk by the factor, searched over a
  grid, that minimizes the squared quantization error of the tensor
  (clipping error traded against rounding error; the "MSE-optimal clipping" of
  e.g. Banner et al. 2019 and the MSE observers of GPTQ and TensorRT).

Every function works on *rows* (one row = the elements that share a scale,
see :func:`to_rows`), so the same code serves per-tensor, per-channel and
per-group quantization.
"""

from __future__ import annotations

import torch

from llmcal.quant.scheme import QuantArgs

MSE_GRID = 100  # candidate shrink factors for the MSE observer
MSE_MAX_SHRINK = 0.8  # the smallest range tried is 20% of the observed one
ACT_MSE_GRID = 100  # activation clips tried, from the max down to max/1000
_EPS = 1e-10


def qrange(bits: int) -> tuple[int, int]:
    """The signed integer range of ``bits`` bits: (-2^(b-1), 2^(b-1) - 1)."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def to_rows(w: torch.Tensor, args: QuantArgs) -> torch.Tensor:
    """View a weight (out, in) as rows that each share one scale.

    tensor -> (1, out*in); channel -> (out, in); group -> (out*in/g, g).
    """
    out, inp = w.shape
    if args.granularity == "tensor":
        return w.reshape(1, out * inp)
    if args.granularity == "channel":
        return w
    g = int(args.group_size)  # type: ignore[arg-type]
    return w.reshape(out * (inp // g), g)


def scale_shape(w_shape: tuple[int, int], args: QuantArgs) -> tuple[int, ...]:
    """compressed-tensors' shape of ``weight_scale``: (1,), (out, 1) or (out, in/g)."""
    out, inp = w_shape
    if args.granularity == "tensor":
        return (1,)
    if args.granularity == "channel":
        return (out, 1)
    return (out, inp // int(args.group_size))  # type: ignore[arg-type]


def params_from_range(lo: torch.Tensor, hi: torch.Tensor, bits: int,
                      symmetric: bool, float_zp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point (both shaped like ``lo``) that cover [lo, hi].

    Symmetric: scale = max(|lo|, |hi|) / qmax, zero point 0 (so +-max are exact).
    Asymmetric: the range is widened to hold 0, scale = (hi - lo) / (qmax - qmin),
    zero point = round(qmin - lo / scale) (so 0 is exact, as padding needs).
    ``float_zp`` (asymmetric): the zero point is not rounded and the range not
    widened, so lo and hi are both exact (GGUF Q4_1: ``x = d * q + m``).
    """
    qmin, qmax = qrange(bits)
    if symmetric:
        amax = torch.maximum(lo.abs(), hi.abs())
        scale = (amax / qmax).clamp_min(_EPS)
        return scale, torch.zeros_like(scale)
    if float_zp:
        scale = ((hi - lo) / (qmax - qmin)).clamp_min(_EPS)
        return scale, qmin - lo / scale
    lo = lo.clamp(max=0.0)
    hi = hi.clamp(min=0.0)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(_EPS)
    zp = torch.round(qmin - lo / scale).clamp(qmin, qmax)
    return scale, zp


def quantize(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, bits: int,
             float_zp: bool = False) -> torch.Tensor:
    """Integers (as floats): clamp(round(x / scale) + zp, qmin, qmax); broadcasting.

    ``float_zp``: the zero point is real, so it goes inside the rounding.
    """
    qmin, qmax = qrange(bits)
    if float_zp:
        return torch.clamp(torch.round(x / scale + zp), qmin, qmax)
    return torch.clamp(torch.round(x / scale) + zp, qmin, qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
    return (q - zp) * scale


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, bits: int,
               float_zp: bool = False) -> torch.Tensor:
    """Quantize and dequantize: what the integer model computes, in float."""
    return dequantize(quantize(x, scale, zp, bits, float_zp), scale, zp)


def _quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row linear-interpolated quantile of a 2-D tensor (no size limit, unlike torch.quantile)."""
    n = x.shape[1]
    s = x.sort(dim=1).values  # (rows, n)
    pos = q * (n - 1)
    i0 = int(pos)
    i1 = min(i0 + 1, n - 1)
    frac = pos - i0
    return s[:, i0] * (1 - frac) + s[:, i1] * frac


def observe_range(rows: torch.Tensor, args: QuantArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """The range [lo, hi] (each (rows, 1)) that the observer picks for each row."""
    rows = rows.float()
    if args.observer == "percentile":
        p = float(args.percentile) / 100.0
        if args.symmetric:
            hi = _quantile(rows.abs(), p)
            lo = -hi
        else:
            lo, hi = _quantile(rows, 1.0 - p), _quantile(rows, p)
        return lo[:, None], hi[:, None]
    lo, hi = rows.amin(dim=1, keepdim=True), rows.amax(dim=1, keepdim=True)
    if args.observer == "mse":
        return _mse_range(rows, lo, hi, args.bits, args.symmetric, args.float_zero_point)
    return lo, hi


def _mse_range(rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int,
               symmetric: bool, float_zp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrink [lo, hi] by the factor r in [0.2, 1] minimizing sum (x - q(x))^2, per row."""
    best = torch.full_like(lo, float("inf"))  # (rows, 1)
    best_lo, best_hi = lo.clone(), hi.clone()
    for i in range(MSE_GRID):
        r = 1.0 - MSE_MAX_SHRINK * i / MSE_GRID
        c_lo, c_hi = lo * r, hi * r
        scale, zp = params_from_range(c_lo, c_hi, bits, symmetric, float_zp)
        err = (fake_quant(rows, scale, zp, bits, float_zp) - rows).pow(2).sum(dim=1, keepdim=True)  # (rows, 1)
        better = err < best
        best = torch.where(better, err, best)
        best_lo = torch.where(better, c_lo, best_lo)
        best_hi = torch.where(better, c_hi, best_hi)
    return best_lo, best_hi


def quantize_weight(w: torch.Tensor, args: QuantArgs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest quantization of a weight (out, in) with the args' observer.

    Returns the dequantized weight (out, in) and scale / zero point shaped as
    compressed-tensors stores them (:func:`scale_shape`).
    """
    rows = to_rows(w.float(), args)  # (n_rows, row_len)
    lo, hi = observe_range(rows, args)
    fzp = args.float_zero_point and not args.symmetric
    scale, zp = params_from_range(lo, hi, args.bits, args.symmetric, fzp)  # (n_rows, 1)
    wq = fake_quant(rows, scale, zp, args.bits, fzp).reshape(w.shape).to(w.dtype)
    shape = scale_shape(tuple(w.shape), args)
    return wq, scale.reshape(shape), zp.reshape(shape)


# ------------------------------------------------------------ activations (static, per tensor)
def weighted_quantile(values: torch.Tensor, weights: torch.Tensor, q: float) -> float:
    """The q-quantile of a weighted sample (values (n,), weights (n,) >= 0)."""
    order = values.argsort()
    v, w = values[order].double(), weights[order].double()
    cdf = w.cumsum(0) / w.sum()
    i = int(torch.searchsorted(cdf, torch.tensor([q], dtype=cdf.dtype)).item())
    return float(v[min(i, len(v) - 1)])


def act_clip(values: torch.Tensor, weights: torch.Tensor, absmax: float, args: QuantArgs) -> float:
    """The clipping threshold of a symmetric per-tensor activation quantizer.

    ``values`` are |x| from the calibration set, summarized as a weighted
    sample (:class:`llmcal.quant.stats.ActStats`: the largest values exactly,
    weight 1, plus a uniform sample of the rest); ``absmax`` the exact maximum.
    """
    if args.observer == "minmax" or values.numel() == 0:
        return float(absmax)
    if args.observer == "percentile":
        return min(float(absmax), weighted_quantile(values, weights, float(args.percentile) / 100.0))
    qmin, qmax = qrange(args.bits)
    half = (qmax - qmin) / 2.0  # the activation quantizer's scale is clip / half (see rtn.py)
    v, w = values.double(), weights.double()
    best, best_c = float("inf"), float(absmax)
    for i in range(ACT_MSE_GRID):  # geometric: an outlier can put the bulk at 1/1000 of the max
        c = absmax * 10.0 ** (-3.0 * i / (ACT_MSE_GRID - 1))
        scale = max(c / half, _EPS)
        q = torch.clamp(torch.round(v / scale), qmin, qmax) * scale
        err = float((w * (q - v).pow(2)).sum())
        if err < best:
            best, best_c = err, c
    return best_c
