"""The packed tree-attention scorer equals scoring every option separately."""

from __future__ import annotations

import numpy as np
import pytest

from llmcal.backends.packing import pack_item, tree_mask

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_pack_layout_and_targets():
    p = pack_item([5, 6, 7], [[8, 9, 10], [11], [12, 13]])
    # prefix + option inputs (all but each option's last token)
    assert p.input_ids.tolist() == [5, 6, 7, 8, 9, 12]
    assert p.position_ids.tolist() == [0, 1, 2, 3, 4, 3]
    assert p.branch.tolist() == [0, 0, 0, 1, 1, 3]
    assert [r.tolist() for r in p.target_rows] == [[2, 3, 4], [2], [2, 5]]
    assert [t.tolist() for t in p.target_ids] == [[8, 9, 10], [11], [12, 13]]
    assert p.prefix_last == 2


def test_tree_mask_sees_prefix_and_own_branch_only():
    p = pack_item([1, 2], [[3, 4, 5], [6, 7]])
    m = tree_mask(p.branch, 7)  # 5 real rows + 2 padding rows
    # option 0 second input (row 3) sees prefix 0,1 and its own rows 2,3; not option 1 (row 4)
    assert m[3].tolist() == [True, True, True, True, False, False, False]
    assert m[4].tolist() == [True, True, False, False, True, False, False]
    # causal inside the prefix
    assert m[0].tolist() == [True] + [False] * 6
    # padding rows see only themselves (no fully masked row -> no NaN)
    assert m[5].tolist() == [False] * 5 + [True, False]
    assert m.sum(axis=1).min() >= 1


def test_pack_rejects_empty_input():
    with pytest.raises(ValueError, match="context_ids"):
        pack_item([], [[1]])
    with pytest.raises(ValueError, match="zero tokens"):
        pack_item([1], [[2], []])


def _tiny_model(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def _naive_logprob(model, ctx: list[int], cont: list[int]) -> float:
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    return float(sum(logp[len(ctx) - 1 + j, t] for j, t in enumerate(cont)))


def test_packed_scores_equal_separate_forward_passes():
    from llmcal.backends.hf import HFBackend

    model = _tiny_model()
    backend = HFBackend(model, tokenizer=None, max_tokens=40, hidden_layers=(1, -1))
    rng = np.random.default_rng(0)
    items = []
    for _ in range(7):  # ragged: different prefix lengths and option counts/lengths
        ctx = rng.integers(0, 97, size=rng.integers(1, 12)).tolist()
        conts = [rng.integers(0, 97, size=rng.integers(1, 5)).tolist() for _ in range(rng.integers(2, 6))]
        items.append((ctx, conts))
    scores = backend.score_packed([pack_item(c, o) for c, o in items])
    full = backend.score_packed([pack_item(c, o, full_options=True) for c, o in items])
    for (ctx, conts), s, f in zip(items, scores, full):
        # feeding the options' last tokens changes no score
        np.testing.assert_allclose(f.logprobs, s.logprobs, rtol=0, atol=1e-5)
        np.testing.assert_allclose(f.hidden, s.hidden, rtol=0, atol=1e-5)
        assert s.answer_hidden is None and f.answer_hidden.shape == (len(conts), 2, 32)
        for o, c in enumerate(conts):
            # the mean over the option's tokens equals a plain forward over ctx + option
            with torch.no_grad():
                hs = model.model(torch.tensor([ctx + c]), output_hidden_states=True).hidden_states
            np.testing.assert_allclose(f.answer_hidden[o, 0], hs[1][0, len(ctx):].mean(0).numpy(), atol=1e-4)
            np.testing.assert_allclose(f.answer_hidden[o, 1], hs[-1][0, len(ctx):].mean(0).numpy(), atol=1e-4)
        expected = [_naive_logprob(model, ctx, c) for c in conts]
        np.testing.assert_allclose(s.logprobs, expected, rtol=0, atol=1e-4)
        assert s.n_tokens.tolist() == [len(c) for c in conts]
        # hidden state of the last context token equals a plain forward's
        with torch.no_grad():
            hs = model.model(torch.tensor([ctx]), output_hidden_states=True).hidden_states
        np.testing.assert_allclose(s.hidden[0], hs[1][0, -1].numpy(), atol=1e-4)
        np.testing.assert_allclose(s.hidden[1], hs[-1][0, -1].numpy(), atol=1e-4)


def test_greedy_flag_matches_argmax():
    from llmcal.backends.hf import HFBackend

    model = _tiny_model(1)
    backend = HFBackend(model, tokenizer=None, hidden_layers=())
    ctx = [3, 14, 15]
    with torch.no_grad():
        nxt = int(model(torch.tensor([ctx])).logits[0, -1].argmax())
    other = (nxt + 1) % 97
    (s,) = backend.score_packed([pack_item(ctx, [[nxt], [other]])])
    assert s.is_greedy.tolist() == [True, False]
    assert s.hidden is None
