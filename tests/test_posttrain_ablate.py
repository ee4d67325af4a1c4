"""Ablations from mixed SVD factors (He & Cao 2025): exact round trips and the planted structure."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from llmcal.posttrain.ablate import (  # noqa: E402
    MODES,
    aligned_factors,
    build_ablation,
    mc_eval,
    perplexity,
    rebuild_matrix,
    run_ablations,
)
from llmcal.posttrain.tiny import tiny_llama, tiny_tokenizer  # noqa: E402
from llmcal.core.items import MCItem  # noqa: E402


def _rot(n: int, gen) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _pair(seed: int = 0, m: int = 12, n: int = 8):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(m, n, generator=gen, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(base, full_matrices=False)
    q = _rot(n, gen)
    post = (u @ q) @ torch.diag(1.5 * s) @ (vh.T @ q).T  # coordinated rotation + uniform scaling
    return base, post, u, s, vh.T, q


def test_both_sides_from_one_model_reproduce_it():
    base, post, *_ = _pair()
    torch.testing.assert_close(rebuild_matrix(base, post, "post"), post, atol=1e-10, rtol=0)
    torch.testing.assert_close(rebuild_matrix(base, post, "base"), base, atol=1e-10, rtol=0)


def test_sign_alignment_keeps_post_and_matches_base_when_nothing_rotated():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(10, 6, generator=gen, dtype=torch.float64)
    post = 2.0 * base  # pure scaling: vectors identical up to the SVD's sign choice
    ub, sb, vb, up, sp, vp = aligned_factors(base, post)
    torch.testing.assert_close(up, ub, atol=1e-10, rtol=0)
    torch.testing.assert_close(vp, vb, atol=1e-10, rtol=0)
    torch.testing.assert_close((up * sp) @ vp.T, post, atol=1e-10, rtol=0)
    # with no rotation every one-sided mix is just post
    for mode in ("left_rotation_only", "right_rotation_only", "base_vectors_post_values"):
        torch.testing.assert_close(rebuild_matrix(base, post, mode), post, atol=1e-10, rtol=0)


def test_value_swaps_and_one_sided_rotation_on_planted_matrices():
    base, post, u, s, v, q = _pair(2)
    # post vectors + base values = the rotation without the 1.5x scaling
    torch.testing.assert_close(rebuild_matrix(base, post, "post_vectors_base_values"), post / 1.5, atol=1e-9, rtol=0)
    # base vectors + post values = the base scaled by 1.5
    torch.testing.assert_close(rebuild_matrix(base, post, "base_vectors_post_values"), 1.5 * base, atol=1e-9, rtol=0)
    # one-sided rotation = U (Q D) S' V^T (D: signs): in base coordinates |U^T W V| = |Q| diag(1.5 s),
    # while post is rotated on both sides; it is far from both models
    left = rebuild_matrix(base, post, "left_rotation_only")
    torch.testing.assert_close((u.T @ left @ v).abs(), q.abs() * (1.5 * s)[None, :], atol=1e-9, rtol=0)
    right = rebuild_matrix(base, post, "right_rotation_only")
    torch.testing.assert_close((u.T @ right @ v).abs(), q.abs().T * (1.5 * s)[:, None], atol=1e-9, rtol=0)
    for w in (left, right):
        assert torch.linalg.matrix_norm(w - post) > 0.3 * torch.linalg.matrix_norm(post)
        assert torch.linalg.matrix_norm(w - 1.5 * base) > 0.3 * torch.linalg.matrix_norm(post)


def test_unknown_mode_is_refused():
    base, post, *_ = _pair()
    with pytest.raises(ValueError, match="ablation mode 'sideways' is unknown"):
        rebuild_matrix(base, post, "sideways")


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(0), tiny_llama(1), tiny_tokenizer()


def test_build_ablation_on_tiny_models(tiny):
    base, post, _ = tiny
    same = build_ablation(base, post, "post")
    for (name, p), (_, q) in zip(same.named_parameters(), post.named_parameters()):
        torch.testing.assert_close(p, q, atol=2e-6, rtol=1e-5, msg=name)
    mixed = build_ablation(base, post, "base")
    assert torch.allclose(mixed.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight, atol=2e-6)
    # non-linear parameters (embeddings, norms) come from post, and post itself is untouched
    assert torch.equal(mixed.model.embed_tokens.weight, post.model.embed_tokens.weight)
    assert not torch.allclose(post.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)


def test_evaluation_numbers_are_consistent(tiny):
    base, post, tok = tiny
    texts = ["The cat sat on the mat. " * 3, "Water boils at one hundred degrees."]
    ppl = perplexity(post, tok, texts)
    assert 1.0 < ppl < 2 * 258  # a random model is near uniform over 258 tokens
    items = [MCItem(f"q{i}", "t", f"What is {i} + 1?", (str(i + 1), str(i + 7), "no"), 0) for i in range(6)]
    res = mc_eval(post, tok, items)
    assert res["n_items"] == 6 and 0.0 <= res["accuracy"] <= 1.0 and 0.0 <= res["ece"] <= 1.0
    table = run_ablations(base, post, tok, items, texts, modes=("post", "base"))
    assert set(table) == {"post", "base"}
    assert math.isclose(table["post"]["perplexity"], ppl, rel_tol=1e-9)
    assert table["post"]["accuracy"] == res["accuracy"]
    with pytest.raises(ValueError, match="no text with at least 2 tokens"):
        perplexity(post, tok, ["a"])


def test_modes_are_the_documented_ones():
    assert MODES == ("post", "base", "post_vectors_base_values", "base_vectors_post_values",
                     "left_rotation_only", "right_rotation_only")
