"""Faster fp32 linear layers on CPUs where a pre-packed kernel beats torch's default matmul.

torch's fp32 ``F.linear`` on the CPU goes through MKL's ``sgemm``, which packs
the weight matrix anew on every call and, on some AMD CPUs, runs a generic
kernel (96 GFLOP/s on the embedded model's shapes on a Zen 5 core, issue #17).
Two kernels already inside torch's CPU build work on a weight packed once:

* ``onednn``: oneDNN's blocked layout, called through
  ``torch.ops.mkldnn._linear_pointwise`` (the op torch's own inductor uses on a
  frozen CPU graph), which reads and writes ordinary dense tensors, so no
  layout conversion runs around it; about twice the default on that Zen 5 core.
  ``mkldnn_linear``, which the first version called, needs the input converted
  to oneDNN's tensor and the output back on every call: 7 % of MC scoring time
  on a Zen 4 core, and 70 against 96-100 GFLOP/s on a 16-row decode step;
* ``mkl``: MKL's packed GEMM (``torch.ops.mkl._mkl_linear`` on a weight from
  ``_mkl_reorder_linear_weight``), which skips the per-call packing: 1.65x the
  default on the 16-row decode shapes of an Intel Xeon core, where oneDNN
  gains nothing.

Which one is faster depends on the CPU, so the backend decides at load time
with a short probe (:func:`choose_matmul`):

1. time every distinct linear shape of the model, each way, on a small
   batch of rows (about a second in all);
2. check that the fastest packed path gives the same numbers on a short fixed
   sequence: the same argmax at every position, and the log-probabilities
   that reach results (the next token's, as scoring reads them, and the
   argmax's, as greedy decoding reads them) within ``1e-4`` of the default
   path's;
3. switch the linear layers to it only when it is faster by more than 5 %
   and exact (the check is skipped when neither is faster: nothing would use
   it; an inexact fastest kernel gives way to the other one when that is also
   faster and exact).

``matmul=default`` in ``--model_args`` (or ``LLMCAL_MATMUL=default``) turns
it off; ``matmul=onednn`` / ``matmul=mkl`` force one (the exactness check still
runs and is reported).  The choice and the measured speeds go into the
backend's ``describe()``, so into ``config.json`` and ``results.json``.

The switch keeps every ``nn.Linear`` module and its parameters as they are
(``state_dict``, ``save_pretrained``, the fingerprint, quantization and
post-training see the same model); each layer only gets an instance
``forward`` that runs the kernel on a packed copy of its weight, and falls back to
``F.linear`` whenever that copy could be wrong or the caller needs gradients:
non-fp32 input, a weight changed in place or replaced since it was packed, or
autograd on.

The probe's timings depend only on the CPU, torch's version and thread count and
the model's linear shapes, so they are kept per machine (:func:`probe_cache_path`,
``~/.cache/llmcal/matmul_probe.json``) and later loads skip the timing; the
exactness check, which depends on the weights, runs whenever oneDNN would be used.
"""

from __future__ import annotations

import functools
import json
import os
import time
import types
from pathlib import Path
from typing import Any

MODES = ("auto", "onednn", "mkl", "default")
KERNELS = ("onednn", "mkl")  # the packed kernels, in the order ties are broken
MAX_DELTA = 1e-4  # max |delta log-prob| the oneDNN path may differ by (issue #17)
MIN_SPEEDUP = 1.05
PROBE_ROWS = 16  # rows of the timing batch: a decode step near the compute-bound batch size
PROBE_SECONDS = 0.4  # time budget of the timing part of the probe


def requested_mode(matmul: str | None) -> str:
    """The mode asked for: ``model_args`` ``matmul`` first, then ``$LLMCAL_MATMUL``, else ``auto``."""
    value = matmul if matmul not in (None, "") else os.environ.get("LLMCAL_MATMUL", "auto")
    mode = str(value).strip().lower()
    if mode not in MODES:
        source = "--model_args matmul" if matmul not in (None, "") else "LLMCAL_MATMUL"
        raise ValueError(f"{source}: unknown {value!r}; use one of {', '.join(MODES)}")
    return mode


def _linears(model) -> list:
    """The model's plain fp32 CPU ``nn.Linear`` layers (subclasses such as quantized layers are left alone)."""
    import torch

    return [m for m in model.modules()
            if type(m) is torch.nn.Linear and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu"]


def kernel_available(kernel: str) -> bool:
    """Whether this torch build has the packed kernel (oneDNN; MKL's packed GEMM ops)."""
    import torch

    if kernel == "onednn":
        return bool(torch.backends.mkldnn.is_available())
    return bool(torch.backends.mkl.is_available()) and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight")


@functools.cache
def _pointwise_available() -> bool:
    """Whether this torch build has oneDNN's dense-in, dense-out linear (``mkldnn._linear_pointwise``).

    Asked on every linear call, so answered once per process (the build does not change)."""
    import torch

    return hasattr(torch.ops.mkldnn, "_linear_pointwise") and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def _pack(kernel: str, w):
    """``w`` (out, in) packed once for ``kernel``: oneDNN's blocked tensor, or MKL's packed buffer."""
    import torch

    if kernel == "onednn":
        if _pointwise_available():
            return torch.ops.mkldnn._reorder_linear_weight(w, PROBE_ROWS)  # a hint only: any rows work
        return w.to_mkldnn()
    return torch.ops.mkl._mkl_reorder_linear_weight(w, PROBE_ROWS)  # packed for a 16-row call; any rows work


def _call(kernel: str, flat, packed_w, w, packed_b, b):
    """``flat`` (rows, in) through ``kernel`` on the packed weight: (rows, out).

    MKL's packed GEMM runs only for exactly the rows it was packed for (16); torch's
    ``_mkl_linear`` sends any other count to the ordinary ``sgemm`` on the original weight.
    A call of 8-15 rows is therefore padded to 16 with zero rows (each output row depends on its
    own input row only), which is faster than the ordinary call from about 8 rows on (a 30-layer
    stack of the model's shapes, weights from memory, one Xeon core: 8 rows 57 ms padded against
    64 ms, 12 rows 56 against 80, 16 rows 53 against 71; 3 rows 55 against 35); fewer rows and
    more than 16 take the ordinary call, as the default path does.
    """
    import torch
    import torch.nn.functional as F

    if kernel == "onednn":
        if _pointwise_available():
            return torch.ops.mkldnn._linear_pointwise(flat, packed_w, b, "none", [], "")  # dense (rows, out)
        return torch._C._nn.mkldnn_linear(flat.to_mkldnn(), packed_w, packed_b).to_dense()
    rows = flat.shape[0]
    if rows == PROBE_ROWS:
        return torch.ops.mkl._mkl_linear(flat, packed_w, w, b, PROBE_ROWS)
    if PROBE_ROWS // 2 <= rows < PROBE_ROWS:
        padded = flat.new_zeros((PROBE_ROWS, flat.shape[1]))  # (16, in)
        padded[:rows] = flat
        return torch.ops.mkl._mkl_linear(padded, packed_w, w, b, PROBE_ROWS)[:rows]
    return F.linear(flat, w, b)


class _Packed(dict):
    """A layer's packed weight (oneDNN or MKL), its kernel, and what it was packed from.

    oneDNN's blocked tensors cannot be deep-copied ("Cannot access storage of OpaqueTensorImpl"), and
    quantization, post-training and the exports all ``copy.deepcopy`` a loaded model: a copy gets a
    stale entry instead (no packed weight, a pointer no tensor has), so the copied layer runs on
    torch's default path, exactly, until it is switched on again with :func:`enable_onednn`.
    """

    def __deepcopy__(self, memo):
        return _Packed(kernel=self.get("kernel", "onednn"), weight=None, bias=None, version=-1, ptr=-1, bias_ptr=-1)


def _packed_forward(self, x):
    """``F.linear`` through the packed kernel; the default path whenever that is not exact."""
    import torch
    import torch.nn.functional as F

    packed = self._llmcal_onednn
    bias_ptr = None if self.bias is None else self.bias.data_ptr()
    if (x.dtype != torch.float32 or x.device.type != "cpu" or self.weight._version != packed["version"]
            or self.weight.data_ptr() != packed["ptr"] or bias_ptr != packed["bias_ptr"]
            or (torch.is_grad_enabled() and (self.weight.requires_grad or x.requires_grad))):
        return F.linear(x, self.weight, self.bias)
    shape = x.shape
    flat = x.reshape(-1, shape[-1]).contiguous()  # (rows, in)
    kernel = packed.get("kernel", "onednn")
    y = _call(kernel, flat, packed["weight"], self.weight, packed["bias"], self.bias)  # (rows, out)
    return y.view(*shape[:-1], y.shape[-1])


def enable_packed(model, kernel: str) -> int:
    """Run the model's fp32 linear layers through ``kernel`` ("onednn" or "mkl"); returns how many were switched."""
    import torch

    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    disable_onednn(model)
    layers = _linears(model)
    with torch.no_grad():
        for m in layers:
            bias = None if m.bias is None else m.bias.detach()
            m._llmcal_onednn = _Packed({
                "kernel": kernel,
                "weight": _pack(kernel, m.weight.detach()),  # (out, in), packed once
                "bias": bias.to_mkldnn() if bias is not None and kernel == "onednn" and not _pointwise_available()
                else None,  # the dense-in op takes the layer's own bias
                "version": m.weight._version,  # changed in place since packing: fall back
                "ptr": m.weight.data_ptr(),  # replaced since packing: fall back
                "bias_ptr": None if m.bias is None else m.bias.data_ptr(),
            })
            m.forward = types.MethodType(_packed_forward, m)
    return len(layers)


def enable_onednn(model) -> int:
    """Run the model's fp32 linear layers through oneDNN; returns how many were switched."""
    return enable_packed(model, "onednn")


def disable_onednn(model) -> None:
    """Undo :func:`enable_packed` (either kernel): every layer back on torch's default path."""
    for m in model.modules():
        if "_llmcal_onednn" in m.__dict__:
            del m.__dict__["_llmcal_onednn"]
            m.__dict__.pop("forward", None)


def packed_kernel(model) -> str | None:
    """The packed kernel the model's linear layers run on, or None (torch's default path)."""
    for m in model.modules():
        if "_llmcal_onednn" in m.__dict__:
            return m.__dict__["_llmcal_onednn"].get("kernel", "onednn")
    return None


def onednn_enabled(model) -> bool:
    """Whether the linear layers run on a packed kernel (oneDNN or MKL's)."""
    return packed_kernel(model) is not None


def _time_shapes(model, kernel: str | None, budget: float) -> tuple[float, float]:
    """(seconds, FLOPs) of one pass over every linear layer of the model on ``PROBE_ROWS`` rows,
    through ``kernel`` ("onednn", "mkl") or torch's default path (None)."""
    import torch
    import torch.nn.functional as F

    counts: dict[tuple[int, int], int] = {}
    for m in _linears(model):
        counts[tuple(m.weight.shape)] = counts.get(tuple(m.weight.shape), 0) + 1
    total, flops = 0.0, 0.0
    with torch.inference_mode():
        for (out_f, in_f), count in counts.items():
            x = torch.randn(PROBE_ROWS, in_f)  # (rows, in)
            w = torch.randn(out_f, in_f) * in_f ** -0.5  # (out, in)
            if kernel is not None:
                wp = _pack(kernel, w)
                def call():
                    return _call(kernel, x, wp, w, None, None)
            else:
                def call():
                    return F.linear(x, w)
            call()  # warm-up: oneDNN builds its primitive on the first call
            reps, spent = 0, 0.0
            start = time.perf_counter()
            while reps < 1 or (spent < budget / len(counts) and reps < 50):
                call()
                reps += 1
                spent = time.perf_counter() - start
            total += spent / reps * count
            flops += 2.0 * PROBE_ROWS * in_f * out_f * count
    return total, flops


def _logprobs(model, ids):
    import torch

    with torch.inference_mode():
        return torch.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), dim=-1)  # (1, t, vocab)


def exactness(model, n_tokens: tuple[int, ...] = (12, PROBE_ROWS), kernel: str = "onednn",
              keep: bool = False) -> dict[str, Any]:
    """Max |delta log-prob| and argmax agreement of ``kernel`` against the default path on fixed sequences.

    One sequence a length of ``n_tokens``, so that every way a packed kernel runs is checked
    (MKL's: padded to 16 rows, and exactly 16; fewer rows run the default path itself).  The log-probs compared are
    those llmcal reads: each next token's (scoring) and each position's argmax (greedy
    decoding); the far tail of the vocabulary, which no signal reads, differs by a few ulps
    more and is not part of the check.  ``keep``: leave the model on ``kernel`` afterwards (the
    probe that is about to use it then packs the weights once, not twice).
    """
    import torch

    if isinstance(n_tokens, int):
        n_tokens = (n_tokens,)
    vocab = int(getattr(model.config, "vocab_size", 0) or 2)
    was_on = packed_kernel(model)
    seqs = [(torch.arange(n, dtype=torch.long)[None] * 7919 + 11) % vocab for n in n_tokens]  # (1, t) each, fixed
    disable_onednn(model)
    refs = [_logprobs(model, ids) for ids in seqs]
    enable_packed(model, kernel)
    gots = [_logprobs(model, ids) for ids in seqs]
    if not keep:
        disable_onednn(model)
    delta, same = 0.0, True
    for ids, ref, got in zip(seqs, refs, gots):
        top = ref.argmax(-1)  # (1, t)
        following = torch.cat([ids[:, 1:], top[:, -1:]], dim=1)  # (1, t): the token each position scores
        read = torch.stack([top, following], dim=2)  # (1, t, 2)
        delta = max(delta, float((got.gather(2, read) - ref.gather(2, read)).abs().max()))
        same = same and bool((got.argmax(-1) == top).all())
    if was_on is not None and not keep:
        enable_packed(model, was_on)
    return {"max_delta_logprob": delta, "same_argmax": same, "exact": delta <= MAX_DELTA and same}


def probe_cache_path() -> Path:
    """Where the speed probe's timings are kept: ``$LLMCAL_CACHE_DIR`` or ``~/.cache/llmcal``."""
    root = os.environ.get("LLMCAL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "llmcal")
    return Path(root) / "matmul_probe.json"


def _machine_key(model) -> str:
    """What the timings depend on: the CPU, torch's version and threads, and the linear shapes."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:  # a VM's "model name" can be the same for CPU generations (both "AMD EPYC" on Zen 3 and Zen 5):
        with open("/proc/cpuinfo") as f:  # the family, model and vector extensions tell them apart
            fields: dict[str, str] = {}
            for ln in f:
                if not ln.strip():
                    break  # the first processor's block is enough
                name, _, value = ln.partition(":")
                fields[name.strip()] = value.strip()
        vector = sorted(x for x in fields.get("flags", "").split() if x.startswith(("avx", "amx")))
        cpu = (f"{fields.get('model name', cpu)} family {fields.get('cpu family', '?')} "
               f"model {fields.get('model', '?')} {' '.join(vector)}")
    except OSError:
        pass
    shapes = sorted({tuple(m.weight.shape) for m in _linears(model)})
    onednn = "pointwise" if _pointwise_available() else "mkldnn_linear"  # timings of the other call are stale
    return f"{cpu}|torch {torch.__version__}|threads {torch.get_num_threads()}|onednn {onednn}|{shapes}"


def _read_probe_cache() -> dict[str, Any]:
    try:
        data = json.loads(probe_cache_path().read_text())
    except (OSError, ValueError):  # none yet, or unreadable: probe again
        return {}
    return data if isinstance(data, dict) else {}


def _write_probe_cache(key: str, entry: dict[str, float]) -> None:
    """Keep the timings so later loads on this machine skip the ~1-4 s probe (best effort)."""
    from llmcal.core.files import atomic_write_bytes

    data = _read_probe_cache()
    data[key] = entry
    try:
        path = probe_cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(data, indent=1).encode(), point="in_probe_cache")
    except OSError:
        pass  # a read-only home: the probe simply runs again next time


def choose_matmul(model, matmul: str | None = None) -> dict[str, Any]:
    """Probe, decide, and switch the model's fp32 linear layers to a packed kernel when one is faster and exact.

    Returns what ``describe()`` reports: ``matmul`` ("onednn", "mkl" or "default"), the mode asked
    for, why, and (when probed) every path's measured GFLOP/s, the chosen kernel's speedup and
    the exactness check.
    """
    mode = requested_mode(matmul)
    info: dict[str, Any] = {"matmul": "default", "requested": mode}
    if mode == "default":
        info["reason"] = "turned off (matmul=default)"
        return info
    kernels = [k for k in KERNELS if kernel_available(k)]
    if mode in KERNELS and mode not in kernels:
        info["reason"] = f"this torch build has no {mode} kernel"
        return info
    if not kernels:
        info["reason"] = "this torch build has neither oneDNN nor MKL's packed GEMM"
        return info
    if not _linears(model):
        info["reason"] = "no fp32 CPU linear layers"
        return info
    start = time.perf_counter()
    key = _machine_key(model)
    cached = _read_probe_cache().get(key)
    if cached is not None and all(f"t_{k}" in cached for k in kernels):  # timed before on this CPU and shapes
        times = {k: cached[f"t_{k}"] for k in ["default"] + kernels}
        flops = cached["flops"]
        info["probe"] = "cached"
    else:
        t_default, flops = _time_shapes(model, None, PROBE_SECONDS / (1 + len(kernels)))
        times = {"default": t_default}
        for k in kernels:
            times[k] = _time_shapes(model, k, PROBE_SECONDS / (1 + len(kernels)))[0]
        _write_probe_cache(key, {**{f"t_{k}": v for k, v in times.items()}, "flops": flops})
        info["probe"] = "measured"
    for k, t in times.items():
        info[f"{k}_gflops"] = round(flops / t / 1e9, 2)
    if mode in KERNELS:
        order = [mode]
    else:  # fastest first; only those faster than the default by MIN_SPEEDUP
        order = sorted((k for k in kernels if times["default"] / times[k] >= MIN_SPEEDUP), key=lambda k: times[k])
    best = min(kernels, key=lambda k: times[k])
    info["speedup"] = round(times["default"] / times[order[0] if order else best], 3)
    use = None
    if not order:  # no need to check what will not be used
        info["reason"] = "no packed kernel is faster on this CPU"
    for k in order:
        check = exactness(model, kernel=k, keep=True)  # the model is on k now
        info.update(check)
        info["checked"] = k
        if mode in KERNELS:
            use, info["reason"] = k, f"forced (matmul={k})"
            break
        if check["exact"]:
            use, info["reason"] = k, f"{k} is faster on this CPU and exact"
            info["speedup"] = round(times["default"] / times[k], 3)
            break
        info["reason"] = f"{k} is not exact here (max |delta log-prob| {check['max_delta_logprob']:.2e})"
    if use is not None:
        if packed_kernel(model) != use:  # exactness(keep=True) normally left it packed already
            enable_packed(model, use)
        info["matmul"] = use
    elif order:  # a kernel was checked and refused: back on the default path
        disable_onednn(model)
    info["probe_seconds"] = round(time.perf_counter() - start, 3)
    return info
