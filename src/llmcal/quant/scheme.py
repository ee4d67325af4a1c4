"""What to quantize and how: :class:`QuantArgs` (one tensor's format) and :class:`Recipe`.

Integers are signed, as in the compressed-tensors format: ``bits`` b gives the
range [-2^(b-1), 2^(b-1) - 1]; dequantization is ``(q - zero_point) * scale``.
Symmetric quantization has ``zero_point = 0``.  Asymmetric quantization has an
integer zero point (compressed-tensors, AutoAWQ, vLLM's kernels), or, with
``float_zero_point``, a real one: ``x = (q - z) * scale`` with ``z`` not rounded,
i.e. GGUF's Q4_1 ``x = d * q + m`` (simulation only; the export refuses it).

Granularity (which elements share one scale):

* ``tensor``: one scale for the whole tensor;
* ``channel``: one per output channel (a weight row) -- for activations, one per
  token, which is what per-token dynamic quantization means;
* ``group``: one per ``group_size`` consecutive input channels of a row
  (AWQ/GPTQ's groups; the input width must divide by it).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace

from llmcal.quant.errors import QuantError

GRANULARITIES = ("tensor", "channel", "group")
OBSERVERS = ("minmax", "percentile", "mse")
METHODS = ("rtn", "smoothquant", "awq", "gptq")


@dataclass(frozen=True)
class QuantArgs:
    """The integer format of one tensor and the observer that sets its range."""

    bits: int = 4
    granularity: str = "group"
    group_size: int | None = 64
    symmetric: bool = True
    observer: str = "minmax"
    percentile: float = 99.9  # for observer="percentile": the kept fraction of |x|, in percent
    dynamic: bool = False  # activations only: scales from each token at run time
    float_zero_point: bool = False  # asymmetric only: zero point not rounded (GGUF Q4_1's min)

    def validate(self, name: str = "weights") -> "QuantArgs":
        """Raise :class:`QuantError` naming the field when a setting is impossible."""
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise QuantError(f"{name}.bits", f"must be an integer from 2 to 8, got {self.bits!r}")
        if self.granularity not in GRANULARITIES:
            raise QuantError(f"{name}.granularity",
                             f"unknown {self.granularity!r}; use one of {', '.join(GRANULARITIES)}")
        if self.granularity == "group":
            if not isinstance(self.group_size, int) or self.group_size < 2:
                raise QuantError(f"{name}.group_size", f"must be an integer >= 2 for granularity "
                                 f"'group', got {self.group_size!r}")
        if self.observer not in OBSERVERS:
            raise QuantError(f"{name}.observer",
                             f"unknown {self.observer!r}; use one of {', '.join(OBSERVERS)}")
        if not 50.0 < float(self.percentile) <= 100.0:
            raise QuantError(f"{name}.percentile", f"must be in (50, 100], got {self.percentile!r}")
        if self.float_zero_point and self.symmetric:
            raise QuantError(f"{name}.float_zero_point", "a float zero point needs symmetric=False")
        if self.dynamic and self.granularity != "channel":
            raise QuantError(f"{name}.dynamic", "dynamic activation quantization is per token "
                             "(granularity 'channel')")
        return self

    def check_width(self, in_features: int, where: str, name: str = "weights") -> None:
        """The group size must divide the input width of every quantized layer."""
        if self.granularity == "group" and in_features % int(self.group_size or 1):
            raise QuantError(f"{name}.group_size",
                             f"{self.group_size} does not divide the input width {in_features} of "
                             f"{where}; pick a divisor (e.g. 64 for hidden size 576)")

    def label(self) -> str:
        g = {"tensor": "t", "channel": "c", "group": f"g{self.group_size}"}[self.granularity]
        sym = "sym" if self.symmetric else ("asymf" if self.float_zero_point else "asym")
        return f"{self.bits}b-{g}-{sym}-{self.observer}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Recipe:
    """A quantization method with its weight (and optional activation) formats.

    ``method``: ``rtn`` (round-to-nearest with the weights' observer),
    ``smoothquant`` (Xiao et al. 2023; migrate activation outliers into the
    weights, then quantize both), ``awq`` (Lin et al. 2024; activation-aware
    per-channel scales and clipping, then round-to-nearest) or ``gptq``
    (Frantar et al. 2023; columns rounded in turn with the error fed back
    through the inverse Hessian of the calibration inputs; always sequential:
    each layer is calibrated on the previous layers' quantized outputs).
    ``activations``: None = weight-only; else the activation format (per-token
    dynamic, or static per-tensor with the observer on the calibration set).
    """

    method: str = "rtn"
    weights: QuantArgs = field(default_factory=QuantArgs)
    activations: QuantArgs | None = None
    alpha: float = 0.5  # SmoothQuant's migration strength
    awq_grid: int = 20  # AWQ's exponents 0, 1/grid, ..., (grid-1)/grid
    awq_clip: bool = True
    awq_clip_grid: int = 20  # AWQ's clipping ratios 1, 1 - 0.5/grid, ..., 0.5
    sequential: bool = False  # next layer's calibration inputs through the quantized layer
    search_tokens: int = 2048  # AWQ: calibration tokens (whole samples) used in the scale search
    smooth_all: bool = False  # SmoothQuant: also the groups whose prev is a linear (up -> down, v -> o)
    gptq_block: int = 128  # GPTQ: columns per lazy batch update (the result does not depend on it)
    gptq_act_order: bool = False  # GPTQ: columns by descending diag(H) (groups then fixed up front)
    gptq_damp: float = 0.01  # GPTQ: H += gptq_damp * mean(diag(H)) * I
    # linears left in float: regexes matched in full against module names ("model.layers.0.mlp.down_proj")
    ignore: tuple[str, ...] = ()
    # SmoothQuant's smoothing (this alpha) before the method, as a recipe's earlier stage (rtn, awq, gptq)
    smooth: float | None = None

    def ignores(self, name: str) -> bool:
        """Whether the linear ``name`` stays in float (it matches one of :attr:`ignore`)."""
        return any(re.fullmatch(p, name) for p in self.ignore)

    def validate(self) -> "Recipe":
        if self.method not in METHODS:
            raise QuantError("method", f"unknown {self.method!r}; use one of {', '.join(METHODS)}")
        for i, pat in enumerate(self.ignore):
            try:
                re.compile(pat)
            except re.error as err:
                raise QuantError(f"ignore[{i}]", f"{pat!r} is not a regular expression ({err})") from None
        if self.smooth is not None:
            if self.method == "smoothquant":
                raise QuantError("smooth", "smoothquant smooths already; a smoothing stage goes before rtn, awq "
                                 "or gptq")
            if not 0.0 <= float(self.smooth) <= 1.0:
                raise QuantError("smooth", f"SmoothQuant's alpha must be in [0, 1], got {self.smooth!r}")
        self.weights.validate("weights")
        if self.activations is not None:
            self.activations.validate("activations")
            if self.activations.granularity == "group":
                raise QuantError("activations.granularity", "per-group activation quantization is not "
                                 "supported; use 'channel' (per token, dynamic) or 'tensor' (static)")
        if self.method == "smoothquant" and not 0.0 <= float(self.alpha) <= 1.0:
            raise QuantError("alpha", f"SmoothQuant's alpha must be in [0, 1], got {self.alpha!r}")
        if self.awq_grid < 1 or self.awq_clip_grid < 1:
            raise QuantError("awq_grid", "AWQ's grids need at least one point")
        if self.method == "gptq":
            if not isinstance(self.gptq_block, int) or self.gptq_block < 1:
                raise QuantError("gptq_block", f"must be an integer >= 1, got {self.gptq_block!r}")
            if not 0.0 < float(self.gptq_damp) <= 1.0:
                raise QuantError("gptq_damp", f"must be in (0, 1], got {self.gptq_damp!r}")
        if self.search_tokens < 16:
            raise QuantError("search_tokens", f"need at least 16, got {self.search_tokens}")
        return self

    def label(self) -> str:
        a = "" if self.activations is None else (
            f"a{self.activations.bits}-" + ("dyn" if self.activations.dynamic else self.activations.observer))
        extra = (f"-alpha{self.alpha:g}{'-all' if self.smooth_all else ''}"
                 if self.method == "smoothquant" else ("-act" if self.method == "gptq" and self.gptq_act_order
                                                       else ""))
        pre = f"sq{self.smooth:g}+" if self.smooth is not None else ""
        ign = f"-ignore{len(self.ignore)}" if self.ignore else ""
        return f"{pre}{self.method}-w{self.weights.label()}{'-' + a if a else ''}{extra}{ign}"

    def with_(self, **kw) -> "Recipe":
        return replace(self, **kw)

    def to_dict(self) -> dict:
        d = asdict(self)
        return d
