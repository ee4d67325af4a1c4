"""SVD analysis of post-training (He & Cao 2025): planted scalings and rotations are recovered."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
scipy_linalg = pytest.importorskip("scipy.linalg")

from llmcal.posttrain.svd import analyze, compare_matrices, metric_grid, report_html  # noqa: E402


def _random_orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # (n, n), Haar-distributed


def _factors(m: int, n: int, gen: torch.Generator):
    """U (m, r), s (r,) well separated, V (n, r) of a random matrix."""
    r = min(m, n)
    u = _random_orthogonal(m, gen)[:, :r]
    v = _random_orthogonal(n, gen)[:, :r]
    s = torch.linspace(3.0, 0.5, r, dtype=torch.float64) + 0.01 * torch.arange(r, 0, -1)
    return u, s, v


def test_identical_matrices_give_identity_everything():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(24, 16, generator=gen)
    res = compare_matrices(w, w.clone(), k=8)
    assert res["ratio_mean"] == pytest.approx(1.0, abs=1e-9)
    assert res["ratio_cv"] == pytest.approx(0.0, abs=1e-9)
    assert res["orth_u"] < 1e-9 and res["orth_v"] < 1e-9
    assert res["lr_similarity"] == pytest.approx(1.0, abs=1e-9)
    assert res["diag_u"] == pytest.approx(1.0, abs=1e-9)
    assert res["angle_max_u"] < 1e-3 and res["rel_change"] == 0.0


def test_planted_uniform_scaling_is_recovered():
    gen = torch.Generator().manual_seed(1)
    u, s, v = _factors(20, 12, gen)
    base = u @ torch.diag(s) @ v.T
    res = compare_matrices(base, 1.37 * base, k=None)
    assert res["ratio_mean"] == pytest.approx(1.37, rel=1e-9)
    assert res["ratio_cv"] < 1e-9
    assert res["lr_similarity"] == pytest.approx(1.0, abs=1e-9)  # scaling alone rotates nothing
    # non-uniform scaling shows up in the coefficient of variation
    scales = torch.linspace(0.8, 1.2, 12, dtype=torch.float64)
    assert bool(torch.all((s * scales)[:-1] > (s * scales)[1:]))  # still descending: index i stays index i
    res2 = compare_matrices(base, u @ torch.diag(s * scales) @ v.T, k=None)
    assert res2["ratio_mean"] == pytest.approx(float(scales.mean()), rel=1e-9)
    assert res2["ratio_cv"] == pytest.approx(float(scales.std(unbiased=False) / scales.mean()), rel=1e-6)


def test_planted_coordinated_rotation_is_recovered():
    """W_post = (U Q) (a s) (V Q)^T: R_U = R_V = Q (up to the SVD's common sign flips)."""
    gen = torch.Generator().manual_seed(2)
    m, n = 18, 10
    u, s, v = _factors(m, n, gen)
    q = _random_orthogonal(n, gen)  # (r, r) rotation in the index space
    base = u @ torch.diag(s) @ v.T
    post = (u @ q) @ torch.diag(0.9 * s) @ (v @ q).T
    res = compare_matrices(base, post, k=None, keep_spectra=True)
    assert res["ratio_mean"] == pytest.approx(0.9, rel=1e-9) and res["ratio_cv"] < 1e-9
    assert res["orth_u"] < 1e-9 and res["orth_v"] < 1e-9  # full rank: exactly orthogonal
    assert res["lr_similarity"] == pytest.approx(1.0, abs=1e-9)  # left and right rotations agree
    assert res["diag_u"] < 0.9  # and it is a real rotation, not the identity
    assert res["lr_similarity_offdiag"] == pytest.approx(1.0, abs=1e-9)
    # R_U = D_base Q D_post with diagonal sign matrices from the two SVDs; R_V carries the same ones
    np.testing.assert_allclose(np.abs(res["r_u"]), np.abs(q.numpy()), atol=1e-9)
    np.testing.assert_allclose(res["r_u"], res["r_v"], atol=1e-9)


def test_uncoordinated_rotation_is_flagged():
    """Independent left and right rotations: each R is orthogonal but they disagree."""
    gen = torch.Generator().manual_seed(3)
    u, s, v = _factors(16, 16, gen)
    q1, q2 = _random_orthogonal(16, gen), _random_orthogonal(16, gen)
    base = u @ torch.diag(s) @ v.T
    post = (u @ q1) @ torch.diag(s) @ (v @ q2).T
    res = compare_matrices(base, post, k=None)
    assert res["orth_u"] < 1e-9
    assert abs(res["lr_similarity"]) < 0.5 and abs(res["lr_similarity_offdiag"]) < 0.5


def test_small_coordinated_rotation_shows_off_the_diagonal():
    """A small shared rotation: R ~ I on both sides, so only the off-diagonal cosine tells it from noise."""
    gen = torch.Generator().manual_seed(6)
    u, s, v = _factors(16, 12, gen)
    a = torch.randn(12, 12, generator=gen, dtype=torch.float64)
    q = torch.linalg.matrix_exp(1e-3 * (a - a.T))  # (12, 12) rotation by ~1e-3 rad
    base = u @ torch.diag(s) @ v.T
    coordinated = compare_matrices(base, (u @ q) @ torch.diag(s) @ (v @ q).T, k=None)
    b = torch.randn(12, 12, generator=gen, dtype=torch.float64)
    q2 = torch.linalg.matrix_exp(1e-3 * (b - b.T))
    unrelated = compare_matrices(base, (u @ q) @ torch.diag(s) @ (v @ q2).T, k=None)
    assert coordinated["lr_similarity"] > 0.9999 and unrelated["lr_similarity"] > 0.9999  # both ~I
    assert coordinated["lr_similarity_offdiag"] > 0.999
    assert abs(unrelated["lr_similarity_offdiag"]) < 0.5


def test_principal_angles_match_scipy_on_top_k():
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(30, 20, generator=gen, dtype=torch.float64)
    post = base + 0.3 * torch.randn(30, 20, generator=gen, dtype=torch.float64)
    k = 6
    res = compare_matrices(base, post, k=k, keep_spectra=True)
    ub, _, vbh = np.linalg.svd(base.numpy(), full_matrices=False)
    up, _, vph = np.linalg.svd(post.numpy(), full_matrices=False)
    np.testing.assert_allclose(res["angles_u"], scipy_linalg.subspace_angles(ub[:, :k], up[:, :k]), atol=1e-7)
    np.testing.assert_allclose(res["angles_v"], scipy_linalg.subspace_angles(vbh[:k].T, vph[:k].T), atol=1e-7)
    assert res["orth_u"] > 1e-3  # the top-k subspaces moved, so R_U is no longer orthogonal


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shapes differ"):
        compare_matrices(torch.zeros(3, 4), torch.zeros(4, 3))


def _tiny_llama(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=61, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def test_analyze_tiny_model_recovers_per_layer_plants(tmp_path):
    """Plant a different uniform scale and a coordinated rotation in each layer of a tiny Llama."""
    pytest.importorskip("transformers")
    base = _tiny_llama(0)
    post = _tiny_llama(0)
    gen = torch.Generator().manual_seed(5)
    planted = {}
    with torch.no_grad():
        for name, mod in post.named_modules():
            if isinstance(mod, torch.nn.Linear) and ".layers." in name:
                layer = int(name.split(".layers.")[1].split(".")[0])
                scale = 1.0 + 0.1 * (layer + 1)
                u, s, vh = torch.linalg.svd(mod.weight.double(), full_matrices=False)
                q = _random_orthogonal(s.shape[0], gen)
                mod.weight.copy_(((u @ q) @ torch.diag(scale * s) @ (vh.T @ q).T).float())
                planted[name] = scale
    res = analyze(base, post, k=None)
    assert res["n_matrices"] == 14  # 2 layers x (q, k, v, o, gate, up, down)
    for row in res["rows"]:
        assert row["ratio_mean"] == pytest.approx(planted[row["name"]], rel=1e-4)
        assert row["ratio_cv"] < 1e-4
        assert row["lr_similarity"] > 0.999
    grid, layers, kinds = metric_grid(res["rows"], "ratio_mean")
    assert grid.shape == (2, 7) and layers == [0, 1] and "q_proj" in kinds
    np.testing.assert_allclose(grid[:, 0], [1.1, 1.2], rtol=1e-4)
    page = report_html(res, "base", "post")
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page


def test_analyze_refuses_other_architectures():
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(vocab_size=61, hidden_size=16, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(ValueError, match="mlp.gate_proj: shape"):
        analyze(_tiny_llama(0), other)


def test_noise_control_has_posts_change_norm_per_matrix():
    from llmcal.posttrain.svd import noise_control

    base, post = _tiny_llama(0), _tiny_llama(1)
    null = noise_control(base, post, seed=0)
    params = [dict(m.named_parameters()) for m in (base, post, null)]
    for name in params[0]:
        b, p, z = (ps[name].detach() for ps in params)
        if ".layers." in name and b.ndim == 2:
            assert float(torch.linalg.matrix_norm(z - b)) == pytest.approx(float(torch.linalg.matrix_norm(p - b)),
                                                                           rel=1e-5)
            assert not torch.allclose(z, p)
        else:
            assert torch.equal(z, b)  # everything else stays base


def _scaled(model, scale: float):
    """A copy of ``model`` with every block linear layer's singular values times ``scale``: no rotation at all."""
    import copy

    post = copy.deepcopy(model)
    with torch.no_grad():
        for name, mod in post.named_modules():
            if isinstance(mod, torch.nn.Linear) and ".layers." in name:
                mod.weight.mul_(scale)
    return post


def test_svd_verdict_says_no_change_for_identical_models():
    from llmcal.posttrain.svd import verdict

    base = _tiny_llama(0)
    res = analyze(base, _tiny_llama(0), k=8)
    assert res["k_used"] == "8"
    lines = verdict(res)
    assert len(lines) == 1 and lines[0].startswith("no change: the median relative change is 0.0e+00")


def test_svd_verdict_against_the_noise_control_matches_its_numbers():
    """A pure rescale keeps every direction: the verdict must say it rotates less than noise of the same size."""
    from llmcal.posttrain.svd import noise_control, verdict

    base = _tiny_llama(0)
    post = _scaled(base, 1.05)
    res = analyze(base, post, k=None)
    assert res["k_used"] == "8-16"  # at most each matrix's rank (8 for k/v_proj, 16 = hidden), whatever k asked
    assert "--null" in verdict(res)[-1]
    res["null"] = analyze(base, noise_control(base, post), k=None)
    lines = verdict(res)
    s, n = res["summary"]["all"], res["null"]["summary"]["all"]
    assert f"{s['ratio_mean_across']:.4f}" in lines[0] and s["ratio_mean_across"] == pytest.approx(1.05, rel=1e-4)
    assert lines[1].startswith("singular vectors rotate less than noise of the same size")
    assert f"{1 - n['median_diag_u']:.2e}" in lines[1]
    # the noise's own rotation is judged like noise when it is compared with itself
    res_null = dict(res["null"], null=res["null"])
    assert "rotate like noise" in verdict(res_null)[1]
    assert "not coordinated beyond noise" in verdict(res_null)[2]
