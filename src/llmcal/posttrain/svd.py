"""What post-training did to the weights, seen through the SVD of every linear layer.

He & Cao 2025 ("Understanding Post-Training Structural Changes in Large
Language Models", arXiv 2509.17866) compare base and post-trained Qwen2.5 and
report two regularities, for each matrix ``W = U diag(s) V^T``:

1. *near-uniform scaling of the singular values*: ``s_post[i] / s_base[i]``
   is almost one constant across ``i`` (and across layers);
2. *a coordinated orthogonal rotation of the singular vectors*: with
   ``R_U = U_base^T U_post`` and ``R_V = V_base^T V_post`` (both in the
   index space of the singular values), ``R_U`` and ``R_V`` are orthogonal
   and nearly equal, so ``W_post ~ U_base Q diag(s_post) Q^T V_base^T``.

For each pair of matrices this module measures, on the top-``k`` singular
directions:

* ``ratio_mean`` and ``ratio_cv``: mean and coefficient of variation of
  ``s_post / s_base`` over all indices (cv 0 = perfectly uniform scaling);
* ``orth_u`` / ``orth_v``: ``||R^T R - I||_F / sqrt(k)``, 0 when the top-k
  subspaces of base and post coincide (then ``R`` is exactly orthogonal);
* ``lr_similarity``: cosine ``<R_U, R_V>_F / (||R_U|| ||R_V||)``, 1 when the
  left and right rotations are the same (the paper's "consistency");
* ``lr_similarity_offdiag``: the same cosine on the off-diagonal parts only.
  For a small change ``R ~ I + A`` the diagonal makes ``lr_similarity`` ~1
  whatever happened; the off-diagonal part (the rotation's generator) says
  whether the small rotations themselves agree (0 for unrelated ones);
* ``diag_u``: mean ``|R_U[i, i]|``, 1 when the vectors did not rotate at all
  (so a high ``lr_similarity`` is not mistaken for a real rotation);
* ``angles_u`` / ``angles_v``: principal angles between the top-k subspaces
  (``arccos`` of the singular values of ``R``; equal to
  ``scipy.linalg.subspace_angles``, largest first);
* ``rel_change``: ``||W_post - W_base||_F / ||W_base||_F``.

Signs: an SVD fixes each pair ``(u_i, v_i)`` only up to a common sign, so
``R_U`` and ``R_V`` pick up the *same* sign flips and every quantity above is
sign-invariant.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

MATRIX_METRICS = ("ratio_mean", "ratio_cv", "orth_u", "orth_v", "lr_similarity", "lr_similarity_offdiag", "diag_u",
                  "angle_mean_u", "angle_mean_v", "rel_change")


def svd64(w) -> tuple[Any, Any, Any]:
    """Thin SVD in float64: ``U (m, r)``, ``s (r,)`` descending, ``V (n, r)`` (not ``V^T``)."""
    import torch

    u, s, vh = torch.linalg.svd(w.detach().to(torch.float64).cpu(), full_matrices=False)
    return u, s, vh.T  # (m, r), (r,), (n, r)


def principal_angles(r) -> np.ndarray:
    """Principal angles (radians, largest first) from ``R = A^T B`` of two orthonormal bases."""
    import torch

    cos = torch.linalg.svdvals(r).clamp(-1.0, 1.0)  # (k,) descending cosines
    return np.sort(np.arccos(cos.numpy()))[::-1]


def orthogonality_gap(r) -> float:
    """``||R^T R - I||_F / sqrt(k)``: 0 for an orthogonal ``R`` (k, k)."""
    import torch

    k = r.shape[1]
    return float(torch.linalg.matrix_norm(r.T @ r - torch.eye(k, dtype=r.dtype)) / math.sqrt(k))


def _offdiag(r):
    """``R`` (k, k) with its diagonal zeroed: for a small rotation ``R ~ I + A``, the generator ``A``."""
    import torch

    return r - torch.diag(torch.diagonal(r))


def _cosine(a, b) -> float:
    import torch

    denom = float(torch.linalg.matrix_norm(a) * torch.linalg.matrix_norm(b))
    return float((a * b).sum()) / denom if denom > 0 else float("nan")


def compare_matrices(w_base, w_post, k: int | None = 64, keep_spectra: bool = False) -> dict[str, Any]:
    """Every SVD comparison of one base/post matrix pair (m, n); see the module docstring."""
    import torch

    if tuple(w_base.shape) != tuple(w_post.shape):
        raise ValueError(f"shapes differ: base {tuple(w_base.shape)}, post {tuple(w_post.shape)}")
    ub, sb, vb = svd64(w_base)  # (m, r), (r,), (n, r)
    up, sp, vp = svd64(w_post)
    r = sb.shape[0]
    k = r if not k or k > r else int(k)
    # Ratio over the indices where the base has a singular value (a rank-deficient
    # base would divide by ~0).
    ok = sb > sb[0] * 1e-10 if sb[0] > 0 else torch.zeros_like(sb, dtype=torch.bool)
    ratio = (sp[ok] / sb[ok]).numpy()  # (r_ok,)
    ratio_mean = float(ratio.mean()) if ratio.size else float("nan")
    ratio_cv = float(ratio.std() / ratio_mean) if ratio.size and ratio_mean else float("nan")
    r_u = ub[:, :k].T @ up[:, :k]  # (k, k)
    r_v = vb[:, :k].T @ vp[:, :k]  # (k, k)
    lr_sim = _cosine(r_u, r_v)
    ang_u, ang_v = principal_angles(r_u), principal_angles(r_v)
    wb64 = w_base.detach().to(torch.float64).cpu()
    base_norm = float(torch.linalg.matrix_norm(wb64))
    rel = float(torch.linalg.matrix_norm(w_post.detach().to(torch.float64).cpu() - wb64)) / base_norm \
        if base_norm > 0 else float("nan")
    out: dict[str, Any] = {
        "shape": list(w_base.shape),
        "k": k,
        "ratio_mean": ratio_mean,
        "ratio_cv": ratio_cv,
        "orth_u": orthogonality_gap(r_u),
        "orth_v": orthogonality_gap(r_v),
        "lr_similarity": lr_sim,
        "lr_difference": float(torch.linalg.matrix_norm(r_u - r_v) / math.sqrt(2 * k)),
        "lr_similarity_offdiag": _cosine(_offdiag(r_u), _offdiag(r_v)),
        "diag_u": float(torch.diagonal(r_u).abs().mean()),
        "diag_v": float(torch.diagonal(r_v).abs().mean()),
        "angle_mean_u": float(np.degrees(ang_u.mean())),
        "angle_max_u": float(np.degrees(ang_u.max())),
        "angle_mean_v": float(np.degrees(ang_v.mean())),
        "angle_max_v": float(np.degrees(ang_v.max())),
        "rel_change": rel,
    }
    if keep_spectra:
        out.update(sigma_base=sb.numpy(), sigma_post=sp.numpy(), ratio=ratio, r_u=r_u.numpy(), r_v=r_v.numpy(),
                   angles_u=ang_u, angles_v=ang_v)
    return out


def analyze(base_model, post_model, k: int | None = 64,
            progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Compare every decoder-block linear layer of two models of one architecture.

    Returns ``{"k", "rows": [one dict per matrix: name, layer, kind, metrics,
    sigma_base/sigma_post (first 32)], "summary": {...}}``; the summary holds
    the median of each metric over all matrices, the mean/cv of the per-matrix
    ``ratio_mean`` across matrices (uniform scaling across layers?), and the
    same per matrix kind.
    """
    import torch

    from llmcal.posttrain.weights import paired_linears, weight

    refs = paired_linears(base_model, post_model)
    rows = []
    with torch.no_grad():
        for i, ref in enumerate(refs):
            res = compare_matrices(weight(base_model, ref.name), weight(post_model, ref.name), k, keep_spectra=True)
            row = {"name": ref.name, "layer": ref.layer, "kind": ref.kind}
            row.update({key: v for key, v in res.items() if not isinstance(v, np.ndarray)})
            row["sigma_base"] = [float(x) for x in res["sigma_base"][:32]]
            row["sigma_post"] = [float(x) for x in res["sigma_post"][:32]]
            rows.append(row)
            if progress:
                progress(i + 1, len(refs))
    used = sorted({r["k"] for r in rows})
    k_used = (f"{used[0]}" if len(used) == 1 else f"{used[0]}-{used[-1]}") if used else "0"
    return {"k": k, "k_used": k_used, "n_matrices": len(rows), "rows": rows, "summary": summarize(rows)}


#: Below this median relative change ``||W_post - W_base|| / ||W_base||`` two checkpoints count as the same
#: (fp32 round-off of a save/load is ~1e-7; a real fine-tune step is ~1e-4 or more).
NO_CHANGE = 1e-6


def verdict(result: dict[str, Any]) -> list[str]:
    """Sentences a reader can act on, each stating the numbers it rests on.

    * a median relative change under :data:`NO_CHANGE`: "no change", and the
      other metrics are round-off;
    * with the noise control (``result["null"]``, base + random noise of post's
      change norm): the rotation is judged by ``1 - diag_u`` (how far the
      singular vectors moved) against the control's: under half of it, the
      change keeps the existing directions; over twice, it rotates more than
      noise of that size; in between, it rotates like noise, and the rotation
      says nothing beyond the size of the change.  Coordination of the left
      and right rotations is the off-diagonal cosine (He & Cao 2025's claim),
      coordinated when it exceeds the control's by 0.2 and is at least 0.3;
    * without the control: a pointer to ``--null``, since a small change of
      any direction looks "scaled and barely rotated".
    """
    s = result["summary"]["all"]
    rel = s["median_rel_change"]
    if not rel > NO_CHANGE:
        return [f"no change: the median relative change is {rel:.1e} (under {NO_CHANGE:.0e}); the checkpoints are "
                "the same up to round-off, so the rotation and scaling figures are noise"]
    out = [f"singular values scaled by {s['ratio_mean_across']:.4f} on average (spread across matrices "
           f"{s['ratio_cv_across']:.1e}); relative change {rel:.1e}"]
    null = result.get("null")
    if not null:
        out.append("no noise control: run with --null to tell a structured change from one of the same size in a "
                   "random direction")
        return out
    n = null["summary"]["all"]
    moved, moved_null = 1.0 - s["median_diag_u"], 1.0 - n["median_diag_u"]
    figures = f"1 - |diag R_U| {moved:.2e} vs {moved_null:.2e} for noise of the same size"
    if moved < 0.5 * moved_null:
        out.append(f"singular vectors rotate less than noise of the same size ({figures}): the change keeps the "
                   "existing directions")
    elif moved > 2.0 * moved_null:
        out.append(f"singular vectors rotate more than noise of the same size ({figures})")
    else:
        out.append(f"singular vectors rotate like noise of the same size ({figures}): the rotation says nothing "
                   "beyond the size of the change")
    off, off_null = s["median_lr_similarity_offdiag"], n["median_lr_similarity_offdiag"]
    cmp = f"off-diagonal cos(R_U, R_V) {off:.3f} vs {off_null:.3f} for noise"
    if off >= 0.3 and off > off_null + 0.2:
        out.append(f"left and right rotations are coordinated ({cmp})")
    else:
        out.append(f"left and right rotations are not coordinated beyond noise ({cmp})")
    return out


def noise_control(base_model, post_model, seed: int = 0):
    """A null model: each block matrix moved from base by random noise of post's change norm.

    ``W_null = W_base + ||W_post - W_base||_F * G / ||G||_F`` with Gaussian
    ``G`` (m, n).  A small change of *any* direction leaves the singular values
    nearly scaled by one and the vectors nearly unrotated, so the SVD metrics
    of a short fine-tune mean something only next to this control: where they
    match it, the "structure" is just the size of the change.
    """
    import copy

    import torch

    from llmcal.posttrain.weights import paired_linears, weight

    gen = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(base_model)
    with torch.no_grad():
        for ref in paired_linears(base_model, post_model):
            wb, wp = weight(base_model, ref.name), weight(post_model, ref.name)
            g = torch.randn(wb.shape, generator=gen, dtype=torch.float64)  # (m, n)
            step = torch.linalg.matrix_norm(wp.double() - wb.double()) / torch.linalg.matrix_norm(g)
            weight(model, ref.name).copy_((wb.double() + step * g).to(wb.dtype))
    return model.eval()


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the per-matrix metrics, overall and per kind, and the spread of the scaling."""

    def block(sub: list[dict[str, Any]]) -> dict[str, float]:
        out = {f"median_{m}": float(np.nanmedian([r[m] for r in sub])) for m in MATRIX_METRICS}
        means = np.array([r["ratio_mean"] for r in sub], dtype=float)
        out["ratio_mean_across"] = float(np.nanmean(means))
        out["ratio_cv_across"] = float(np.nanstd(means) / np.nanmean(means)) if np.nanmean(means) else float("nan")
        return out

    kinds = sorted({r["kind"] for r in rows})
    return {"all": block(rows), "by_kind": {kd: block([r for r in rows if r["kind"] == kd]) for kd in kinds}}


def metric_grid(rows: list[dict[str, Any]], metric: str) -> tuple[np.ndarray, list[int], list[str]]:
    """A (n_layers, n_kinds) array of one metric (NaN where a layer lacks a kind)."""
    layers = sorted({r["layer"] for r in rows})
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    grid = np.full((len(layers), len(kinds)), np.nan)
    li, ki = {v: i for i, v in enumerate(layers)}, {v: i for i, v in enumerate(kinds)}
    for r in rows:
        grid[li[r["layer"]], ki[r["kind"]]] = r[metric]
    return grid, layers, kinds


_TITLES = {
    "ratio_mean": "mean sigma_post/sigma_base",
    "ratio_cv": "CV of the ratio (0 = uniform)",
    "lr_similarity": "cos(R_U, R_V) (1 = coordinated)",
    "lr_similarity_offdiag": "cos of off-diagonal parts",
    "diag_u": "mean |diag R_U| (1 = no rotation)",
    "orth_u": "||R_U^T R_U - I|| / sqrt(k)",
    "angle_mean_u": "mean principal angle U (deg)",
    "rel_change": "||W_post - W_base|| / ||W_base||",
}


def heatmaps_png(rows: list[dict[str, Any]], metrics: tuple[str, ...] = tuple(_TITLES)) -> bytes:
    """One heatmap per metric (layers down, matrix kinds across), as PNG bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(metrics)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 0.22 * len({r['layer'] for r in rows}) + 2.0), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        grid, layers, kinds = metric_grid(rows, metric)
        im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_title(_TITLES.get(metric, metric), fontsize=8)
        ax.set_xticks(range(len(kinds)), kinds, rotation=60, fontsize=7)
        ax.set_yticks(range(len(layers)), [str(x) for x in layers], fontsize=6)
        bar = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
        bar.ax.tick_params(labelsize=6)
        bar.formatter.set_useOffset(False)  # values like 0.99999x: print them, not "1e-7 + 9.99e-1"
        bar.update_ticks()
    axes[0][0].set_ylabel("layer")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def report_html(result: dict[str, Any], base_name: str, post_name: str) -> str:
    """A self-contained HTML page: summary table per kind and the heatmaps (inline PNG)."""
    import base64
    import html

    png = base64.b64encode(heatmaps_png(result["rows"])).decode()
    cols = ("median_ratio_mean", "median_ratio_cv", "ratio_cv_across", "median_lr_similarity",
            "median_lr_similarity_offdiag", "median_diag_u",
            "median_orth_u", "median_angle_mean_u", "median_rel_change")
    head = "".join(f"<th>{c.replace('median_', '')}</th>" for c in cols)
    body = []
    blocks = [("all", result["summary"]["all"]), *result["summary"]["by_kind"].items()]
    if "null" in result:  # the noise control of the same change norm (see noise_control)
        blocks.append(("null: noise, all", result["null"]["summary"]["all"]))
    for kind, blk in blocks:
        body.append(f"<tr><td>{html.escape(kind)}</td>" + "".join(f"<td>{blk[c]:.4g}</td>" for c in cols) + "</tr>")
    return (
        "<!doctype html><meta charset='utf-8'><title>llmcal posttrain svd</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:right}"
        "th{background:#eee}</style>"
        f"<h1>SVD: {html.escape(post_name)} vs {html.escape(base_name)}</h1>"
        f"<p>{result['n_matrices']} linear layers, top-k = {result['k']} singular directions "
        "(He &amp; Cao 2025, arXiv 2509.17866). Medians over matrices; ratio_cv_across = spread of "
        "the per-matrix mean ratio across layers.</p>"
        f"<table><tr><th>kind</th>{head}</tr>{''.join(body)}</table>"
        f"<p><img alt='heatmaps' src='data:image/png;base64,{png}'></p>"
    )
