"""Probe features, read from a run folder: no extra model call.

Everything here was produced by the one forward pass that scored the item
(``pipeline/measure.py``):

* **hidden states** of the *last prompt token* at the layers the run kept
  (``config.json`` -> ``backend.hidden_layers``; default ``-1`` and ``mid``).
  This is the representation used by P(IK) probes (Kadavath et al. 2022,
  "Language Models (Mostly) Know What They Know") and by the linear probes of
  Azaria & Mitchell 2023 ("The Internal State of an LLM Knows When It's
  Lying") and Liu et al. 2024 ("Uncertainty Estimation and Quantification for
  LLMs: A Simple Supervised Approach").
* **the mean hidden state over the predicted answer's tokens** at the same
  layers (position ``answer_mean``), from the same packed pass: the pooling of
  the answer used by Liu et al. 2024 and CCS-style probes, which sees what the
  model made of its own answer rather than only the question.
* **cheap input/output features** (:data:`CHEAP_FEATURES`): lengths of the
  prompt and of the chosen option, the number of options, the option
  log-likelihoods and every internal signal (as logits where they are
  probabilities).

Shapes: ``hidden`` (n_items, n_positions * n_layers_kept, hidden_size)
float32, position-major (:data:`POSITIONS`), ``cheap`` (n_items,
len(CHEAP_FEATURES)) float64, a probe's design matrix (n_items,
len(positions) * len(layers) * hidden_size + n_cheap).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llmcal.core.sample import Sample
from llmcal.records.run_dir import RunDir, RunDirError

#: Internal signals of ``signals/mc.py``, in [0, 1], higher = more sure.
SIGNALS = ("option_prob", "option_prob_norm", "margin", "entropy")

#: Names of the cheap features, in column order of :func:`cheap_features`.
CHEAP_FEATURES = (
    "logit_option_prob",        # logit of the softmax over summed option log-likelihoods
    "logit_option_prob_norm",   # the same over per-token log-likelihoods
    "logit_margin",             # top-1 minus top-2 option probability, as a logit
    "logit_entropy",            # 1 - normalized entropy, as a logit
    "pred_logprob_per_token",   # log-likelihood of the chosen option per token
    "pred_logprob_per_char",    # ... per character
    "log_n_options",
    "log_prompt_chars",
    "log_pred_tokens",
    "log_pred_chars",
    "log_mean_option_tokens",
    "log_pred_token_ratio",     # chosen option's tokens / mean option tokens (summed scores favour short options)
    "pred_is_greedy",           # the chosen option is the model's greedy continuation
)
# Not included: the chosen option's *summed* log-likelihood.  It is mostly a length
# (long options score low), and its relation to correctness flips between tasks
# (AUROC 0.57 on ARC-Easy, 0.39 on PIQA for the embedded model), which made the
# probe rank PIQA answers worse than chance when fitted on the other tasks.

_EPS = 1e-6


# the token positions a run folder can hold hidden states for
POSITIONS = ("last_prompt", "answer_mean")


def logit(p: np.ndarray | float, eps: float = _EPS) -> np.ndarray:
    """Logit with the input clipped to [eps, 1 - eps]; same shape as ``p``."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p)


def cheap_features_one(sample: Sample) -> np.ndarray:
    """The cheap features of one multiple-choice :class:`~llmcal.core.sample.Sample`, (len(CHEAP_FEATURES),)."""
    sig = sample.signals
    lp = sample.option_logprobs
    nt = sample.option_ntokens
    nc = sample.option_nchars or [len(c) for c in sample.choices] or [1] * len(lp)
    k = int(sample.prediction)
    greedy = sample.option_is_greedy or [False] * len(lp)
    clip = lambda p: min(max(float(p), _EPS), 1.0 - _EPS)  # noqa: E731
    lg = lambda p: math.log(clip(p)) - math.log1p(-clip(p))  # noqa: E731
    return np.array([
        lg(sig["option_prob"]),
        lg(sig["option_prob_norm"]),
        lg(sig["margin"]),
        lg(sig["entropy"]),
        float(lp[k]) / max(int(nt[k]), 1),
        float(lp[k]) / max(int(nc[k]), 1),
        math.log(len(lp)),
        math.log1p(len(sample.prompt or sample.question or "")),
        math.log1p(int(nt[k])),
        math.log1p(int(nc[k])),
        math.log1p(float(np.mean(nt))),
        math.log(max(int(nt[k]), 1) / max(float(np.mean(nt)), 1.0)),
        float(bool(greedy[k])),
    ], dtype=np.float64)


def cheap_features(samples: Sequence[Sample]) -> np.ndarray:
    """(n_items, len(CHEAP_FEATURES)) float64."""
    if not samples:
        return np.zeros((0, len(CHEAP_FEATURES)))
    return np.stack([cheap_features_one(s) for s in samples])


def abs_layer(layer: int, n_layers: int) -> int:
    """A hidden-state index as a non-negative one: 0 = embeddings, ``n_layers`` = last block.

    ``output_hidden_states`` returns ``n_layers + 1`` tensors, so ``-1`` is ``n_layers``.
    """
    i = int(layer)
    j = i if i >= 0 else n_layers + 1 + i
    if not 0 <= j <= n_layers:
        raise ValueError(f"hidden layer {i} is outside 0..{n_layers} (or -{n_layers + 1}..-1)")
    return j


@dataclass
class ModelInfo:
    """What a probe belongs to: the weights (name + fingerprint) and the hidden-state geometry."""

    name: str
    fingerprint: str | None
    n_layers: int
    hidden_size: int
    layers: list[int] = field(default_factory=list)  # kept layers, non-negative, in the run's order

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "fingerprint": self.fingerprint, "n_layers": self.n_layers,
                "hidden_size": self.hidden_size, "layers": list(self.layers)}


def run_model_info(run: RunDir, compute_fingerprint: bool = True) -> ModelInfo:
    """The model of a run folder, from ``config.json``'s ``backend`` section.

    ``backend.fingerprint`` is read where the run recorded it.  Where it did not
    (runs made before measure recorded it) and ``compute_fingerprint``, the model
    is loaded once from the run's ``model_args`` to compute
    the backend's ``fingerprint()`` (a few seconds), and the value is cached into
    ``config.json``'s ``backend`` section.
    """
    cfg = run.config()
    be = cfg.get("backend")
    if not be or "n_layers" not in be or "hidden_size" not in be:
        raise RunDirError(f"{run.path}: config.json has no 'backend' section with n_layers/hidden_size; "
                          "the model never loaded in this run")
    n_layers = int(be["n_layers"])
    fp = be.get("fingerprint")
    if fp is None and compute_fingerprint:
        fp = compute_run_fingerprint(cfg)
        be["fingerprint"] = fp
        cfg["backend"] = be
        run.write_config(cfg)
    return ModelInfo(
        name=str(be.get("model") or cfg.get("model_desc") or "unknown"),
        fingerprint=fp,
        n_layers=n_layers,
        hidden_size=int(be["hidden_size"]),
        layers=[abs_layer(i, n_layers) for i in be.get("hidden_layers", [])],
    )


def compute_run_fingerprint(cfg: dict[str, Any]) -> str:
    """Load the run's model through the backend registry and return its weight fingerprint."""
    from llmcal.backends.registry import load_backend

    margs = {k: v for k, v in (cfg.get("model_args") or {}).items() if k != "batch_size"}
    return load_backend(cfg.get("model") or "hf", **margs).fingerprint()


@dataclass
class RunFeatures:
    """Everything a probe needs from one or more run folders of the same model.

    ``hidden`` (n, n_positions * n_kept, hidden_size) float32 in sample order
    (row ``i`` is the hidden states of ``ids[i]``; slot ``p * n_kept + j`` is
    position ``positions[p]`` at kept layer ``j``), ``cheap`` (n, n_cheap), ``signals[name]`` (n,),
    ``correct`` (n,) 0/1 float, ``tasks`` (n,) str.
    """

    ids: list[str]
    tasks: np.ndarray
    correct: np.ndarray
    signals: dict[str, np.ndarray]
    cheap: np.ndarray
    hidden: np.ndarray | None
    model: ModelInfo
    option_logprobs: list[list[float]]
    references: np.ndarray
    sources: list[str] = field(default_factory=list)
    positions: list[str] = field(default_factory=lambda: ["last_prompt"])

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: np.ndarray) -> "RunFeatures":
        idx = np.asarray(idx, dtype=np.int64)
        return RunFeatures(
            ids=[self.ids[i] for i in idx],
            tasks=self.tasks[idx],
            correct=self.correct[idx],
            signals={k: v[idx] for k, v in self.signals.items()},
            cheap=self.cheap[idx],
            hidden=None if self.hidden is None else self.hidden[idx],
            model=self.model,
            option_logprobs=[self.option_logprobs[i] for i in idx],
            references=self.references[idx],
            sources=self.sources,
            positions=self.positions,
        )

    @property
    def n_options(self) -> np.ndarray:
        """(n,) each item's number of options (chance is 1 / n_options)."""
        return np.array([len(x) for x in self.option_logprobs], dtype=np.int64)

    def option_logit_matrix(self) -> np.ndarray:
        """(n, k_max) option log-likelihoods, -inf padded (temperature scaling's input)."""
        k = max(len(x) for x in self.option_logprobs)
        out = np.full((len(self), k), -np.inf)
        for i, x in enumerate(self.option_logprobs):
            out[i, : len(x)] = x
        return out


def features_from_samples(samples: Sequence[Sample], hidden_rows: np.ndarray | None,
                          model: ModelInfo, source: str = "",
                          positions: Sequence[str] = ("last_prompt",)) -> RunFeatures:
    """Build :class:`RunFeatures` from multiple-choice :class:`~llmcal.core.sample.Sample` records
    and the run's hidden rows.

    ``hidden_rows`` (n_rows, len(positions) * n_kept, hidden_size) is indexed by
    each sample's ``hidden_row``.
    """
    if not samples:
        raise ValueError(f"{source or 'samples'}: no samples")
    hidden = None
    if hidden_rows is not None:
        rows = np.array([-1 if s.hidden_row is None else s.hidden_row for s in samples], dtype=np.int64)
        if (rows < 0).any() or (rows >= len(hidden_rows)).any():
            raise RunDirError(f"{source}: some samples have no hidden-state row")
        hidden = np.asarray(hidden_rows[rows], dtype=np.float32)  # (n, n_pos * n_kept, hidden)
        if hidden.shape[1:] != (len(positions) * len(model.layers), model.hidden_size):
            raise RunDirError(f"{source}: hidden rows of shape {hidden.shape[1:]} do not match the model's "
                              f"{len(positions)} positions x {len(model.layers)} kept layers x "
                              f"{model.hidden_size}")
    return RunFeatures(
        ids=[s.id for s in samples],
        tasks=np.array([s.task for s in samples]),
        correct=np.array([bool(s.correct) for s in samples], dtype=np.float64),
        signals={k: np.array([float(s.signals[k]) for s in samples]) for k in SIGNALS},
        cheap=cheap_features(samples),
        hidden=hidden,
        model=model,
        option_logprobs=[list(map(float, s.option_logprobs)) for s in samples],
        references=np.array([int(s.reference) for s in samples], dtype=np.int64),
        sources=[source] if source else [],
        positions=list(positions),
    )


def load_run_features(path: str | Path, compute_fingerprint: bool = True) -> RunFeatures:
    """Read one run folder into :class:`RunFeatures` (hidden rows copied into memory)."""
    run = RunDir(path)
    model = run_model_info(run, compute_fingerprint=compute_fingerprint)
    samples = run.read_samples()
    hidden = run.load_hidden() if run.hidden_meta_path.exists() else None
    return features_from_samples(samples, hidden, model, source=str(run.path),
                                 positions=run.hidden_positions() or ["last_prompt"])


def same_model(a: ModelInfo, b: ModelInfo) -> str | None:
    """None when two runs come from the same weights and kept layers, else why not."""
    if a.name != b.name:
        return f"model {a.name!r} vs {b.name!r}"
    if a.fingerprint and b.fingerprint and a.fingerprint != b.fingerprint:
        return f"weights fingerprint {a.fingerprint} vs {b.fingerprint}"
    if a.hidden_size != b.hidden_size or a.n_layers != b.n_layers:
        return f"geometry {a.n_layers} layers x {a.hidden_size} vs {b.n_layers} x {b.hidden_size}"
    if a.layers != b.layers:
        return f"kept layers {a.layers} vs {b.layers}"
    return None


def concat_features(parts: Sequence[RunFeatures]) -> RunFeatures:
    """Pool several runs of one model (refused when the models or kept layers differ)."""
    if not parts:
        raise ValueError("no runs to pool")
    first = parts[0]
    for p in parts[1:]:
        why = same_model(first.model, p.model)
        if why:
            raise ValueError(f"cannot pool runs of different models: {why} ({first.sources} vs {p.sources})")
    ids = [i for p in parts for i in p.ids]
    if len(set(ids)) != len(ids):
        raise ValueError("the same item appears in two of the pooled runs")
    has_hidden = all(p.hidden is not None for p in parts)
    positions = first.positions
    if has_hidden and any(p.positions != positions for p in parts):
        # pool what every run holds: drop the positions some runs lack
        positions = [x for x in first.positions if all(x in p.positions for p in parts)]
        parts = [_keep_positions(p, positions) for p in parts]
    return RunFeatures(
        ids=ids,
        tasks=np.concatenate([p.tasks for p in parts]),
        correct=np.concatenate([p.correct for p in parts]),
        signals={k: np.concatenate([p.signals[k] for p in parts]) for k in first.signals},
        cheap=np.concatenate([p.cheap for p in parts]),
        hidden=np.concatenate([p.hidden for p in parts]) if has_hidden else None,
        model=first.model,
        option_logprobs=[x for p in parts for x in p.option_logprobs],
        references=np.concatenate([p.references for p in parts]),
        sources=[s for p in parts for s in p.sources],
        positions=list(positions),
    )


def _slots(rf: RunFeatures, positions: Sequence[str], layers: Sequence[int]) -> list[int]:
    """Hidden-row slots of ``positions`` x ``layers``, position-major."""
    n_kept = len(rf.model.layers)
    missing = [p for p in positions if p not in rf.positions]
    if missing:
        raise ValueError(f"positions {missing} were not kept by the run (kept: {rf.positions}); "
                         "answer_mean needs a run measured by llmcal 0.1 with hidden layers")
    return [rf.positions.index(p) * n_kept + rf.model.layers.index(x) for p in positions for x in layers]


def _keep_positions(rf: RunFeatures, positions: Sequence[str]) -> RunFeatures:
    from dataclasses import replace

    slots = _slots(rf, positions, rf.model.layers)
    return replace(rf, hidden=rf.hidden[:, slots], positions=list(positions))


def design_matrix(rf: RunFeatures, layers: Sequence[int] | None, use_cheap: bool = True,
                  positions: Sequence[str] = ("last_prompt",)) -> np.ndarray:
    """The probe's input, (n, len(positions) * len(layers) * hidden_size + n_cheap) float64.

    ``layers`` are non-negative layer indices that must be among the run's kept
    layers (None = all kept layers, in the run's order; [] = cheap features only);
    ``positions`` the token positions (:data:`POSITIONS`) read at each of them.
    """
    blocks = []
    layers = list(rf.model.layers) if layers is None else [int(x) for x in layers]
    if layers:
        if rf.hidden is None:
            raise RunDirError(f"{rf.sources}: the run kept no hidden states; rerun with --hidden_layers")
        missing = [x for x in layers if x not in rf.model.layers]
        if missing:
            raise ValueError(f"layers {missing} were not kept by the run (kept: {rf.model.layers})")
        slots = _slots(rf, positions, layers)
        blocks.append(rf.hidden[:, slots, :].reshape(len(rf), -1).astype(np.float64))  # (n, P*L*d)
    if use_cheap:
        blocks.append(rf.cheap)
    if not blocks:
        raise ValueError("a probe needs hidden-state layers, cheap features, or both")
    return np.concatenate(blocks, axis=1)
