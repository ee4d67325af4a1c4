"""The external confidence model: a probe on the model's hidden states, and ``combined``.

* ``features``: what the probe reads, from a run folder (hidden states of the last
  prompt token at the kept layers, cheap input/output features); no extra model call.
* ``models``: logistic (scikit-learn) and MLP (torch) correctness probes, standardized
  inputs, regularization by cross-validation on the calibration part only.
* ``combine``: the stacked model over the internal signals and the probe, then a calibrator.
* ``artifact``: ``probe.json`` + ``probe.npz``, bound to the model's fingerprint and layers.
* ``protocol``: in-task, the task-shift matrix and the learning curve.

References: Kadavath et al. 2022 (P(IK)); Azaria & Mitchell 2023 ("The Internal State of
an LLM Knows When It's Lying"); Burns et al. 2023 (CCS); Liu et al. 2024 ("Uncertainty
Estimation and Quantification for LLMs: A Simple Supervised Approach").

Nothing here imports torch at import time (only ``MLPProbe.fit`` does).
"""

from llmcal.probe.artifact import ProbeArtifact, ProbeMismatchError
from llmcal.probe.combine import Combiner
from llmcal.probe.features import ModelInfo, RunFeatures, load_run_features
from llmcal.probe.models import LogisticProbe, MLPProbe, make_probe

__all__ = ["Combiner", "LogisticProbe", "MLPProbe", "ModelInfo", "ProbeArtifact", "ProbeMismatchError",
           "RunFeatures", "load_run_features", "make_probe"]
