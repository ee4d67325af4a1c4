"""Models rebuilt from mixed SVD factors of a base and a post-trained checkpoint, and evaluated.

He & Cao 2025 (arXiv 2509.17866) test their reading of post-training ("the
singular values scale like a temperature; the function lives in the
coordinated rotation of the singular vectors") by swapping factors between
the two models.  For every decoder-block linear layer, with
``W_base = U_b S_b V_b^T`` and ``W_post = U_p S_p V_p^T``:

==============================  ==========================  =====================================
mode                            matrix                      the paper's prediction
==============================  ==========================  =====================================
``post``                        ``U_p S_p V_p^T``           (the post model itself)
``base``                        ``U_b S_b V_b^T``           (the base model's matrices)
``post_vectors_base_values``    ``U_p S_b V_p^T``           keeps post's performance
``base_vectors_post_values``    ``U_b S_p V_b^T``           behaves like base
``left_rotation_only``          ``U_p S_p V_b^T``           crashes (coordination broken)
``right_rotation_only``         ``U_b S_p V_p^T``           crashes (coordination broken)
==============================  ==========================  =====================================

Each singular pair ``(u_i, v_i)`` is defined only up to a common sign, so
before mixing sides the post factors are sign-aligned to the base ones
(``d_i = sign(u_b_i . u_p_i + v_b_i . v_p_i)``, applied to both ``u_p_i`` and
``v_p_i``, which leaves ``W_post`` unchanged); without it a one-sided mix
would flip random components and crash for a trivial reason.  Everything
that is not a block linear layer (embeddings, norms) is taken from the post
model, so only the matrices differ.

Evaluation: perplexity on held-out text, multiple-choice accuracy and ECE of
``option_prob`` (15 uniform bins) with the existing :class:`HFBackend`.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

MODES = ("post", "base", "post_vectors_base_values", "base_vectors_post_values",
         "left_rotation_only", "right_rotation_only")


def aligned_factors(w_base, w_post):
    """Thin float64 SVDs of both, post signs aligned to base: (U_b, s_b, V_b, U_p, s_p, V_p)."""
    import torch

    from llmcal.posttrain.svd import svd64

    ub, sb, vb = svd64(w_base)  # (m, r), (r,), (n, r)
    up, sp, vp = svd64(w_post)
    d = torch.sign((ub * up).sum(0) + (vb * vp).sum(0))  # (r,)
    d[d == 0] = 1.0
    return ub, sb, vb, up * d, sp, vp * d


def _check_modes(modes: Sequence[str]) -> None:
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"ablation mode {mode!r} is unknown; use one of {', '.join(MODES)}")


def rebuild_matrix(w_base, w_post, mode: str, factors=None):
    """The ``mode`` matrix (m, n) from the two SVDs (``factors``: :func:`aligned_factors`, if known)."""
    _check_modes([mode])
    ub, sb, vb, up, sp, vp = factors if factors is not None else aligned_factors(w_base, w_post)
    u, s, v = {
        "post": (up, sp, vp),
        "base": (ub, sb, vb),
        "post_vectors_base_values": (up, sb, vp),
        "base_vectors_post_values": (ub, sp, vb),
        "left_rotation_only": (up, sp, vb),
        "right_rotation_only": (ub, sp, vp),
    }[mode]
    return ((u * s) @ v.T).to(w_post.dtype)  # (m, r) * (r,) @ (r, n) -> (m, n)


def build_ablations(base_model, post_model, modes: Sequence[str]) -> dict[str, Any]:
    """Copies of ``post_model`` whose block linear layers are rebuilt in each mode (one SVD per matrix)."""
    import torch

    from llmcal.posttrain.weights import paired_linears, weight

    _check_modes(modes)
    refs = paired_linears(base_model, post_model)
    models = {mode: copy.deepcopy(post_model) for mode in modes}
    with torch.no_grad():
        for ref in refs:
            wb, wp = weight(base_model, ref.name), weight(post_model, ref.name)
            factors = aligned_factors(wb, wp)
            for mode, model in models.items():
                weight(model, ref.name).copy_(rebuild_matrix(wb, wp, mode, factors))
    return {mode: m.eval() for mode, m in models.items()}


def build_ablation(base_model, post_model, mode: str):
    """A copy of ``post_model`` whose block linear layers are rebuilt in ``mode``."""
    return build_ablations(base_model, post_model, [mode])[mode]


def perplexity(model, tokenizer, texts: Sequence[str], max_length: int = 256) -> float:
    """exp(mean token negative log-likelihood) over the texts (each truncated to ``max_length``)."""
    import torch

    total_nll, total_tok = 0.0, 0
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[:, :max_length]  # (1, t)
            if ids.shape[1] < 2:
                continue
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()  # (t-1, vocab)
            nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
            total_nll += float(nll)
            total_tok += ids.shape[1] - 1
    if total_tok == 0:
        raise ValueError("perplexity: no text with at least 2 tokens")
    return math.exp(total_nll / total_tok)


def mc_eval(model, tokenizer, items, style: str = "cloze", n_bins: int = 15) -> dict[str, float]:
    """Accuracy, ECE and mean ``option_prob`` of the model on multiple-choice items."""
    import numpy as np

    from llmcal.backends.hf import HFBackend
    from llmcal.metrics import ece
    from llmcal.signals.mc import mc_signals
    from llmcal.tasks.prompts import build_request

    backend = HFBackend(model, tokenizer, hidden_layers=())
    scores = backend.score_mc([build_request(it, style) for it in items])
    conf, correct = [], []
    for it, sc in zip(items, scores):
        pred, sig = mc_signals(sc.logprobs, sc.n_tokens)
        conf.append(sig["option_prob"])
        correct.append(pred == it.answer)
    c, y = np.asarray(conf), np.asarray(correct, dtype=float)
    return {"accuracy": float(y.mean()), "ece": ece(c, y, n_bins=n_bins), "mean_confidence": float(c.mean()),
            "n_items": len(items)}


def heldout_texts(data_dir=None, n: int = 40, min_chars: int = 200) -> list[str]:
    """Held-out prose for perplexity: the first ``n`` non-empty SciQ test ``support`` passages."""
    import json

    from llmcal.tasks.registry import resolve_data_dir

    path = resolve_data_dir(data_dir, "sciq") / "sciq_test.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: needed for the held-out perplexity text (SciQ support passages)")
    rows = json.loads(path.read_text())
    texts = [r["support"].strip() for r in rows if len(r.get("support", "").strip()) >= min_chars]
    return texts[:n]


def run_ablations(base_model, post_model, tokenizer, items, texts: Sequence[str],
                  modes: Sequence[str] = MODES, style: str = "cloze",
                  log=None) -> dict[str, dict[str, Any]]:
    """Build and evaluate each mode; returns ``{mode: {perplexity, accuracy, ece, ...}}``."""
    import time

    t0 = time.perf_counter()
    built = build_ablations(base_model, post_model, [m for m in modes if m != "post"])
    built["post"] = post_model
    build_s = time.perf_counter() - t0
    out: dict[str, dict[str, Any]] = {}
    for mode in modes:
        t0 = time.perf_counter()
        model = built.pop(mode)
        res = {"perplexity": perplexity(model, tokenizer, texts)} if texts else {}
        if items:
            res.update(mc_eval(model, tokenizer, items, style))
        res["eval_s"] = round(time.perf_counter() - t0, 2)
        res["build_s_all_modes"] = round(build_s, 2)
        out[mode] = res
        if log:
            log(mode, res)
        del model
    return out
