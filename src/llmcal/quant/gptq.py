"""GPTQ (Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers", ICLR).

GPTQ quantizes a linear's weight W (out, in) one input column at a time and,
after each column, moves the rounding error onto the columns not yet
quantized so that the layer's output X W^T on the calibration inputs X (n, in)
changes as little as possible (the Optimal Brain Surgeon update, eq. 3 of the
paper, restricted to a fixed column order):

    H = 2 X^T X / n                                  (in, in), the Hessian of ||X W^T - X Q^T||^2
    H += damp I,   damp = 0.01 * mean(diag(H))      (the paper's dampening)
    U = chol(H^-1), upper triangular                 (sec. 4, step 3: Cholesky reformulation)
    for column j:  q_j = quant(w_j);  e = (w_j - q_j) / U[j, j];  w_{j+1:} -= e U[j, j+1:]

The update of the later columns is applied lazily in blocks of ``block_size``
columns (step 2 of the paper): inside a block column by column, to the rest of
the matrix once per block, which gives the same numbers as the unblocked loop.

Options:

* ``act_order``: process the columns by descending diag(H) (the inputs with the
  largest activations first; the paper's "act-order" of its repository).
  With groups, the group's scale and zero point are then fixed up front from
  the original weights of the group (its columns are no longer reached in
  order: llm-compressor's ``actorder="weight"`` / static groups), so the export
  keeps the plain group layout (no ``g_idx``).
* groups: without act-order, the scale and zero point of a group of
  ``group_size`` columns are set by the weights' observer when the group's first
  column is reached, from the columns as the earlier errors have updated them.
  Per channel and per tensor: set up front from the original weights.

The quantization grid (:mod:`llmcal.quant.observers`: ``params_from_range``,
``quantize``, ``dequantize``) and the :class:`~llmcal.quant.scheme.QuantArgs`
are those of round-to-nearest, so :mod:`llmcal.quant.export` writes a GPTQ model
unchanged.  Dead inputs (diag(H) = 0: never active) get H_jj = 1 and a zero
weight column, as in the reference code.
"""

from __future__ import annotations

import torch

from llmcal.quant.observers import dequantize, observe_range, params_from_range, quantize, scale_shape, to_rows
from llmcal.quant.scheme import QuantArgs

DAMP = 0.01
BLOCK = 128


class HessianAccumulator:
    """H = 2 X^T X / n over every token x (in,) a linear reads, accumulated in float64."""

    def __init__(self, channels: int) -> None:
        self.sum = torch.zeros(channels, channels, dtype=torch.float64)  # (in, in)
        self.n = 0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, self.sum.shape[0]).float()  # (tokens, in)
        self.sum += (x.t() @ x).double()  # (in, in)
        self.n += x.shape[0]

    def hessian(self) -> torch.Tensor:
        return (2.0 * self.sum / max(self.n, 1)).float()  # (in, in)


def layer_hessians(layer, inputs, linears: dict[str, str]):
    """Run ``layer`` once over the calibration inputs; {key: H (in, in)} of each linear input, and its outputs.

    ``linears``: {key: module path}, one linear per distinct input (q/k/v share one).
    ``inputs``: :class:`llmcal.quant.stats.LayerInputs`.
    """
    from llmcal.quant.mapping import get_module

    acc: dict[str, HessianAccumulator] = {}
    handles = []

    def hook(key):
        def fn(mod, args):
            x = args[0]  # (1, T, in)
            if key not in acc:
                acc[key] = HessianAccumulator(x.shape[-1])
            acc[key].update(x)
        return fn

    try:
        for key, path in linears.items():
            handles.append(get_module(layer, path).register_forward_pre_hook(hook(key)))
        outs = []
        with torch.no_grad():
            for h, kw in zip(inputs.hidden, inputs.kwargs):
                o = layer(h, **kw)
                outs.append((o[0] if isinstance(o, tuple) else o).detach())
    finally:
        for hd in handles:
            hd.remove()
    return {k: a.hessian() for k, a in acc.items()}, outs


def _params(cols: torch.Tensor, args: QuantArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point, each (out, 1), of the columns ``cols`` (out, k) sharing one scale per row."""
    lo, hi = observe_range(cols, args)  # (out, 1) each
    fzp = args.float_zero_point and not args.symmetric
    return params_from_range(lo, hi, args.bits, args.symmetric, fzp)


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, args: QuantArgs, block_size: int = BLOCK,
                  act_order: bool = False, damp: float = DAMP):
    """GPTQ of ``weight`` (out, in) given ``hessian`` (in, in).

    Returns the dequantized weight (out, in) in ``weight``'s dtype and the scale
    and zero point in compressed-tensors' shapes (:func:`~llmcal.quant.observers.scale_shape`),
    like :func:`~llmcal.quant.observers.quantize_weight`.
    """
    out, n = weight.shape
    fzp = args.float_zero_point and not args.symmetric
    W = weight.detach().float().clone()  # (out, in)
    H = hessian.detach().float().clone()  # (in, in)
    dead = torch.diag(H) == 0  # (in,)
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    g = int(args.group_size) if args.granularity == "group" else None  # type: ignore[arg-type]

    # scales and zero points: one column of (out,) per group (or one for every column)
    n_groups = n // g if g else 1
    scale = torch.zeros(out, n_groups)  # (out, G)
    zp = torch.zeros(out, n_groups)  # (out, G)
    fixed = args.granularity != "group" or act_order  # set up front from the original weights
    if fixed:
        rows = to_rows(W, args)  # tensor (1, out*in); channel (out, in); group (out*G, g)
        s, z = _params(rows, args)  # (rows, 1)
        if args.granularity == "tensor":
            scale[:], zp[:] = s.reshape(()), z.reshape(())
        else:
            scale, zp = s.reshape(out, n_groups), z.reshape(out, n_groups)

    perm = torch.argsort(torch.diag(H), descending=True, stable=True) if act_order else torch.arange(n)  # (in,)
    W = W[:, perm]  # (out, in), columns in processing order
    H = H[perm][:, perm]  # (in, in)
    group_of = (perm // g) if g else torch.zeros(n, dtype=torch.long)  # (in,): group of processed column j

    H += damp * torch.mean(torch.diag(H)) * torch.eye(n)
    L = torch.linalg.cholesky(H)  # (in, in) lower, H = L L^T
    U = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)  # (in, in) upper, H^-1 = U^T U

    # blocks hold whole groups (in order), so a group's first column sees every earlier update
    bs = max(1, int(block_size))
    if g and not act_order:
        bs = max(g, bs // g * g)
    Q = torch.zeros_like(W)  # (out, in)
    for i1 in range(0, n, bs):
        i2 = min(i1 + bs, n)
        W1 = W[:, i1:i2].clone()  # (out, b)
        Q1 = torch.zeros_like(W1)  # (out, b)
        E1 = torch.zeros_like(W1)  # (out, b) errors scaled by 1 / U_jj
        U1 = U[i1:i2, i1:i2]  # (b, b)
        for i in range(i2 - i1):
            j = i1 + i
            if not fixed and j % g == 0:  # type: ignore[operator]
                s, z = _params(W1[:, i:i + g], args)  # (out, 1) from the updated columns of the group
                scale[:, j // g], zp[:, j // g] = s[:, 0], z[:, 0]  # type: ignore[operator]
            k = int(group_of[j])
            s, z = scale[:, k], zp[:, k]  # (out,)
            w = W1[:, i]  # (out,)
            q = dequantize(quantize(w, s, z, args.bits, fzp), s, z)  # (out,)
            Q1[:, i] = q
            e = (w - q) / U1[i, i]  # (out,)
            W1[:, i:] -= e[:, None] * U1[i, i:][None, :]  # (out, b - i)
            E1[:, i] = e
        Q[:, i1:i2] = Q1
        W[:, i2:] -= E1 @ U[i1:i2, i2:]  # (out, n - i2): the lazy batch update

    inv = torch.argsort(perm)
    Q = Q[:, inv]  # (out, in), original column order
    shape = scale_shape((out, n), args)
    if args.granularity == "tensor":
        scale, zp = scale[:1, :1], zp[:1, :1]
    return Q.to(weight.dtype), scale.reshape(shape), zp.reshape(shape)


def quantize_linear_(linear: torch.nn.Linear, hessian: torch.Tensor, args: QuantArgs, block_size: int = BLOCK,
                     act_order: bool = False, damp: float = DAMP) -> dict[str, torch.Tensor]:
    """Replace ``linear.weight`` by its GPTQ fake-quantized value; return scale and zero point."""
    with torch.no_grad():
        wq, scale, zp = gptq_quantize(linear.weight.data, hessian, args, block_size, act_order, damp)
        linear.weight.copy_(wq)  # not .data: the copy must bump the version (fast_linear's check)
    return {"scale": scale, "zero_point": zp}
