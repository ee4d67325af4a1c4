"""Faster fp32 linear layers on CPUs where oneDNN beats torch's default matmul.

torch's fp32 ``F.linear`` on the CPU goes through MKL, which runs a generic
kernel on some AMD CPUs (96 GFLOP/s on the embedded model's shapes on a Zen 5
core, issue #17), while oneDNN, already inside every CPU build of torch,
reaches about twice that.  Which one is faster depends on the CPU, so the
backend decides at load time with a short probe (:func:`choose_matmul`):

1. time every distinct linear shape of the model, both ways, on a small
   batch of rows (about a second in all);
2. check that the oneDNN path gives the same numbers on a short fixed
   sequence: the same argmax at every position, and the log-probabilities
   that reach results (the next token's, as scoring reads them, and the
   argmax's, as greedy decoding reads them) within ``1e-4`` of the default
   path's;
3. switch the linear layers to oneDNN only when it is faster by more than
   5 % and exact (the check is skipped when oneDNN is not faster: nothing
   would use it).

``matmul=default`` in ``--model_args`` (or ``LLMCAL_MATMUL=default``) turns
it off; ``matmul=onednn`` forces it (the exactness check still runs and is
reported).  The choice and the measured speeds go into the backend's
``describe()``, so into ``config.json`` and ``results.json``.

The switch keeps every ``nn.Linear`` module and its parameters as they are
(``state_dict``, ``save_pretrained``, the fingerprint, quantization and
post-training see the same model); each layer only gets an instance
``forward`` that runs oneDNN on a packed copy of its weight, and falls back to
``F.linear`` whenever that copy could be wrong or the caller needs gradients:
non-fp32 input, a weight changed in place or replaced since it was packed, or
autograd on.

The probe's timings depend only on the CPU, torch's version and thread count and
the model's linear shapes, so they are kept per machine (:func:`probe_cache_path`,
``~/.cache/llmcal/matmul_probe.json``) and later loads skip the timing; the
exactness check, which depends on the weights, runs whenever oneDNN would be used.
"""

from __future__ import annotations

import json
import os
import time
import types
from pathlib import Path
from typing import Any

MODES = ("auto", "onednn", "default")
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


class _Packed(dict):
    """A layer's packed oneDNN weight and what it was packed from.

    oneDNN's blocked tensors cannot be deep-copied ("Cannot access storage of OpaqueTensorImpl"), and
    quantization, post-training and the exports all ``copy.deepcopy`` a loaded model: a copy gets a
    stale entry instead (no packed weight, a pointer no tensor has), so the copied layer runs on
    torch's default path, exactly, until it is switched on again with :func:`enable_onednn`.
    """

    def __deepcopy__(self, memo):
        return _Packed(weight=None, bias=None, version=-1, ptr=-1, bias_ptr=-1)


def _onednn_forward(self, x):
    """``F.linear`` through oneDNN on the packed weight; the default path whenever that is not exact."""
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
    y = torch._C._nn.mkldnn_linear(flat.to_mkldnn(), packed["weight"], packed["bias"]).to_dense()  # (rows, out)
    return y.view(*shape[:-1], y.shape[-1])


def enable_onednn(model) -> int:
    """Run the model's fp32 linear layers through oneDNN; returns how many were switched."""
    import torch

    layers = _linears(model)
    with torch.no_grad():
        for m in layers:
            m._llmcal_onednn = _Packed({
                "weight": m.weight.detach().to_mkldnn(),  # (out, in), oneDNN's blocked layout
                "bias": None if m.bias is None else m.bias.detach().to_mkldnn(),
                "version": m.weight._version,  # changed in place since packing: fall back
                "ptr": m.weight.data_ptr(),  # replaced since packing: fall back
                "bias_ptr": None if m.bias is None else m.bias.data_ptr(),
            })
            m.forward = types.MethodType(_onednn_forward, m)
    return len(layers)


def disable_onednn(model) -> None:
    """Undo :func:`enable_onednn`: every layer back on torch's default path."""
    for m in model.modules():
        if "_llmcal_onednn" in m.__dict__:
            del m.__dict__["_llmcal_onednn"]
            m.__dict__.pop("forward", None)


def onednn_enabled(model) -> bool:
    return any("_llmcal_onednn" in m.__dict__ for m in model.modules())


def _time_shapes(model, use_onednn: bool, budget: float) -> tuple[float, float]:
    """(seconds, FLOPs) of one pass over every linear layer of the model on ``PROBE_ROWS`` rows."""
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
            if use_onednn:
                wp, xm = w.to_mkldnn(), x
                def call():
                    return torch._C._nn.mkldnn_linear(xm.to_mkldnn(), wp, None).to_dense()
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


def exactness(model, n_tokens: int = 6) -> dict[str, Any]:
    """Max |delta log-prob| and argmax agreement of oneDNN against the default path on a fixed sequence.

    The log-probs compared are those llmcal reads: each next token's (scoring) and each
    position's argmax (greedy decoding); the far tail of the vocabulary, which no signal
    reads, differs by a few ulps more and is not part of the check.
    """
    import torch

    vocab = int(getattr(model.config, "vocab_size", 0) or 2)
    ids = (torch.arange(n_tokens, dtype=torch.long)[None] * 7919 + 11) % vocab  # (1, t), fixed, no tokenizer
    was_on = onednn_enabled(model)
    disable_onednn(model)
    ref = _logprobs(model, ids)
    enable_onednn(model)
    got = _logprobs(model, ids)
    if not was_on:
        disable_onednn(model)
    top = ref.argmax(-1)  # (1, t)
    following = torch.cat([ids[:, 1:], top[:, -1:]], dim=1)  # (1, t): the token each position scores
    read = torch.stack([top, following], dim=2)  # (1, t, 2)
    delta = float((got.gather(2, read) - ref.gather(2, read)).abs().max())
    same = bool((got.argmax(-1) == top).all())
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
    return f"{cpu}|torch {torch.__version__}|threads {torch.get_num_threads()}|{shapes}"


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
    """Probe, decide, and switch the model's fp32 linear layers to oneDNN when that is faster and exact.

    Returns what ``describe()`` reports: ``matmul`` ("onednn" or "default"), the mode asked for,
    why, and (when probed) both paths' measured GFLOP/s and the exactness check.
    """
    import torch

    mode = requested_mode(matmul)
    info: dict[str, Any] = {"matmul": "default", "requested": mode}
    if mode == "default":
        info["reason"] = "turned off (matmul=default)"
        return info
    if not torch.backends.mkldnn.is_available():
        info["reason"] = "this torch build has no oneDNN"
        return info
    if not _linears(model):
        info["reason"] = "no fp32 CPU linear layers"
        return info
    start = time.perf_counter()
    key = _machine_key(model)
    cached = _read_probe_cache().get(key)
    if cached is not None:  # this CPU, torch, thread count and these shapes were timed before
        t_default, t_onednn, flops = cached["t_default"], cached["t_onednn"], cached["flops"]
        info["probe"] = "cached"
    else:
        t_default, flops = _time_shapes(model, False, PROBE_SECONDS / 2)
        t_onednn, _ = _time_shapes(model, True, PROBE_SECONDS / 2)
        _write_probe_cache(key, {"t_default": t_default, "t_onednn": t_onednn, "flops": flops})
        info["probe"] = "measured"
    info.update({
        "default_gflops": round(flops / t_default / 1e9, 2),
        "onednn_gflops": round(flops / t_onednn / 1e9, 2),
        "speedup": round(t_default / t_onednn, 3),
    })
    faster = t_default / t_onednn >= MIN_SPEEDUP
    if mode == "auto" and not faster:  # no need to check what will not be used
        use, info["reason"] = False, "oneDNN is not faster on this CPU"
    else:
        check = exactness(model)
        info.update(check)
        if mode == "onednn":
            use, info["reason"] = True, "forced (matmul=onednn)"
        elif not check["exact"]:
            delta = check["max_delta_logprob"]
            use, info["reason"] = False, f"oneDNN is not exact here (max |delta log-prob| {delta:.2e})"
        else:
            use, info["reason"] = True, "oneDNN is faster on this CPU and exact"
    if use:
        enable_onednn(model)
        info["matmul"] = "onednn"
    info["probe_seconds"] = round(time.perf_counter() - start, 3)
    return info
