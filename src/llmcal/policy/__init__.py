"""Presenting calibrated confidence: levels, colours, sentences, abstention, risk-controlled thresholds."""

from llmcal.policy.levels import Decision, Thresholds, decide
from llmcal.policy.risk import RiskControl, risk_controlled_threshold

__all__ = ["Decision", "Thresholds", "decide", "RiskControl", "risk_controlled_threshold"]
