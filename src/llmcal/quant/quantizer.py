"""The driver: calibrate and quantize a model layer by layer with one :class:`Recipe`.

Order of work (every input check first, then the forward passes):

1. validate the recipe (bits, granularity, group size, alpha), resolve the
   layer mapping, check that the group size divides every quantized linear's
   input width, and that there are calibration samples;
2. run the samples to the first decoder layer;
3. per decoder layer: observe its linears' inputs (:mod:`llmcal.quant.stats`);
   SmoothQuant: fold s into the norms; AWQ: search and fold s, then search the
   clipping; GPTQ: the Hessian of every linear input, then each weight by
   :mod:`llmcal.quant.gptq`; round-to-nearest every other linear's weight with the observer; add the
   activation quantizers (W8A8); the next layer's inputs are this layer's
   float outputs from the observing pass (AutoAWQ's scheme, one pass a
   layer), or with ``Recipe.sequential`` its quantized outputs (GPTQ's and
   llm-compressor's scheme, one more pass).

The model is changed in place (fake quantization: float weights that hold
integer values times their scales).  The returned :class:`QuantResult` keeps
the scales and zero points that :mod:`llmcal.quant.export` writes.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from llmcal.quant.errors import QuantError
from llmcal.quant.mapping import LayerMapping, get_module, group_applies, input_keys, resolve_mapping
from llmcal.quant.scheme import Recipe


@dataclass
class QuantResult:
    recipe: Recipe
    mapping: LayerMapping
    n_samples: int
    n_tokens: int
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # process CPU time (all threads): comparable on a loaded machine
    peak_rss_mb: float = 0.0  # peak resident memory of the process during quantization
    extra_rss_mb: float = 0.0  # peak minus the resident memory before it started
    weights: dict[str, dict] = field(default_factory=dict)  # full path -> {scale, zero_point}
    act_clips: dict[str, float | None] = field(default_factory=dict)  # full path -> static clip / None
    awq_exponents: dict[str, float] = field(default_factory=dict)  # "layer.prev" -> chosen a
    smooth_max: dict[str, float] = field(default_factory=dict)  # "layer.prev" -> max s_j

    def summary(self) -> dict[str, Any]:
        return {"recipe": self.recipe.to_dict(), "label": self.recipe.label(), "mapping": self.mapping.name,
                "n_samples": self.n_samples, "n_tokens": self.n_tokens, "seconds": round(self.seconds, 2),
                "cpu_seconds": round(self.cpu_seconds, 2),
                "peak_rss_mb": round(self.peak_rss_mb, 1), "extra_rss_mb": round(self.extra_rss_mb, 1),
                "awq_exponents": self.awq_exponents, "smooth_max": self.smooth_max,
                "n_linears": len(self.weights)}


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _PeakRSS:
    """Samples the resident memory every 20 ms in a thread; ``peak`` after exit."""

    def __enter__(self):
        self.start = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def _loop(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_mb())


def check_inputs(model, recipe: Recipe, mapping: LayerMapping | str | None,
                 samples: list | None = None, n_required: int | None = None) -> LayerMapping:
    """Every check that can fail, before any forward pass; returns the resolved mapping."""
    recipe.validate()
    mapping = resolve_mapping(model, mapping)
    layers = get_module(model, mapping.layers)
    n_kept = 0
    for i, layer in enumerate(layers):
        for path in mapping.linears:
            lin = get_module(layer, path)
            if recipe.ignores(f"{mapping.layers}.{i}.{path}"):
                continue
            n_kept += 1
            recipe.weights.check_width(lin.in_features, f"{mapping.layers}.{i}.{path}")
    if recipe.ignore and n_kept == 0:
        raise QuantError("ignore", f"the patterns {list(recipe.ignore)} leave no linear layer to quantize")
    if samples is not None:
        if len(samples) == 0:
            raise QuantError("n_samples", "no calibration samples")
        if n_required is not None and len(samples) < n_required:
            raise QuantError("n_samples", f"{len(samples)} calibration samples, fewer than the "
                             f"{n_required} requested")
    return mapping


def quantize_model(model, samples: list, recipe: Recipe, mapping: LayerMapping | str | None = None,
                   outlier: float | None = None, n_required: int | None = None,
                   progress: Callable[[int, int], None] | None = None, seed: int = 0) -> QuantResult:
    """Quantize ``model`` in place with ``recipe``, calibrated on ``samples`` (each (1, T) token ids).

    ``outlier``: the outlier experiment -- one extreme activation (``outlier`` x
    the max |x|) is injected into what every linear's observer sees in the
    first calibration sample.
    """
    import torch

    from llmcal.quant import awq, smoothquant
    from llmcal.quant.rtn import add_act_quant, quantize_linear_
    from llmcal.quant.stats import capture_first_inputs, collect, run_layer

    mapping = check_inputs(model, recipe, mapping, samples, n_required)
    layers = get_module(model, mapping.layers)
    keys = input_keys(mapping)
    distinct = {k: k for k in dict.fromkeys(keys.values())}  # key -> path of one linear reading it
    acts = recipe.activations
    static = acts is not None and not acts.dynamic
    result = QuantResult(recipe, mapping, len(samples), int(sum(s.shape[1] for s in samples)))
    t0, c0 = time.perf_counter(), time.process_time()
    model.eval()
    if recipe.method == "rtn" and not static and recipe.smooth is None:  # weight-only RTN reads no data
        with _PeakRSS() as mem, torch.no_grad():
            for i, layer in enumerate(layers):
                for path in mapping.linears:
                    if recipe.ignores(f"{mapping.layers}.{i}.{path}"):
                        continue
                    lin = get_module(layer, path)
                    result.weights[f"{mapping.layers}.{i}.{path}"] = quantize_linear_(lin, recipe.weights)
                    if acts is not None:
                        add_act_quant(model, lin, acts.bits, None)
                        result.act_clips[f"{mapping.layers}.{i}.{path}"] = None
        result.seconds, result.cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        result.peak_rss_mb, result.extra_rss_mb = mem.peak, mem.peak - mem.start
        return result
    with _PeakRSS() as mem, torch.no_grad():
        inputs = capture_first_inputs(model, layers, samples)
        for i, layer in enumerate(layers):
            name = f"{mapping.layers}.{i}"
            inputs.use_layer(i)  # this layer's mask and position embeddings (sliding / global)
            capture: dict[str, str] = {}
            if recipe.method == "awq":
                capture = {g.inspect: g.inspect for g in mapping.groups}
                capture.update(distinct)
            if recipe.smooth is not None:  # a recipe's smoothing stage: fold s into the norms first
                sstats, _, _ = collect(layer, inputs, distinct, None, 0, outlier, seed, values=False)
                for g in mapping.groups:
                    if (g.smooth or recipe.smooth_all) and group_applies(layer, g):
                        s = smoothquant.smooth_group(layer, g, sstats[keys[g.linears[0]]].absmax_c, recipe.smooth)
                        result.smooth_max[f"{name}.{g.prev}"] = float(s.max())
                del sstats
            hessians: dict = {}
            if recipe.method == "gptq":  # H = 2 X^T X / n of each distinct linear input, float layer
                from llmcal.quant.gptq import layer_hessians

                hessians, fp_out = layer_hessians(layer, inputs, distinct)
                stats, kept = {}, {}
                if static:
                    stats, _, _ = collect(layer, inputs, distinct, None, 0, outlier, seed, values=True)
            else:
                stats, kept, fp_out = collect(layer, inputs, distinct, capture, recipe.search_tokens, outlier,
                                              seed, values=static and recipe.method != "smoothquant")

            if recipe.method == "smoothquant":
                for g in mapping.groups:
                    if (g.smooth or recipe.smooth_all) and group_applies(layer, g):
                        s = smoothquant.smooth_group(layer, g, stats[keys[g.linears[0]]].absmax_c,
                                                     recipe.alpha)
                        result.smooth_max[f"{name}.{g.prev}"] = float(s.max())
                if static:  # the activations the quantizer will see are the smoothed ones
                    stats, _, _ = collect(layer, inputs, distinct, None, 0, outlier, seed, values=True)

            if recipe.method == "awq":
                for g in mapping.groups:
                    if not group_applies(layer, g):
                        continue
                    key = keys[g.linears[0]]
                    s, a, _ = awq.search_scales(layer, g, stats[key].mean_abs(), kept[g.inspect],
                                                recipe.weights, recipe.awq_grid)
                    awq.scale_group(layer, g, s)
                    result.awq_exponents[f"{name}.{g.prev}"] = a
                    # the group's inputs are now x / s
                    kept[key] = [((args[0] / s,) + tuple(args[1:]), kw) for args, kw in kept[key]]
                    if g.inspect in kept and g.inspect != key:
                        kept.pop(g.inspect)  # searched already; free it
                if recipe.awq_clip:
                    for path in mapping.linears:
                        if path in mapping.no_clip or not kept.get(keys[path]):
                            continue
                        lin = get_module(layer, path)
                        x = torch.cat([args[0].reshape(-1, lin.in_features) for args, _ in kept[keys[path]]])
                        x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:512]]
                        lin.weight.copy_(awq.search_clip(lin.weight.data, x, recipe.weights,
                                                              recipe.awq_clip_grid))
            kept.clear()

            for path in mapping.linears:
                if recipe.ignores(f"{name}.{path}"):
                    continue  # stays float (smoothing and AWQ scales folded into it are exact)
                lin = get_module(layer, path)
                if recipe.method == "gptq":
                    from llmcal.quant import gptq

                    result.weights[f"{name}.{path}"] = gptq.quantize_linear_(
                        lin, hessians[keys[path]], recipe.weights, recipe.gptq_block, recipe.gptq_act_order,
                        recipe.gptq_damp)
                else:
                    result.weights[f"{name}.{path}"] = quantize_linear_(lin, recipe.weights)
                if acts is not None:
                    clip = None
                    if static:
                        from llmcal.quant.observers import act_clip

                        st = stats[keys[path]]
                        clip = act_clip(*st.weighted_values(), st.absmax, acts)
                    add_act_quant(model, lin, acts.bits, clip)
                    result.act_clips[f"{name}.{path}"] = clip
            # sequential: the next layer sees this layer's quantized outputs (one more pass);
            # otherwise its float outputs, as AutoAWQ does
            # (GPTQ always: the paper calibrates each layer on the quantized model's inputs)
            inputs.hidden = run_layer(layer, inputs) if recipe.sequential or recipe.method == "gptq" else fp_out
            if progress:
                progress(i + 1, len(layers))
    result.seconds, result.cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    result.peak_rss_mb = mem.peak
    result.extra_rss_mb = mem.peak - mem.start
    return result
