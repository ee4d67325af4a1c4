"""Claim-conditioned probability, conditional PMI and the tuned ensemble in results.json (issue #19),
each on a planted case whose value is known by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from llmcal.signals import ccp, pmi
from llmcal.signals import registry as R
from llmcal.signals.spec import decode

L = math.log


def test_every_alternative_entailing_gives_ccp_one():
    # the alternatives are the same word in other case / spacing / punctuation
    top = [[(" Paris", L(0.5)), (" paris", L(0.2)), ("Paris", L(0.1)), (" PARIS.", L(0.1))]]
    assert ccp.ccp([" Paris"], [L(0.5)], top) == pytest.approx(1.0)
    assert ccp.ccp_signal([" Paris"], [L(0.5)], top) == {"ccp": pytest.approx(1.0), "judged_by": "lexical"}


def test_half_the_content_mass_contradicting_and_neutral_formatting():
    # token 1: chosen 0.4 + a same-word variant 0.1 entail, "Lyon" 0.3 contradicts, "," 0.2 is neutral (left out)
    # token 2: "." is punctuation: every alternative is neutral, CCP 1
    top = [[(" Paris", L(0.4)), (" Lyon", L(0.3)), (",", L(0.2)), (" paris", L(0.1))],
           [(".", L(0.6)), ("!", L(0.3)), (" and", L(0.1))]]
    per = ccp.ccp_tokens([" Paris", "."], [L(0.4), L(0.6)], top)
    assert per == pytest.approx([0.5 / 0.8, 1.0])
    assert ccp.ccp([" Paris", "."], [L(0.4), L(0.6)], top) == pytest.approx(0.625)
    # exactly half the mass contradicting: 0.5
    assert ccp.token_ccp([L(0.3), L(0.3)], ["contra"]) == pytest.approx(0.5)
    assert ccp.token_ccp([L(0.3), L(0.1), L(0.9)], ["entail", "neutral"]) == pytest.approx(1.0)


def test_alternatives_put_the_token_first_once():
    top = [(" Lyon", L(0.3)), (" Paris", L(0.4)), (" Nice", L(0.1))]
    alts = ccp.alternatives_of(" Paris", L(0.4), top)
    assert [a for a, _ in alts] == [" Paris", " Lyon", " Nice"]
    # a sampled token outside the top-k: it is added in front, every listed alternative kept
    assert [a for a, _ in ccp.alternatives_of(" Rome", L(0.01), top)] == [" Rome", " Lyon", " Paris", " Nice"]


def test_lexical_judge_and_the_nli_label_combination():
    assert ccp.lexical_judge("", " Paris", ["paris", " Lyon", ",", " "]) == ["entail", "contra", "neutral", "neutral"]
    assert ccp.lexical_judge("", ".", [" Lyon"]) == ["neutral"]
    # LM-Polygraph's rule: equal labels stand; entail + contra is neutral; else the non-neutral one wins
    assert ccp.combine("entail", "entail") == "entail"
    assert ccp.combine("entail", "contra") == ccp.combine("contra", "entail") == "neutral"
    assert ccp.combine("neutral", "contra") == ccp.combine("contra", "neutral") == "contra"
    assert ccp.combine("neutral", "entail") == "entail" and ccp.combine("neutral", "neutral") == "neutral"


class _NLI:
    """Texts ending in a capital city entail each other; "France's capital is Lyon" contradicts the rest,
    one direction only for "Nice" (so the combined label is neutral)."""

    name = "fake-nli"

    def __init__(self):
        self.pairs = []

    def probs(self, premises, hypotheses):
        self.pairs += list(zip(premises, hypotheses))
        out = []
        for p, h in zip(premises, hypotheses):
            if "Lyon" in p or "Lyon" in h:
                out.append((0.1, 0.1, 0.8))
            elif "Nice" in h:
                out.append((0.1, 0.1, 0.8))
            else:
                out.append((0.8, 0.1, 0.1))
        return np.array(out)


def test_nli_judge_reads_the_prefix_both_ways():
    nli = _NLI()
    texts, lps = ["It is", " Paris"], [L(0.9), L(0.5)]
    top = [[("It is", L(0.9))], [(" Paris", L(0.5)), (" PARIS", L(0.2)), (" Lyon", L(0.2)), (" Nice", L(0.1))]]
    # " PARIS": entail both ways; " Lyon": contra both ways; " Nice": contra forward, entail backward -> neutral
    got = ccp.ccp_signal(texts, lps, top, nli)
    assert got["judged_by"] == "nli:fake-nli"
    assert got["ccp"] == pytest.approx(0.7 / 0.9)
    assert ("It is Paris", "It is Lyon") in nli.pairs and ("It is Lyon", "It is Paris") in nli.pairs


def test_ccp_rejects_bad_input():
    with pytest.raises(ValueError, match="1 token texts and 2 top-k rows for 2 tokens"):
        ccp.ccp(["a"], [L(0.5), L(0.5)], [[("a", L(0.5))], [("b", L(0.5))]])
    with pytest.raises(ValueError, match="the judge returned"):
        ccp.ccp(["a"], [L(0.5)], [[("a", L(0.5)), ("b", L(0.1))]], judge=lambda p, t, alts: ["yes"])


def test_cpmi_planted_values():
    lp, bare = [-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]
    lam = pmi.CPMI_LAMBDA
    # every entropy below tau: no PMI term anywhere, the mean log-probability whatever the bare scores
    assert pmi.cpmi(lp, bare, [0.01, 0.01, 0.01]) == pytest.approx(-2.0)
    assert pmi.cpmi(lp, [0.0, 0.0, 0.0], [0.01, 0.01, 0.01]) == pytest.approx(-2.0)
    # above tau at steps 0 and 1: step 0 never carries the term (LM-Polygraph's t > 0), step 1 does
    assert pmi.cpmi(lp, bare, [1.0, 1.0, 0.01]) == pytest.approx((-1.0 + (-2.0 + lam * 5.0) - 3.0) / 3)
    assert pmi.cpmi(lp, bare, [1.0, pmi.CPMI_TAU, 0.0]) == pytest.approx((-1.0 + (-2.0 + lam * 5.0) - 3.0) / 3)
    assert pmi.cpmi(lp, bare, [1, 1, 1], tau=0.5, lambd=1.0) == pytest.approx((-1.0 + 3.0 + 3.0) / 3)
    # an empty answer keeps only its end token: its log-probability
    assert pmi.cpmi([-0.5], [], [2.0]) == pytest.approx(-0.5)
    v = pmi.cpmi_signal(lp, bare, [1.0, 1.0, 0.01])["cpmi"]
    assert 0 < v < 1 and decode(v, "log_odds") == pytest.approx(pmi.cpmi(lp, bare, [1.0, 1.0, 0.01]))
    with pytest.raises(ValueError, match="2 bare log-probabilities for 3 tokens"):
        pmi.cpmi(lp, bare[:2], [1.0, 1.0, 1.0])


def test_registry_lists_ccp_and_cpmi():
    c, m = R.get_signal("ccp"), R.get_signal("cpmi")
    assert (c.family, c.cost, c.score, c.default) == ("ccp", "+NLI passes", "confidence", False)
    assert (m.family, m.cost, m.score, m.default) == ("cpmi", "+1 scoring pass", "log_odds", False)
    assert R.needs(c) == ["logprobs", "top-k logprobs", "NLI model (or a lexical judge)"]
    assert R.needs(m) == ["logprobs", "entropies", "per-token scoring"]
    assert R.availability(c, {"generate"}) == "approx: a lexical judge in place of an NLI model (--nli_model)"
    assert R.availability(c, {"generate"}, nli_model=True) == "yes"
    assert {"ccp", "cpmi"} <= set(R.families("open")) and "ccp" not in R.default_families("open")


def test_llmcal_signals_lists_ccp_and_cpmi(capsys):
    from llmcal.cli.main import main

    assert main(["signals", "--kind", "open"]) == 0
    rows = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.strip()}
    assert "+NLI passes" in rows["ccp"] and "Fadeeva et al. 2024" in rows["ccp"]
    assert "NLI model (or a lexical judge)" in rows["ccp"]
    assert "+1 scoring pass" in rows["cpmi"] and "logprobs, entropies, per-token scoring" in rows["cpmi"]
    assert "van der Poel et al. 2022" in rows["cpmi"]


class _Backend:
    """Fixed greedy answer " Paris" / "." with top-k alternatives; per-token scoring after the bare prompt."""

    capabilities = frozenset({"generate", "score", "score_tokens"})
    vocab_size = 100

    def __init__(self):
        self.contexts = []

    def generate(self, prompts, *, max_new_tokens, temperature, n=1, seed=0, stop=None, **kw):
        from llmcal.core.requests import Generation

        top = [[(" Paris", L(0.4)), (" Lyon", L(0.3)), (",", L(0.2)), (" paris", L(0.1))],
               [(".", L(0.6)), ("!", L(0.4))]]
        g = Generation("Paris.", [7, 8], np.array([L(0.4), L(0.6)]), np.array([1.0, 0.01]), top)
        return [[g] for _ in prompts]

    def score_tokens(self, context, token_ids):
        self.contexts.append(context)
        assert list(token_ids) == [7, 8]
        return np.array([-3.0, -0.2])


def test_answer_batch_writes_ccp_and_cpmi():
    from llmcal.core.items import OpenItem
    from llmcal.pipeline.measure_open import OpenSettings, answer_batch

    item = OpenItem("q1", "t", "What is the capital of France?", ("Paris",))
    be = _Backend()
    (rec,) = answer_batch(be, [item], OpenSettings(families=("tokens", "ccp", "cpmi")))
    assert rec.signals["ccp"] == pytest.approx(0.625) and rec.extra["ccp_judged_by"] == "lexical"
    # step 1's entropy (0.01) is below tau: no PMI term; step 0 never has one
    assert decode(rec.signals["cpmi"], "log_odds") == pytest.approx((L(0.4) + L(0.6)) / 2)
    assert "capital" not in be.contexts[0] and rec.cost["cpmi"]["forward_passes"] == 1

    class _NoTokens(_Backend):  # a backend that does not declare per-token scoring (a server's)
        capabilities = frozenset({"generate", "score"})

    (rec2,) = answer_batch(_NoTokens(), [item], OpenSettings(families=("tokens", "cpmi")))
    assert "cpmi" in rec2.missing and "cpmi" not in rec2.signals


def test_tuned_ensemble_is_written_beside_the_calibrators_and_round_trips():
    from llmcal.core.sample import Sample
    from llmcal.pipeline.evaluate import evaluate
    from llmcal.probe.ensemble import TunedEnsemble

    rng = np.random.default_rng(0)
    n = 300
    y = rng.random(n) < 0.5
    good = np.clip(np.where(y, 0.75, 0.3) + rng.normal(0, 0.15, n), 0.01, 0.99)
    weak = np.clip(np.where(y, 0.55, 0.45) + rng.normal(0, 0.2, n), 0.01, 0.99)
    samples = [Sample.from_dict({
        "id": f"q{i}", "task": "t", "kind": "open", "prompt": "p", "question": "q", "answers": ["a"],
        "grader": "exact", "prediction_text": "a" if y[i] else "b", "correct": bool(y[i]),
        "signals": {"mean_token_prob": float(good[i]), "seq_prob": float(weak[i])}, "missing": []})
        for i in range(n)]
    results, _ = evaluate(samples, n_bootstrap=50)
    block = results["calibrated_test"]["tuned_ensemble"]
    assert 0.0 <= block["ece"] <= 1.0 and block["auroc"] > 0.8
    w = block["params"]["weights"]
    assert sum(w.values()) == pytest.approx(1.0) and w["mean_token_prob"] > w.get("seq_prob", 0.0)
    # the stored ensemble scores the items again exactly (round trip through results.json's JSON)
    ens = TunedEnsemble.from_dict(json.loads(json.dumps(block["params"]["ensemble"])))
    x = np.stack([[s.signals[nm] for nm in ens.signals] for s in samples])
    assert np.all((ens.confidence(x) >= 0) & (ens.confidence(x) <= 1))
    # one signal only: no ensemble, no error
    one = [Sample.from_dict({**s.to_dict(), "signals": {"mean_token_prob": s.signals["mean_token_prob"]}})
           for s in samples]
    res1, _ = evaluate(one, n_bootstrap=20)
    assert "tuned_ensemble" not in res1["calibrated_test"] and "tuned_ensemble" not in res1["calibrator_errors"]


def test_ccp_through_a_real_cross_encoder(tmp_path):
    """The NLI path end to end on a tiny random BERT cross-encoder built here: the value is what the
    model's argmax labels (combined both ways) give by the formula."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from llmcal.backends.nli import NLIModel
    from test_nli import build_tiny_nli

    nli = NLIModel(str(build_tiny_nli(tmp_path, "it is paris lyon nice".split(), seed=1)))
    texts, lps = ["it is", " paris"], [L(0.9), L(0.5)]
    top = [[("it is", L(0.9))], [(" paris", L(0.5)), (" lyon", L(0.3)), (" nice", L(0.2))]]
    got = ccp.ccp_signal(texts, lps, top, nli)
    assert got["judged_by"] == f"nli:{tmp_path}"
    alts = ["it is lyon", "it is nice"]
    p = nli.probs(["it is paris"] * 2 + alts, alts + ["it is paris"] * 2)
    lab = [ccp.LABELS[i] for i in p.argmax(axis=1)]
    labels = [ccp.combine(lab[0], lab[2]), ccp.combine(lab[1], lab[3])]
    assert got["ccp"] == pytest.approx(ccp.token_ccp([L(0.5), L(0.3), L(0.2)], labels))


def test_score_tokens_matches_the_generations_own_log_probabilities(embedded_backend):
    """HFBackend.score_tokens (CPMI's per-token pass) on the answer's own ids after its own prompt gives
    back the log-probabilities recorded while generating; after the bare prompt, other values."""
    b = embedded_backend
    prompt = b.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    g = b.generate([prompt], max_new_tokens=8, temperature=0.0, stop=("\n",))[0][0]
    lp = b.score_tokens(prompt, g.token_ids)
    assert lp.shape == (len(g.token_ids),) and lp == pytest.approx(g.token_logprobs[: len(lp)], abs=1e-4)
    bare = b.score_tokens(b.apply_chat_template([{"role": "user", "content": ""}]), g.token_ids)
    assert bare.shape == lp.shape and np.all(bare <= 0) and not np.allclose(bare, lp, atol=1e-3)
    with pytest.raises(ValueError, match="at least one token each"):
        b.score_tokens(prompt, [])
