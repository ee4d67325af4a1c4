"""The signal registry: every signal the pipeline writes is registered, complete, and checkable by name."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from llmcal.core.requests import Generation
from llmcal.signals import registry as R
from llmcal.signals.generation import TOKEN_SIGNALS, token_signals
from llmcal.signals.mc import SIGNALS as MC_SIGNALS
from llmcal.signals.mc import mc_signals
from llmcal.signals.spec import COSTS, INPUTS, KINDS, OWN, SignalSpec

OPEN_WRITTEN = {"ptrue", "ptrue_chat", "verbalized", "verbalized_percent", "agreement", "semantic_entropy"}  # measure_open
SAMPLED = {"mc_sequence_entropy", "mc_normalized_entropy", "lexsim_rouge_l", "lexsim_bleu", "num_semantic_sets",
           "eigval_laplacian", "degree_matrix", "eccentricity", "kle", "eigenscore", "cocoa_msp", "cocoa_ppl",
           "semantic_density"}  # signals.sampled.sampled_signals
ESTIMATORS = SAMPLED | {"pmi", "token_sar", "sar", "ccp", "cpmi"}


def test_every_signal_is_complete():
    assert R.SIGNALS, "nothing registered"
    for name, s in R.SIGNALS.items():
        assert s.name == name and s.kind in KINDS and s.cost in COSTS
        assert s.inputs and set(s.inputs) <= set(INPUTS), name
        assert s.description.strip() and s.citation.strip(), name
        assert s.citation == OWN or any(ch.isdigit() for ch in s.citation), f"{name}: cite a paper and year"
        assert s.computed_by.startswith("llmcal.signals."), name
        # MC signals are always on, except the hidden-state density family (fitted by the probe, opt-in)
        assert (s.family is None) == (s.kind == "mc" and s.family != "density"), name
    rows = R.describe_signals()
    assert [r["name"] for r in rows] == list(R.SIGNALS)
    assert set(rows[0]) == {"name", "kind", "family", "default", "inputs", "cost", "citation", "description",
                            "computed_by", "score"}
    assert [r["name"] for r in R.describe_signals("mc") if r["family"] != "density"] == list(MC_SIGNALS)


def test_registered_names_are_what_the_signal_functions_return():
    _, mc = mc_signals(np.log([0.6, 0.3, 0.1]), np.array([1, 2, 3]))
    # what every MC sample holds; the density family comes from the probe's fit, not from a sample
    assert [s.name for s in R.signals_for("mc") if s.family is None] == list(mc) == list(MC_SIGNALS)
    assert {s.name for s in R.signals_for("mc") if s.family == "density"} == {"mahalanobis", "rmd"}
    gen = Generation("Paris", [1, 2], np.log([0.9, 0.8]), np.array([0.3, 0.2]),
                     top_logprobs=[[("Paris", np.log(0.9)), ("Lyon", np.log(0.05))], [("!", np.log(0.8))]])
    tokens = [s.name for s in R.signals_for("open", ["tokens"])]
    assert tokens == list(token_signals(gen)) == list(TOKEN_SIGNALS)
    # every open signal but the hidden-state density ones (signals/density.py) is one of these
    written = {s.name for s in R.signals_for("open") if "hidden_states" not in s.inputs}
    assert written == set(TOKEN_SIGNALS) | OPEN_WRITTEN | ESTIMATORS


def test_families_costs_and_defaults():
    fams = R.families("open")
    assert fams[:6] == ["tokens", "ptrue", "ptrue_chat", "verbalized", "verbalized_percent", "agreement"]
    assert [f for f in fams if f in ("sampled", "pmi", "sar")] == ["sampled", "pmi", "sar"]
    assert R.default_families("open") == ["tokens", "ptrue_chat", "verbalized", "agreement"]
    assert R.families("mc") == ["density"] and R.default_families("mc") == []  # hidden-state density: opt-in
    assert [s.name for s in R.signals_for("open", ["agreement"])] == ["agreement", "semantic_entropy"]
    assert [s.name for s in R.signals_for("mc", [])] == list(MC_SIGNALS)  # always on
    cost = {n: s.cost for n, s in R.SIGNALS.items()}
    assert {cost[n] for n in MC_SIGNALS} | {cost[n] for n in TOKEN_SIGNALS} == {"free"}
    assert cost["ptrue"] == cost["ptrue_chat"] == "+1 scoring pass" and cost["verbalized"] == "+1 short generation"
    assert cost["agreement"] == cost["semantic_entropy"] == "+k samples"
    with pytest.raises(ValueError, match=r"--signals: unknown \['tokenz'\]; known: tokens, ptrue"):
        R.signals_for("open", ["tokenz"])
    assert R.check_families("open", ["ptrue"]) == ("ptrue",)


def test_check_signal_names_the_known_ones():
    assert R.check_signal("option_prob_norm", "mc").name == "option_prob_norm"
    assert R.check_signal("semantic_entropy", "open").family == "agreement"
    with pytest.raises(ValueError) as info:
        R.check_signal("optin_prob", "mc")
    msg = str(info.value)
    assert "'optin_prob'" in msg and "did you mean 'option_prob'" in msg
    assert all(n in msg for n in MC_SIGNALS) and "ptrue" not in msg
    with pytest.raises(ValueError, match="open-ended runs, not multiple-choice ones.*option_prob, "):
        R.check_signal("ptrue", "mc")
    with pytest.raises(ValueError, match="seq_prob.*semantic_entropy"):
        R.check_signal("option_prob", "open")
    with pytest.raises(ValueError, match="kind"):
        R.check_signal("option_prob", "essay")
    with pytest.raises(ValueError, match="unknown signal 'nope'"):
        R.get_signal("nope")


def test_a_new_signal_is_one_registration():
    spec = SignalSpec("hidden_probe_conf", "open", ("hidden_states",), "free", OWN,
                      "a test signal", family="probe_test", default=False)
    R.register(spec)
    try:
        assert R.get_signal("hidden_probe_conf") is spec
        assert spec in R.signals_for("open") and spec in R.signals_for("open", ["probe_test"])
        assert spec not in R.signals_for("open", ["tokens"])
        assert "probe_test" in R.families("open") and "probe_test" not in R.default_families("open")
        assert R.check_signal("hidden_probe_conf", "open") is spec
        R.register(spec)  # the same spec again is harmless
        with pytest.raises(ValueError, match="already registered"):
            R.register(SignalSpec("hidden_probe_conf", "open", ("samples",), "+k samples", OWN, "other",
                                  family="probe_test", default=False))
        with pytest.raises(ValueError, match="on or off as one"):
            R.register(SignalSpec("other_probe_conf", "open", ("hidden_states",), "free", OWN, "x",
                                  family="probe_test", default=True))
    finally:
        R.unregister("hidden_probe_conf")
    assert "hidden_probe_conf" not in R.SIGNALS and "probe_test" not in R.families("open")


@pytest.mark.parametrize("kwargs, match", [
    ({"inputs": ("vibes",)}, "unknown inputs"),
    ({"inputs": "samples"}, "tuple"),
    ({"cost": "cheap"}, "cost"),
    ({"citation": " "}, "citation"),
    ({"kind": "both"}, "kind"),
    ({"name": "Bad Name"}, "name"),
    ({"family": None}, "needs a family"),
])
def test_spec_validation(kwargs, match):
    base = dict(name="x_conf", kind="open", inputs=("samples",), cost="+k samples", citation=OWN,
                description="d", family="x")
    with pytest.raises(ValueError, match=match):
        SignalSpec(**{**base, **kwargs})


def test_registry_imports_no_torch_and_no_other_stage():
    code = ("import sys; import llmcal.signals.registry as r; r.describe_signals(); "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('llmcal.tasks', 'llmcal.backends', "
            "'llmcal.records', 'llmcal.pipeline'))]; print(bad); sys.exit(bool(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_estimators_are_registered_with_their_score_convention():
    from llmcal.signals.spec import decode, encode
    score = {n: R.SIGNALS[n].score for n in ESTIMATORS}
    assert {n for n, v in score.items() if v == "uncertainty"} == {
        "mc_sequence_entropy", "mc_normalized_entropy", "cocoa_msp", "cocoa_ppl", "token_sar"}
    assert {n for n, v in score.items() if v == "log_odds"} == {"eigenscore", "pmi", "sar", "cpmi"}
    assert all(R.SIGNALS[n].score == "confidence" for n in TOKEN_SIGNALS)
    assert {R.SIGNALS[n].family for n in SAMPLED} == {"sampled"} and R.SIGNALS["pmi"].cost == "+1 scoring pass"
    assert "sampled" not in R.default_families("open")  # opt-in: the defaults stay what they were
    for raw, sc in ((2.5, "uncertainty"), (0.0, "uncertainty"), (-3.0, "log_odds"), (4.0, "log_odds")):
        assert decode(encode(raw, sc), sc) == pytest.approx(raw, abs=1e-12)  # one-to-one, nothing squashed
    assert encode(0.0, "uncertainty") == 1.0 and encode(0.0, "log_odds") == 0.5
    with pytest.raises(ValueError, match="uncertainty score must be >= 0"):
        encode(-1.0, "uncertainty")
    with pytest.raises(ValueError, match="score must be one of"):
        SignalSpec("x_conf", "open", ("samples",), "+k samples", OWN, "d", family="x", score="raw")


def test_needs_and_availability_per_backend():
    from llmcal.backends.hf import HFBackend
    from llmcal.backends.openai.backend import OpenAIBackend
    hf, api = HFBackend.capabilities, OpenAIBackend.capabilities
    assert R.needs(R.SIGNALS["kle"]) == ["samples", "embedder", "NLI model (or embeddings)"]
    assert R.needs(R.SIGNALS["entropy_conf"]) == ["entropies"]
    assert R.availability(R.SIGNALS["mc_sequence_entropy"], hf) == "yes"
    assert R.availability(R.SIGNALS["kle"], hf, nli_model=True) == "yes"
    assert R.availability(R.SIGNALS["kle"], hf).startswith("approx: embeddings in place of an NLI model")
    assert R.availability(R.SIGNALS["entropy_conf"], api, approximate_entropy=True) == (
        "approx: entropy from the server's top-k log-probabilities")
    assert R.availability(R.SIGNALS["seq_prob"], api, approximate_entropy=True) == "yes"
    assert R.availability(R.SIGNALS["pmi"], {"generate"}) == "no: the backend cannot score"
    assert R.availability(R.SIGNALS["cpmi"], hf) == "yes" and "per-token scoring" in R.needs(R.SIGNALS["cpmi"])
    hidden = SignalSpec("h_conf", "open", ("hidden_states",), "free", OWN, "d", family="h")
    assert R.availability(hidden, api) == "no: the backend cannot hidden states"


def test_llmcal_signals_lists_needs_and_what_the_backend_supplies(capsys):
    import json

    from llmcal.cli.main import main

    assert main(["signals", "--kind", "open", "--model", "openai", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) >= {"kle", "pmi", "sar", "entropy_conf"} and all(r["kind"] == "open" for r in rows.values())
    assert rows["entropy_conf"]["available"].startswith("approx: entropy from the server's top-k")
    assert rows["kle"]["available"].startswith("approx: embeddings in place of an NLI model")
    assert rows["pmi"]["available"] == "yes" and rows["kle"]["score"] == "confidence"
    # conditional PMI scores the answer's own tokens one by one: a local model can, a server cannot
    assert rows["cpmi"]["available"] == "no: the backend cannot score tokens"
    assert main(["signals", "--kind", "open", "--model", "hf", "--nli_model", "x"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("kle "))
    assert "samples, embedder, NLI model (or embeddings)" in line and line.endswith("[yes]")
