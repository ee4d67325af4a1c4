"""Activation statistics, collected layer by layer with forward hooks.

The calibration samples are run to the first decoder layer once; then one
layer at a time: hooks on the layer's linears summarize their inputs
(:class:`ActStats`), the layer is quantized, and its outputs become the next
layer's inputs (float outputs, AutoAWQ's scheme, or quantized outputs, the
sequential scheme of GPTQ / llm-compressor).
Only one layer's inputs are held at a time, so memory stays bounded by
``n_samples x seq_len x hidden`` floats whatever the depth.

:class:`ActStats` keeps, per linear input (channels C), in bounded memory:
the per-channel max |x| (SmoothQuant's s_j) and mean |x| (AWQ's s_X), the
exact global max and, when asked (static activation quantization's
percentile and MSE observers), the ``TOPK`` largest |x| exactly and a
stratified random sample of the rest (``PER_UPDATE`` values a forward call,
each weighted by the values it stands for; thinned to about ``SAMPLE``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

SAMPLE = 65536
PER_UPDATE = 1024
TOPK = 1024


class _Stop(Exception):
    pass


class ActStats:
    """A bounded summary of one linear's inputs over the calibration set."""

    def __init__(self, channels: int, seed: int = 0, values: bool = True) -> None:
        self.channels = channels
        self.values = values  # keep the top-K and the sample (static activation observers only)
        self.n_tokens = 0
        self.n_values = 0
        self.absmax_c = torch.zeros(channels)  # (C,)
        self.abssum_c = torch.zeros(channels, dtype=torch.float64)  # (C,)
        self.top = torch.empty(0)  # (<= TOPK,) largest |x|
        self._samples: list[tuple[torch.Tensor, float]] = []  # (values, weight each) per update
        self._gen = torch.Generator().manual_seed(1_000_003 + seed)  # its own stream

    def update(self, x: torch.Tensor) -> None:
        a = x.detach().reshape(-1, self.channels).float().abs()  # (tokens, C)
        self.n_tokens += a.shape[0]
        self.n_values += a.numel()
        self.absmax_c = torch.maximum(self.absmax_c, a.amax(dim=0))
        self.abssum_c += a.sum(dim=0, dtype=torch.float64)
        if not self.values:
            return
        flat = a.flatten()
        self.top = torch.cat([self.top, flat.topk(min(TOPK, flat.numel())).values])
        self.top = self.top.topk(min(TOPK, self.top.numel())).values
        # a stratified sample: PER_UPDATE values drawn from each update, weighted by its size
        k = min(PER_UPDATE, flat.numel())
        idx = torch.randint(flat.numel(), (k,), generator=self._gen)
        self._samples.append((flat[idx], flat.numel() / k))
        if len(self._samples) * PER_UPDATE > 2 * SAMPLE:  # thin out: keep every other stratum, doubled
            self._samples = [(v, w * 2) for v, w in self._samples[::2]]

    @property
    def sample(self) -> torch.Tensor:
        return torch.cat([v for v, _ in self._samples]) if self._samples else torch.empty(0)

    @property
    def absmax(self) -> float:
        return float(self.absmax_c.max())

    def mean_abs(self) -> torch.Tensor:
        """(C,) mean |x| per channel (AWQ's activation salience)."""
        return (self.abssum_c / max(self.n_tokens, 1)).float()

    def weighted_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """|x| as a weighted sample: the top values (weight 1) and the sampled rest."""
        if self.top.numel() == 0:
            return self.top, self.top
        t = float(self.top.min())
        vals = torch.cat([v for v, _ in self._samples])
        wts = torch.cat([torch.full_like(v, w) for v, w in self._samples])
        keep = vals < t  # the values at or above t are the exact top ones
        vals, wts = vals[keep], wts[keep]
        wts = wts * (self.n_values - self.top.numel()) / max(float(wts.sum()), 1e-12)
        return torch.cat([self.top, vals]), torch.cat([torch.ones_like(self.top), wts])


@dataclass
class LayerInputs:
    """The calibration samples' inputs to one decoder layer."""

    hidden: list[torch.Tensor]  # each (1, T, hidden)
    kwargs: list[dict] = field(default_factory=list)  # position embeddings, mask, ... per sample
    # the kwargs of every layer (layer -> sample -> dict): they differ between layers where
    # layers differ in kind (Gemma 3: sliding-window layers get a banded mask and local RoPE,
    # every sixth layer the full causal mask and global RoPE); the tensors are shared, not copied
    layer_kwargs: list[list[dict]] = field(default_factory=list)

    def use_layer(self, i: int) -> None:
        """Make ``kwargs`` the ones decoder layer ``i`` receives."""
        if self.layer_kwargs:
            self.kwargs = self.layer_kwargs[i]


def capture_first_inputs(model, layers, samples: list[torch.Tensor]) -> LayerInputs:
    """Run each sample (1, T) into the decoder layers; keep the first's input and every layer's kwargs.

    Every layer's ``forward`` is replaced for the duration by a stub that records
    the keyword arguments the model passes it and returns its input unchanged,
    so the pass costs the embedding only; the last layer's stub stops it.
    """
    got = LayerInputs([], [], [[] for _ in layers])
    drop = ("past_key_values", "past_key_value", "use_cache", "hidden_states")

    def stub(i):
        def forward(*args, **kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            if i == 0:
                got.hidden.append(h.detach())
            got.layer_kwargs[i].append({k: v for k, v in kwargs.items() if k not in drop})
            if i == len(layers) - 1:
                raise _Stop
            return h
        return forward

    for i, layer in enumerate(layers):
        layer.forward = stub(i)  # an instance attribute: Module.__call__ finds it first
    try:
        with torch.no_grad():
            for ids in samples:
                try:
                    model(input_ids=ids, use_cache=False)
                except _Stop:
                    pass
    finally:
        for layer in layers:
            del layer.forward
    got.kwargs = got.layer_kwargs[0]
    return got


def run_layer(layer, inputs: LayerInputs) -> list[torch.Tensor]:
    """The layer's outputs (1, T, hidden) for every sample."""
    outs = []
    with torch.no_grad():
        for h, kw in zip(inputs.hidden, inputs.kwargs):
            o = layer(h, **kw)
            outs.append((o[0] if isinstance(o, tuple) else o).detach())
    return outs


def inject_outlier(x: torch.Tensor, magnitude: float) -> torch.Tensor:
    """A copy of ``x`` (1, T, C) whose first token's channel 0 is ``magnitude`` x max |x|."""
    x = x.clone()
    x[..., 0, 0] = magnitude * float(x.abs().max())
    return x


def collect(layer, inputs: LayerInputs, linears: dict[str, str], capture: dict[str, str] | None = None,
            capture_tokens: int = 0, outlier: float | None = None, seed: int = 0, values: bool = True):
    """Run the layer once over the calibration inputs, observing with hooks.

    ``linears``: {key: module path} of the linears whose inputs are summarized
    (one per distinct input).  ``capture``: {key: module path} whose inputs
    (args and kwargs) are also kept for the first samples up to
    ``capture_tokens`` tokens (AWQ's search set).  ``outlier``: inject one
    extreme value into the observed inputs of the first sample (the outlier
    experiment); the layer itself computes on the clean input.

    Returns ({key: ActStats}, {key: [(args, kwargs), ...]}, the layer's outputs).
    """
    from llmcal.quant.mapping import get_module

    stats: dict[str, ActStats] = {}
    kept: dict[str, list] = {k: [] for k in (capture or {})}
    state = {"sample": 0, "tokens": 0}
    handles = []

    def stat_hook(key):
        def hook(mod, args):
            x = args[0]
            if outlier is not None and state["sample"] == 0:
                x = inject_outlier(x, outlier)
            if key not in stats:
                stats[key] = ActStats(x.shape[-1], seed=seed, values=values)
            stats[key].update(x)
        return hook

    def keep_hook(key):
        def hook(mod, args, kwargs):
            if state["tokens"] >= capture_tokens:
                return
            args = tuple(a.detach() if torch.is_tensor(a) else a for a in args)
            if outlier is not None and state["sample"] == 0 and args:
                args = (inject_outlier(args[0], outlier),) + args[1:]
            kept[key].append((args, dict(kwargs)))
        return hook

    try:
        for key, path in linears.items():
            handles.append(get_module(layer, path).register_forward_pre_hook(stat_hook(key)))
        for key, path in (capture or {}).items():
            handles.append(get_module(layer, path).register_forward_pre_hook(keep_hook(key), with_kwargs=True))
        outs = []
        with torch.no_grad():
            for i, (h, kw) in enumerate(zip(inputs.hidden, inputs.kwargs)):
                state["sample"] = i
                o = layer(h, **kw)
                outs.append((o[0] if isinstance(o, tuple) else o).detach())
                state["tokens"] += h.shape[1]
    finally:
        for hd in handles:
            hd.remove()
    return stats, kept, outs
