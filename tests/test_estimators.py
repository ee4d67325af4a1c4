"""The free-form estimators of issue #19, each on a planted case whose value is known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmcal.signals import cocoa, eigenscore, graph, kle, lexical, pmi, sar, semantic_density, sequence_entropy
from llmcal.signals.sampled import sampled_signals
from llmcal.signals.similarity import SemanticMatrices, from_embeddings, from_nli
from llmcal.signals.spec import decode

K = 5
SAME = np.ones((K, K))  # every sample means the same
APART = np.eye(K)  # every sample means something else


def test_mc_sequence_entropy_is_the_mean_negative_log_probability():
    lps = [np.log([0.5, 0.5]), np.log([0.25]), np.zeros(3)]
    raw = sequence_entropy.mc_entropies(lps)
    assert raw["mc_sequence_entropy"] == pytest.approx((2 * math.log(2) + math.log(4) + 0) / 3)
    assert raw["mc_normalized_entropy"] == pytest.approx((math.log(2) + math.log(4) + 0) / 3)
    stored = sequence_entropy.sequence_entropy_signals(lps)
    assert decode(stored["mc_sequence_entropy"], "uncertainty") == pytest.approx(raw["mc_sequence_entropy"])
    assert sequence_entropy.sequence_entropy_signals([np.zeros(2)] * 4) == {
        "mc_sequence_entropy": 1.0, "mc_normalized_entropy": 1.0}  # certain samples: zero entropy


def test_rouge_l_and_bleu_reference_values():
    # LCS("the cat sat on the mat", "the cat on a mat") = the cat on mat (4): P 4/5, R 4/6
    assert lexical.rouge_l("the cat sat on the mat", "The cat, on a mat!") == pytest.approx(2 * .8 * (4 / 6) / (.8 + 4 / 6))
    # p1..p4 = 5/6, 3/5, 2/4, 1/3 and no brevity penalty (NLTK's sentence_bleu gives 0.5373)
    assert lexical.bleu("the cat sat on the mat", "the cat sat on a mat") == pytest.approx(
        (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    assert lexical.bleu("Paris", "Paris") == 1.0 and lexical.bleu("Paris", "Lyon") == 0.0
    assert lexical.bleu("the capital is Paris", "Paris") == pytest.approx(math.exp(1 - 4))  # brevity penalty
    assert lexical.lexical_signals(["Paris", "Paris", "Paris"]) == {"lexsim_rouge_l": 1.0, "lexsim_bleu": 1.0}
    assert lexical.lexical_signals(["Paris", "Lyon"]) == {"lexsim_rouge_l": 0.0, "lexsim_bleu": 0.0}
    with pytest.raises(ValueError, match="at least two"):
        lexical.lexical_signals(["Paris"])


def test_graph_family_is_one_when_samples_agree_and_zero_when_all_differ():
    assert graph.graph_signals(SAME) == pytest.approx(
        {"num_semantic_sets": 1, "eigval_laplacian": 1, "degree_matrix": 1, "eccentricity": 1})
    assert graph.graph_signals(APART) == pytest.approx(
        {"num_semantic_sets": 0, "eigval_laplacian": 0, "degree_matrix": 0, "eccentricity": 0})
    assert graph.eigval_laplacian(APART) == pytest.approx(K) and graph.eigval_laplacian(SAME) == pytest.approx(1)
    assert graph.degree_matrix(APART) == pytest.approx((K - 1) / K)
    assert graph.eccentricity(APART) == pytest.approx(math.sqrt(K - 1))
    # two blocks (3 + 2 answers): two semantic sets, two zero eigenvalues
    w = np.zeros((K, K))
    w[:3, :3] = w[3:, 3:] = 1
    assert graph.num_semantic_sets(w) == 2 and graph.eigval_laplacian(w) == pytest.approx(2)
    assert graph.graph_signals(w)["num_semantic_sets"] == pytest.approx(3 / 4)
    # with NLI: an edge where entailment is likelier than contradiction both ways (LM-Polygraph's rule)
    e = np.array([[1, .6, .1], [.7, 1, .2], [.1, .1, 1]])
    c = np.array([[0, .3, .8], [.2, 0, .7], [.8, .6, 0]])
    assert graph.num_semantic_sets(e, c) == 2 and graph.num_semantic_sets(e, c.T * 0 + .65) == 3


def test_kle_closed_forms():
    # W = I: L = 0, K = I, rho = I / k, VNE = log k: confidence 0
    assert kle.kle_signal(APART, 1 - APART)["kle"] == pytest.approx(0, abs=1e-9)
    # W = 1 1^T: K = 11^T/k + e^{-tk}(I - 11^T/k); normalized, eigenvalues a (once) and b (k - 1 times)
    t = kle.T_HEAT
    delta = 1 / K + math.exp(-t * K) * (1 - 1 / K)
    a, b = 1 / (delta * K), math.exp(-t * K) / (delta * K)
    vne = -(a * math.log(a) + (K - 1) * b * math.log(b)) / math.log(K)
    assert kle.kle_signal(SAME, np.zeros((K, K)))["kle"] == pytest.approx(1 - vne)
    assert kle.kle_weights(np.full((2, 2), .2), np.full((2, 2), .4)) == pytest.approx(np.full((2, 2), .4))


def test_eigenscore_of_identical_and_orthogonal_embeddings():
    z = np.tile(np.array([[1.0, 2.0, 0.0, -1.0]]), (K, 1))  # (k, d), identical samples
    d = z.shape[1]
    c = float(z[0] @ z[0] - z[0].sum() ** 2 / d)  # Z J_d Z^T = c 1 1^T: eigenvalues k c and 0
    a = eigenscore.ALPHA
    assert eigenscore.eigenscore(z) == pytest.approx((math.log(K * c + a) + (K - 1) * math.log(a)) / K)
    e = np.eye(8)[:K] - 1 / 8  # orthogonal after the feature centring: covariance = I - ... (spread out)
    assert eigenscore.eigenscore(e) > eigenscore.eigenscore(z)
    stored = eigenscore.eigenscore_signal(z)["eigenscore"]
    assert decode(stored, "log_odds") == pytest.approx(-eigenscore.eigenscore(z))


def test_cocoa_and_semantic_density():
    lp = np.log([0.5, 0.25])
    raw = cocoa.cocoa(lp, [1.0, 0.5, 0.0])
    assert raw == pytest.approx({"cocoa_msp": math.log(8) * 0.5, "cocoa_ppl": math.log(8) / 2 * 0.5})
    assert cocoa.cocoa_signals(lp, [1.0, 1.0]) == {"cocoa_msp": 1.0, "cocoa_ppl": 1.0}  # consistent: no doubt
    lps = [np.log([0.8]), np.log([0.2]), np.log([0.8])]
    assert semantic_density.semantic_density([1.0, 0.0, 1.0], lps) == pytest.approx(1.6 / 1.8)
    # the repeated third sample counts once
    assert semantic_density.semantic_density([1.0, 0.0, 1.0], lps, ["a", "b", "a"]) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="2 kernel values for 3 samples"):
        semantic_density.semantic_density([1.0, 0.0], lps)


def test_pmi_and_its_stored_log_odds():
    assert pmi.pmi(-2.0, -8.0, 3) == pytest.approx(2.0)
    assert decode(pmi.pmi_signal(-2.0, -8.0, 3)["pmi"], "log_odds") == pytest.approx(2.0)
    assert pmi.pmi_signal(-5.0, -5.0, 2)["pmi"] == 0.5  # the question changes nothing
    with pytest.raises(ValueError, match="0 tokens"):
        pmi.pmi(-1.0, -2.0, 0)


def test_token_sar_and_sar():
    lp = np.log([0.5, 0.1])
    # only the second token is relevant (removing the first changes nothing)
    assert sar.token_sar(lp, np.array([1.0, 0.0])) == pytest.approx(-math.log(0.1))
    assert sar.token_sar(lp, np.array([1.0, 1.0])) == pytest.approx(-np.mean(lp))  # no relevance: equal weights
    assert sar.without_each_token(["The", " cat", " sat"]) == [" cat sat", "The sat", "The cat"]
    # SAR with no similarity between samples is the mean TokenSAR
    ts = [0.5, 1.0, 2.0]
    assert sar.sar(ts, np.zeros((3, 3))) == pytest.approx(np.mean(ts))
    q = np.exp(-np.array(ts))
    expect = np.mean([-math.log(q[i] + (q.sum() - q[i]) / sar.SAR_T) for i in range(3)])
    assert sar.sar(ts, np.ones((3, 3))) == pytest.approx(expect)
    top = [[("Paris", -0.1), ("Lyon", -2.5)], [(".", -0.7), ("!", -0.9)]]
    assert sar.token_texts(np.array([-0.1, -0.9]), top) == ["Paris", "!"]
    assert sar.token_texts(np.array([-0.1, -5.0]), top) is None  # the chosen token is not among the alternatives


def test_semantic_matrices_from_nli_and_embeddings():
    probs = np.zeros((2, 2, 3))
    probs[..., 0] = [[1, .8], [.6, 1]]
    probs[..., 2] = [[0, .1], [.3, 0]]
    m = from_nli(probs)
    assert m.source == "nli" and m.affinity() == pytest.approx(np.array([[1, .7], [.7, 1]]))
    assert m.neutral == pytest.approx(np.array([[0, .1], [.1, 0]]))
    e = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    f = from_embeddings(e)
    assert f.source == "embeddings" and f.entail[0, 2] == 0.0 and f.entail[0, 0] == 1.0
    assert f.sub([0, 2]).entail.shape == (2, 2)
    with pytest.raises(ValueError, match=r"expected \(m, m, 3\)"):
        from_nli(np.zeros((2, 3, 3)))


def test_sampled_signals_all_at_once():
    """k identical, certain samples that agree with the answer: every estimator at its most sure."""
    lp = [np.zeros(2)] * K
    emb = np.tile([[0.6, 0.8]], (K + 1, 1))
    out = sampled_signals(np.zeros(2), ["Paris"] * K, lp, from_embeddings(emb), emb)
    assert set(out) == {"mc_sequence_entropy", "mc_normalized_entropy", "lexsim_rouge_l", "lexsim_bleu",
                        "num_semantic_sets", "eigval_laplacian", "degree_matrix", "eccentricity", "kle",
                        "eigenscore", "cocoa_msp", "cocoa_ppl", "semantic_density"}
    for name in ("mc_sequence_entropy", "lexsim_rouge_l", "lexsim_bleu", "num_semantic_sets", "degree_matrix",
                 "cocoa_msp", "semantic_density"):
        assert out[name] == pytest.approx(1.0), name
    assert all(0.0 <= v <= 1.0 for v in out.values())
    apart = SemanticMatrices(np.eye(K + 1), 1 - np.eye(K + 1), "nli")
    diff = sampled_signals(np.log([0.5]), list("abcde"), [np.log([0.5])] * K, apart)
    assert "eigenscore" not in diff  # no embeddings given
    assert diff["num_semantic_sets"] == 0 and diff["semantic_density"] == 0
    assert decode(diff["cocoa_msp"], "uncertainty") == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="for the answer and 5 samples"):
        sampled_signals(np.zeros(1), ["a"] * K, lp, from_embeddings(emb[:3]))


class _Backend:
    """Just enough of a backend for answer_batch: fixed answers with top-k alternatives, and a scorer."""

    capabilities = frozenset({"generate", "score"})
    vocab_size = 100

    def __init__(self):
        self.scored = []

    def generate(self, prompts, *, max_new_tokens, temperature, n=1, seed=0, stop=None, **kw):
        from llmcal.core.requests import Generation

        def gen(words, lps):
            lps = np.log(lps)
            top = [[(w, float(lp)), ("zz", float(lp) - 3)] for w, lp in zip(words, lps)]
            return Generation("".join(words).strip(), list(range(len(words))), lps, np.full(len(words), .5), top)
        if temperature == 0:
            return [[gen(["Paris"], [0.9])] for _ in prompts]
        return [[gen(["Paris"], [0.8]), gen(["Paris"], [0.8]), gen(["Ly", "on"], [0.5, 0.5])][:n] for _ in prompts]

    def score_mc(self, requests):
        from llmcal.core.requests import MCScore

        self.scored += list(requests)
        return [MCScore(np.array([-1.0 if "capital" in r.context else -4.0]), np.array([2]), np.array([True]))
                for r in requests]


class _Embedder:
    def encode(self, texts):
        v = np.array([[1.0, 0.0] if "Paris" in t else [0.0, 1.0] for t in texts])
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_answer_batch_writes_the_new_families():
    from llmcal.core.items import OpenItem
    from llmcal.pipeline.measure_open import OpenSettings, answer_batch

    item = OpenItem("q1", "t", "What is the capital of France?", ("Paris",))
    be = _Backend()
    s = OpenSettings(families=("tokens", "sampled", "pmi", "sar"), k_samples=3)
    (rec,) = answer_batch(be, [item], s, _Embedder())
    got = rec.signals
    assert rec.correct and rec.extra["meaning_from"] == "embeddings"
    assert decode(got["pmi"], "log_odds") == pytest.approx((-1.0 + 4.0) / 2)  # 2 tokens scored
    assert "capital" not in be.scored[1].context and "capital" in be.scored[0].context  # the bare prompt
    assert got["num_semantic_sets"] == pytest.approx(0.5)  # {Paris, Paris}, {Lyon}: 2 sets of 3 samples
    assert got["lexsim_rouge_l"] == pytest.approx(1 / 3)
    assert decode(got["mc_sequence_entropy"], "uncertainty") == pytest.approx(-(2 * math.log(.8) + 2 * math.log(.5)) / 3)
    assert decode(got["cocoa_msp"], "uncertainty") == pytest.approx(-math.log(.9) / 3)
    assert set(got) >= {"token_sar", "sar", "kle", "eigenscore", "semantic_density"}
    assert rec.cost["pmi"]["forward_passes"] == 2 and rec.cost["sampled"]["samples"] == 3


def test_tuned_ensemble_weights_the_informative_signal_and_round_trips():
    import json

    from llmcal.probe.ensemble import TunedEnsemble

    rng = np.random.default_rng(0)
    n = 400
    y = rng.random(n) < 0.5
    good = np.clip(np.where(y, 0.7, 0.3) + rng.normal(0, 0.15, n), 0.01, 0.99)  # informative
    noise = rng.uniform(0.01, 0.99, n)  # unrelated to correctness
    x = np.stack([good, noise], axis=1)
    x[:20, 0] = np.nan  # missing for some items: the weights renormalize over what is there
    ens = TunedEnsemble(["good", "noise"]).fit(x, y)
    w = ens.weights()
    assert sum(w.values()) == pytest.approx(1.0) and w["good"] > 0.8
    conf = ens.confidence(x)
    assert conf.shape == (n,) and np.all((conf[20:] >= 0) & (conf[20:] <= 1))
    if "noise" in w:  # kept: the items without "good" are scored by it alone
        assert not np.isnan(conf).any()
    else:  # dropped (its Platt slope came out negative): those items have no ensemble confidence
        assert np.isnan(conf[:20]).all() and "not positively related" in ens.dropped["noise"]
    again = TunedEnsemble.from_dict(json.loads(json.dumps(ens.to_dict())))
    assert again.confidence(x) == pytest.approx(conf, nan_ok=True)
    # a signal that ranks answers the wrong way is dropped, with the reason
    inverted = TunedEnsemble(["good", "bad"]).fit(np.stack([good, 1 - good], axis=1)[20:], y[20:])
    assert list(inverted.weights()) == ["good"] and "not positively related" in inverted.dropped["bad"]
    with pytest.raises(ValueError, match="at least two distinct signals"):
        TunedEnsemble(["good"])


class _NLI:
    """Entailment exactly where the texts are equal (so "Paris" / "Lyon" are two meanings)."""

    def pair_probs(self, texts):
        same = np.array([[a == b for b in texts] for a in texts], dtype=float)
        return np.stack([same, np.zeros_like(same), 1 - same], axis=-1)  # (m, m, 3)


def test_answer_batch_reads_meaning_from_the_nli_model_when_given():
    from llmcal.core.items import OpenItem
    from llmcal.pipeline.measure_open import OpenSettings, answer_batch

    item = OpenItem("q1", "t", "What is the capital of France?", ("Paris",))
    s = OpenSettings(families=("agreement", "sampled"), k_samples=3)
    (rec,) = answer_batch(_Backend(), [item], s, _Embedder(), nli=_NLI())
    assert rec.extra["meaning_from"] == "nli" and rec.extra["cluster_ids"] == [0, 0, 0, 1]
    assert rec.signals["agreement"] == pytest.approx(2 / 3)
    assert rec.signals["semantic_density"] == pytest.approx(0.8 * 1 / (0.8 + 0.5))  # Paris counted once
    assert "cocoa_msp" in rec.signals and "pmi" not in rec.signals and "agreement" in rec.cost
