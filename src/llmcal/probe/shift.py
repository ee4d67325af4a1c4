"""Shift score per answer: is this question like the calibration data?

A calibration holds on data like the data it was fitted on (issue #15: a model calibrated
on hospital notes may fail on patient-forum questions).  :class:`ShiftScorer` measures, per
answer, how unlike the calibration pool its hidden state is -- the Mahalanobis distance to
the nearest calibration task (Lee et al. 2018) or the relative Mahalanobis distance (Ren et
al. 2021), :mod:`llmcal.signals.density` -- and flags an answer as *unlike* when its score
exceeds a threshold: the ``quantile`` (0.95) of the calibration pool's own *out-of-fold*
scores (each item scored by a density fitted on the other folds), so about 5% of new
questions from the pool's own tasks are flagged, whatever the hidden size.

It is fitted where the probe is fitted (``protocol.fit_all``, on the calibration part) and
saved with the probe artifact; ``summary(hidden)`` is the per-run line results.json carries
under ``"shift"`` (``{"share_unlike": 0.38, "threshold": ..., "method": "mahalanobis", ...}``:
"38% of these questions look unlike your calibration data"), and
``in_distribution(hidden_row) -> bool`` is what serve asks for one answer.

Which hidden state: ``position`` at ``layers`` of the run's rows, concatenated into one vector
(d = len(layers) * hidden_size).  The default, :data:`DEFAULT_POSITION` at every kept layer
(the last and the middle one), was chosen by leave-one-task-out AUROC of in- vs out-of-pool
on the multiple-choice tasks among one layer, two layers summed or concatenated, and both
positions (docs/benchmarks.md, "Under shift").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from llmcal.probe.features import RunFeatures
from llmcal.signals.density import METHODS, GaussianDensity

DEFAULT_METHOD = "mahalanobis"
DEFAULT_POSITION = "last_prompt"
DEFAULT_QUANTILE = 0.95


def hidden_block(rf: RunFeatures, position: str, layers: Sequence[int]) -> np.ndarray:
    """(n, len(layers) * hidden_size) the hidden states of ``position`` at kept ``layers`` of ``rf``'s
    items, concatenated in the order of ``layers``."""
    if rf.hidden is None:
        raise ValueError(f"{rf.sources}: the run kept no hidden states; the shift score needs them")
    slots = [slot_of(rf.positions, rf.model.layers, position, x) for x in layers]
    return np.asarray(rf.hidden[:, slots].reshape(len(rf), -1), dtype=np.float64)


def slot_of(positions: Sequence[str], layers: Sequence[int], position: str, layer: int) -> int:
    """The row slot of ``position`` x ``layer`` in a hidden row (position-major, as runs store them)."""
    if position not in positions:
        raise ValueError(f"shift score: position {position!r} not kept (kept: {list(positions)})")
    if layer not in layers:
        raise ValueError(f"shift score: layer {layer} not kept (kept: {list(layers)})")
    return list(positions).index(position) * len(layers) + list(layers).index(layer)




@dataclass
class ShiftScorer:
    """A fitted shift score: density, which hidden state it reads, and the flagging threshold."""

    density: GaussianDensity
    method: str
    position: str
    layers: list[int]  # concatenated, in this order
    threshold: float
    quantile: float
    n_fit: int
    row_positions: list[str]  # the layout of the hidden rows it was fitted on (what a run stores)
    row_layers: list[int]

    @classmethod
    def fit(cls, rf: RunFeatures, method: str = DEFAULT_METHOD, position: str | None = None,
            layers: Sequence[int] | None = None, quantile: float = DEFAULT_QUANTILE, n_folds: int = 5,
            seed: int = 0) -> "ShiftScorer":
        """Fit on the calibration part ``rf``; the threshold from out-of-fold scores (see the module)."""
        if method not in METHODS:
            raise ValueError(f"shift score: unknown method {method!r}; known: {', '.join(METHODS)}")
        if not 0.5 <= quantile < 1.0:
            raise ValueError(f"shift score: quantile must be in [0.5, 1), got {quantile}")
        position = position or (DEFAULT_POSITION if DEFAULT_POSITION in rf.positions else rf.positions[0])
        layers = sorted(int(x) for x in rf.model.layers) if layers is None else [int(x) for x in layers]
        H = hidden_block(rf, position, layers)  # (n, d)
        groups = rf.tasks.astype(str)
        oof = np.empty(len(H))
        folds = np.random.default_rng(seed).permutation(len(H)) % max(2, int(n_folds))
        for f in np.unique(folds):
            tr, va = folds != f, folds == f
            oof[va] = GaussianDensity.fit(H[tr], groups[tr]).score(H[va], method)
        threshold = float(np.quantile(oof, quantile))
        return cls(GaussianDensity.fit(H, groups), method, position, layers, threshold, float(quantile), len(H),
                   list(rf.positions), [int(x) for x in rf.model.layers])

    # ------------------------------------------------------------ scoring
    def scores(self, rf: RunFeatures) -> np.ndarray:
        """The shift score of every item of ``rf``, (n,); higher = less like the calibration data."""
        return self.density.score(hidden_block(rf, self.position, self.layers), self.method)

    def score_row(self, hidden_row: np.ndarray, positions: Sequence[str] | None = None,
                  layers: Sequence[int] | None = None) -> float:
        """The shift score of one answer's hidden row (n_positions * n_kept, hidden_size) as a run stores it
        (``positions`` x ``layers``; default: the layout it was fitted on)."""
        pos = self.row_positions if positions is None else positions
        kept = self.row_layers if layers is None else layers
        h = np.asarray(hidden_row)[[slot_of(pos, kept, self.position, x) for x in self.layers]].ravel()  # (d,)
        if self.method == "mahalanobis":
            return self.density.mahalanobis_one(h)
        return float(self.density.score(h[None, :], self.method)[0])

    def in_distribution(self, hidden_row: np.ndarray, positions: Sequence[str] | None = None,
                        layers: Sequence[int] | None = None) -> bool:
        """False when the answer's question looks unlike the calibration data (score above the threshold)."""
        return self.score_row(hidden_row, positions, layers) <= self.threshold

    def summary(self, rf: RunFeatures) -> dict[str, Any]:
        """The per-run line of results.json's ``"shift"``: the share of ``rf``'s questions flagged unlike."""
        s = self.scores(rf)
        return {"share_unlike": float(np.mean(s > self.threshold)), "threshold": self.threshold,
                "method": self.method, "position": self.position, "layers": list(self.layers),
                "quantile": self.quantile, "n": int(len(s)), "n_fit": self.n_fit,
                "fitted_on": list(self.density.classes_)}

    # ------------------------------------------------------------ files (the probe artifact)
    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "position": self.position, "layers": list(self.layers),
                "threshold": self.threshold, "quantile": self.quantile, "n_fit": self.n_fit,
                "classes": list(self.density.classes_), "row_positions": list(self.row_positions),
                "row_layers": list(self.row_layers)}

    def to_arrays(self) -> dict[str, np.ndarray]:
        return self.density.to_arrays()

    @classmethod
    def from_saved(cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> "ShiftScorer":
        return cls(GaussianDensity.from_arrays(dict(arrays), meta["classes"]), str(meta["method"]),
                   str(meta["position"]), [int(x) for x in meta["layers"]], float(meta["threshold"]),
                   float(meta["quantile"]),
                   int(meta["n_fit"]), [str(x) for x in meta["row_positions"]], [int(x) for x in meta["row_layers"]])


def in_vs_out_auroc(scorer: ShiftScorer, inside: RunFeatures, outside: RunFeatures) -> float:
    """AUROC of the shift score for telling ``outside`` items (positives) from ``inside`` ones."""
    from llmcal import metrics as M

    a, b = scorer.scores(inside), scorer.scores(outside)
    s = np.concatenate([a, b])
    y = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    order = (s - s.min()) / max(float(s.max() - s.min()), 1e-300)  # AUROC needs values in [0, 1]
    return float(M.auroc(order, y))


# ------------------------------------------------------------------ a run against a calibration: the two-sample test
#: Regularization of the domain classifier (inverse L2 strength, on standardized hidden states).  Chosen
#: between 0.01 and 0.1 by the mean leave-one-task-out AUROC over the eight multiple-choice tasks
#: (docs/benchmarks.md, "Under shift"): 0.967 against 0.961.
DOMAIN_C = 0.01


@dataclass
class DomainShift:
    """How distinguishable a target run's questions are from the calibration data, as a whole.

    The per-answer :class:`ShiftScorer` must judge one question alone (serve); when a whole target run
    is at hand -- ``llmcal calibrate TARGET --from SOURCE`` -- its *unlabeled* questions can be used,
    and the classifier two-sample test (Lopez-Paz & Oquab, ICLR 2017; the "domain classifier" of
    Rabanser et al., NeurIPS 2019) is far sharper: a logistic regression on the hidden states is
    trained to tell the source's calibration part from the target's calibration part, and judged on the
    two *test* parts it never saw.  Its held-out AUROC is ~0.5 when the target is drawn like the
    source and near 1 when it is another domain.  No label of either run is read.

    ``share_unlike`` is the share of the target's test questions the classifier scores above the
    ``quantile`` of the source's own test questions (so about 5% of source-like questions are flagged).
    """

    auroc: float
    share_unlike: float
    threshold: float
    quantile: float
    n_source: tuple[int, int]  # (fit, judged)
    n_target: tuple[int, int]
    position: str
    layers: list[int]
    C: float = DOMAIN_C

    @classmethod
    def test(cls, source_fit: np.ndarray, target_fit: np.ndarray, source_test: np.ndarray, target_test: np.ndarray,
             *, position: str = DEFAULT_POSITION, layers: Sequence[int] = (), quantile: float = DEFAULT_QUANTILE,
             C: float = DOMAIN_C, seed: int = 0) -> "DomainShift":
        """Fit on (n_s, d) ``source_fit`` against (n_t, d) ``target_fit``; judge on the two test blocks."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        from llmcal import metrics as M

        blocks = {"source_fit": source_fit, "target_fit": target_fit, "source_test": source_test,
                  "target_test": target_test}
        for name, b in blocks.items():
            if np.ndim(b) != 2 or len(b) < 2:
                raise ValueError(f"domain shift test: {name} needs at least 2 rows of hidden states, got shape "
                                 f"{np.shape(b)}")
        X = np.concatenate([source_fit, target_fit]).astype(np.float64)  # (n_s + n_t, d)
        y = np.r_[np.zeros(len(source_fit)), np.ones(len(target_fit))]
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, class_weight="balanced",
                                                                 random_state=seed))
        clf.fit(X, y)
        s_src = clf.predict_proba(np.asarray(source_test, dtype=np.float64))[:, 1]  # (n_s_test,)
        s_tgt = clf.predict_proba(np.asarray(target_test, dtype=np.float64))[:, 1]  # (n_t_test,)
        auroc = float(M.auroc(np.r_[s_src, s_tgt], np.r_[np.zeros(len(s_src)), np.ones(len(s_tgt))]))
        threshold = float(np.quantile(s_src, quantile))
        return cls(auroc, float(np.mean(s_tgt > threshold)), threshold, float(quantile),
                   (len(source_fit), len(source_test)), (len(target_fit), len(target_test)), position,
                   [int(x) for x in layers], float(C))

    @classmethod
    def between(cls, source: RunFeatures, source_split: tuple[np.ndarray, np.ndarray], target: RunFeatures,
                target_split: tuple[np.ndarray, np.ndarray], position: str | None = None,
                layers: Sequence[int] | None = None, **kw: Any) -> "DomainShift":
        """The test between two runs' features, each with its (calibration, test) split."""
        position = position or (DEFAULT_POSITION if DEFAULT_POSITION in source.positions else source.positions[0])
        layers = sorted(int(x) for x in source.model.layers) if layers is None else [int(x) for x in layers]

        def block(rf: RunFeatures, idx: np.ndarray) -> np.ndarray:
            return hidden_block(rf.subset(np.asarray(idx)), position, layers)

        return cls.test(block(source, source_split[0]), block(target, target_split[0]),
                        block(source, source_split[1]), block(target, target_split[1]),
                        position=position, layers=layers, **kw)

    def verdict(self) -> str:
        """One sentence a user can act on."""
        if self.auroc >= 0.8:
            how = "look unlike the calibration data"
        elif self.auroc >= 0.65:
            how = "look somewhat unlike the calibration data"
        else:
            how = "look like the calibration data"
        return (f"{self.share_unlike:.0%} of these questions {how} (a classifier tells them apart with AUROC "
                f"{self.auroc:.2f}; 0.5 = indistinguishable)")

    def to_json(self) -> dict[str, Any]:
        return {"method": "domain_classifier", "auroc": self.auroc, "share_unlike": self.share_unlike,
                "threshold": self.threshold, "quantile": self.quantile, "n_source": list(self.n_source),
                "n_target": list(self.n_target), "position": self.position, "layers": list(self.layers),
                "C": self.C, "verdict": self.verdict()}
