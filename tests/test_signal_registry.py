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

OPEN_WRITTEN = {"ptrue", "verbalized", "verbalized_percent", "agreement", "semantic_entropy"}  # measure_open


def test_every_signal_is_complete():
    assert R.SIGNALS, "nothing registered"
    for name, s in R.SIGNALS.items():
        assert s.name == name and s.kind in KINDS and s.cost in COSTS
        assert s.inputs and set(s.inputs) <= set(INPUTS), name
        assert s.description.strip() and s.citation.strip(), name
        assert s.citation == OWN or any(ch.isdigit() for ch in s.citation), f"{name}: cite a paper and year"
        assert s.computed_by.startswith("llmcal.signals."), name
        assert (s.family is None) == (s.kind == "mc"), name  # MC signals are always on
    rows = R.describe_signals()
    assert [r["name"] for r in rows] == list(R.SIGNALS)
    assert set(rows[0]) == {"name", "kind", "family", "default", "inputs", "cost", "citation", "description",
                            "computed_by"}
    assert [r["name"] for r in R.describe_signals("mc")] == list(MC_SIGNALS)


def test_registered_names_are_what_the_signal_functions_return():
    _, mc = mc_signals(np.log([0.6, 0.3, 0.1]), np.array([1, 2, 3]))
    assert [s.name for s in R.signals_for("mc")] == list(mc) == list(MC_SIGNALS)
    gen = Generation("Paris", [1, 2], np.log([0.9, 0.8]), np.array([0.3, 0.2]),
                     top_logprobs=[[("Paris", np.log(0.9)), ("Lyon", np.log(0.05))], [("!", np.log(0.8))]])
    tokens = [s.name for s in R.signals_for("open", ["tokens"])]
    assert tokens == list(token_signals(gen)) == list(TOKEN_SIGNALS)
    assert {s.name for s in R.signals_for("open")} == set(TOKEN_SIGNALS) | OPEN_WRITTEN


def test_families_costs_and_defaults():
    assert R.families("open") == ["tokens", "ptrue", "verbalized", "verbalized_percent", "agreement"]
    assert R.default_families("open") == ["tokens", "ptrue", "verbalized", "agreement"]
    assert R.families("mc") == [] and R.default_families("mc") == []
    assert [s.name for s in R.signals_for("open", ["agreement"])] == ["agreement", "semantic_entropy"]
    assert [s.name for s in R.signals_for("mc", [])] == list(MC_SIGNALS)  # always on
    cost = {n: s.cost for n, s in R.SIGNALS.items()}
    assert {cost[n] for n in MC_SIGNALS} | {cost[n] for n in TOKEN_SIGNALS} == {"free"}
    assert cost["ptrue"] == "+1 scoring pass" and cost["verbalized"] == "+1 short generation"
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
