"""``combined``: a stacked model over the internal signals and the probe, then a calibrator.

The internal signals (``option_prob``, ``option_prob_norm``, ``margin``,
``entropy``) are cheap and already rank answers; the external probe reads the
hidden state (Kadavath et al. 2022; Azaria & Mitchell 2023; Liu et al. 2024).
Liu et al. 2024 and Kadavath et al. 2022 both find that the two carry partly
different information, so they are stacked (Wolpert 1992): a logistic
regression over their logits

    z = b + sum_j a_j * logit(signal_j) + a_p * probe_logit + a_c * logit(1 / n_options)     (n,)

(standardized inputs, L2 penalty ``C``), followed by a binary calibrator
(``llmcal.calibrators``; Platt by default) on the stacker's probability.

Made to travel (issue #15):

* **the number of options is an input** (``logit_chance`` = logit(1/k)): chance is 0.5
  with two options and 0.25 with four, and a confidence learned on 4-option tasks must
  not be applied unchanged to 2-option ones;
* **source tasks are the folds.**  Fitted on a pool of tasks (``groups``, each item's
  task), the stacker's ``C`` is chosen by
  leave-one-task-out cross-validation (the mean AUROC on the held-out task,
  ``models.cv_choose``): every choice is judged on a task the fit never saw.
  Hidden states name the task, so a model tuned on random folds learns each task's base
  rate -- right in the pool, wrong on a new task, where ``combined`` then lost to a
  constant; leave-one-task-out prices that in.  With at least :data:`MIN_OOF_GROUPS`
  tasks the out-of-fold probe logits and stacker outputs (the stacker's and the
  calibrator's inputs) are leave-one-task-out too; with fewer, pooling out-of-task
  outputs confounds the ranking with the tasks' base rates (two tasks: each is scored by
  a model of the other's base rate, which can turn the pooled relation negative), so
  they stay stratified k-fold.  On one task (or without groups) everything is
  stratified k-fold, as before;
* **anchored on the best single signal** (``anchor``, the default with two or more
  source tasks and no given ``C``): the internal signal with the best mean
  within-task AUROC over the source tasks is the anchor; the stacker is a logistic
  ridge whose anchor and ``logit_chance`` weights are free and whose other inputs (the
  probe, the other signals) carry an L2 penalty from :data:`ANCHOR_PENALTIES`
  (``inf``: the anchor and chance alone).  The penalty is chosen by leave-one-task-out
  AUROC with the one-standard-error rule (Hastie et al., *Elements of Statistical
  Learning*, 7.10): another input enters only where its mean gain over the anchor
  alone, across the held-out tasks, exceeds its standard error.  A stacker free to
  weigh every input learned weights that did not carry to new tasks (mean AUROC 0.601
  against 0.615 for ``option_prob_norm`` alone, 8 tasks, 800 items a task); anchored,
  0.6153 against 0.6153 (docs/benchmarks.md, "Under shift").

No stage sees the probe's in-sample output: the stacker is fitted on
out-of-fold probe logits (``models.cross_fit_logits``), and the calibrator on
out-of-fold stacker outputs, all inside the calibration part.  At inference the
probe and the stacker fitted on the whole calibration part are used.

The API T1's transfer benchmark uses: ``Combiner(calibrator, signals, n_folds, seed, chance, C)``,
``fit(signals, probe_logits, y, n_options=None, groups=None)``, ``predict(signals, probe_logits,
n_options=None)``; artifacts written before ``chance`` load with it off and ``C = 1``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from llmcal.probe.features import SIGNALS, logit
from llmcal.probe.models import LogisticProbe, Probe, cross_fit_logits, cv_choose, cv_splits, sigmoid

#: Inverse L2 strength of the stacker in artifacts that predate its choice by cross-validation.
STACKER_C = 1.0
#: The grid the stacker's C is chosen from (on standardized inputs), by out-of-fold log loss.
STACKER_CS = (0.01, 0.1, 1.0, 10.0)
#: Fewest source tasks for which out-of-fold outputs are leave-one-task-out (see the module docstring).
MIN_OOF_GROUPS = 4
#: The anchored stacker's L2 penalties on the non-anchor inputs (standardized, per mean log loss); ``inf``:
#: the anchor and the chance logit alone.  Chosen by leave-one-task-out AUROC and the one-standard-error rule.
ANCHOR_PENALTIES = (0.0, 0.001, 0.01, 0.1, 1.0, math.inf)
#: The (tiny) penalty on the anchor's and the chance logit's weights, only to keep the fit finite.
_FREE_PENALTY = 1e-6
#: The stacker's inputs, in column order (``logit_chance`` only when ``chance``).
STACK_INPUTS = tuple(f"logit_{s}" for s in SIGNALS) + ("probe_logit", "logit_chance")


def oof_groups(groups: np.ndarray | None) -> np.ndarray | None:
    """``groups`` when they hold at least :data:`MIN_OOF_GROUPS` tasks, else None (stratified folds)."""
    if groups is None or len(set(np.asarray(groups).tolist())) < MIN_OOF_GROUPS:
        return None
    return groups


def _task_aurocs(z: np.ndarray, y: np.ndarray, folds) -> np.ndarray:
    """The AUROC of scores ``z`` on each held-out task of ``folds`` (one-class tasks skipped), (n_tasks,)."""
    from llmcal.probe.models import _auroc

    return np.array([_auroc(z[va], y[va]) for _, va in folds if 0 < y[va].sum() < len(va)], dtype=np.float64)


def _ridge_logistic(Z: np.ndarray, y: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """Logistic regression on ``Z`` (n, d) with the L2 penalty ``0.5 * sum(penalty * w**2)`` on the mean log
    loss (no penalty on the intercept); returns ``[intercept, w_1..w_d]``."""
    from scipy.optimize import minimize

    n = len(y)

    def f(b: np.ndarray) -> tuple[float, np.ndarray]:
        z = Z @ b[1:] + b[0]
        g = (sigmoid(z) - y) / n
        loss = float(np.sum(np.logaddexp(0.0, z) - y * z) / n + 0.5 * penalty @ (b[1:] ** 2))
        return loss, np.concatenate([[g.sum()], Z.T @ g + penalty * b[1:]])

    return minimize(f, np.zeros(Z.shape[1] + 1), jac=True, method="L-BFGS-B").x


def one_se_choice(per_task: Mapping[float, np.ndarray], base: float) -> float:
    """The one-standard-error rule over held-out tasks: the key of ``per_task`` (each an array of per-task
    AUROCs, the same tasks in the same order) with the largest mean gain over ``per_task[base]``, among those
    whose mean gain exceeds its standard error; ``base`` when none does."""
    ref = np.asarray(per_task[base], dtype=np.float64)
    best, pick = 0.0, base
    for key, vals in per_task.items():
        d = np.asarray(vals, dtype=np.float64) - ref
        if key == base or len(d) < 2:
            continue
        m, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))
        if m > se and m > best:
            best, pick = m, key
    return pick


def chance_logit(n_options: np.ndarray | Sequence[int]) -> np.ndarray:
    """logit(1 / k) for each item's number of options k, (n,): 0 for two options, -1.10 for four."""
    k = np.asarray(n_options, dtype=np.float64)
    if k.size and k.min() < 2:
        raise ValueError(f"n_options: every item needs at least 2 options, got {int(k.min())}")
    return -np.log(k - 1.0)


def stack_inputs(signals: Mapping[str, np.ndarray], probe_logits: np.ndarray,
                 names: Sequence[str] = SIGNALS, n_options: np.ndarray | None = None) -> np.ndarray:
    """(n, len(names) + 1 [+ 1]): the logits of the internal signals, the probe's logit, and with
    ``n_options`` (n,) the chance logit."""
    cols = [logit(np.asarray(signals[s], dtype=np.float64)) for s in names]
    cols.append(np.asarray(probe_logits, dtype=np.float64))
    if n_options is not None:
        cols.append(chance_logit(n_options))
    return np.stack(cols, axis=1)


class Combiner:
    """Stacker (logistic regression on logits) + calibrator; ``fit`` / ``predict``.

    ``signals``: dict name -> (n,) in [0, 1]; ``probe_logits`` (n,); ``y`` (n,) 0/1;
    ``n_options`` (n,) each item's number of options (needed when ``chance``);
    ``groups`` (n,) each item's source task.  ``chance`` None: read the number of options when
    ``fit`` is given them.  ``C`` None: chosen from :data:`STACKER_CS`, or -- with ``anchor`` and
    ``groups`` naming two or more tasks -- the stacker is the ridge toward the best single signal
    (module docstring; ``cv_["param"] == "anchor_penalty"``).  A given ``C`` fits the plain stacker.
    """

    def __init__(self, calibrator: str = "platt", signals: Sequence[str] = SIGNALS, n_folds: int = 5,
                 seed: int = 0, chance: bool | None = None, C: float | None = None, anchor: bool = True) -> None:
        self.calibrator = calibrator
        self.signals = tuple(signals)
        self.n_folds = int(n_folds)
        self.seed = int(seed)
        self.chance = None if chance is None else bool(chance)
        self.C = None if C is None else float(C)
        self.anchor = bool(anchor)
        self.cv_: dict[str, Any] = {}

    def _inputs(self, signals: Mapping[str, np.ndarray], probe_logits: np.ndarray,
                n_options: np.ndarray | None) -> np.ndarray:
        if self.chance and n_options is None:
            raise ValueError("combined: this stacker reads the number of options; pass n_options")
        return stack_inputs(signals, probe_logits, self.signals, n_options if self.chance else None)

    def fit(self, signals: Mapping[str, np.ndarray], probe_logits: np.ndarray, y: np.ndarray,
            n_options: np.ndarray | None = None, groups: np.ndarray | None = None) -> "Combiner":
        """``probe_logits`` must be out-of-fold (see ``cross_fit_logits``, by the same ``groups``)."""
        import warnings

        from llmcal.calibrators import get_calibrator

        if self.chance is None:
            self.chance = n_options is not None
        S = self._inputs(signals, probe_logits, n_options)  # (n, k + 1 [+ 1])
        y = np.asarray(y, dtype=np.float64)
        splits = cv_splits(y, self.n_folds, self.seed + 1, groups)  # choosing C: leave one task out
        oof_splits = cv_splits(y, self.n_folds, self.seed + 1, oof_groups(groups))

        def stacker(C: float) -> LogisticProbe:
            return LogisticProbe(C=C, n_hidden=0, n_components=None, n_folds=self.n_folds, seed=self.seed)

        def out_of_fold(C: float, folds) -> np.ndarray:  # (n,) centred scores, each from a stacker that never saw the row
            z = np.zeros(len(y))
            for tr, va in folds:
                z[va] = (S[va] - S[tr].mean(axis=0)) @ stacker(C).fit(S[tr], y[tr], tune=False).coef_
            return z

        if self.anchor and self.C is None and groups is not None and len(set(np.asarray(groups).tolist())) >= 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                oof, rows = self._fit_anchored(S, y, splits, oof_splits)
            self.calibrator_ = get_calibrator(self.calibrator).fit(oof[rows], y[rows])
            return self
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.C is None:
                grouped = groups is not None and len(set(np.asarray(groups).tolist())) >= 2
                self.C, self.cv_ = cv_choose(
                    STACKER_CS, lambda C, tr, va: stacker(C).fit(S[tr], y[tr], tune=False).logit(S[va]), y, splits,
                    grouped, "C")
            self.stacker_ = stacker(self.C).fit(S, y, tune=False)
            self.center_ = S.mean(axis=0)  # (k + 1 [+ 1],)
            rows = np.concatenate([va for _, va in oof_splits])
            oof = sigmoid(out_of_fold(self.C, oof_splits))  # (n,)
        self.calibrator_ = get_calibrator(self.calibrator).fit(oof[rows], y[rows])
        return self

    def _fit_anchored(self, S: np.ndarray, y: np.ndarray, splits, oof_splits) -> tuple[np.ndarray, np.ndarray]:
        """The ridge toward the best single signal (module docstring): sets ``stacker_``, ``center_``, ``cv_``;
        returns the out-of-fold stacked probabilities (n,) and the rows they cover."""
        names = self.input_names()
        n, d = S.shape
        mu = S.mean(axis=0)
        sd = S.std(axis=0)
        sd = np.where(sd > 1e-8, sd, 1.0)
        Z = (S - mu) / sd  # (n, d) standardized: the penalties are in these units
        signal_cols = [i for i, name in enumerate(names) if name not in ("probe_logit", "logit_chance")]
        single = {i: float(np.mean(_task_aurocs(Z[:, i], y, splits)) if splits else 0.5) for i in signal_cols}
        j = max(signal_cols, key=lambda i: single[i])  # the anchor; ties: the first in input order
        free = [j] + ([names.index("logit_chance")] if "logit_chance" in names else [])

        def fit(penalty: float, rows: np.ndarray) -> tuple[float, np.ndarray]:  # (intercept, (d,) standardized)
            cols = free if math.isinf(penalty) else list(range(d))
            pen = np.array([_FREE_PENALTY if c in free else penalty for c in cols])
            b = _ridge_logistic(Z[rows][:, cols], y[rows], pen)
            w = np.zeros(d)
            w[cols] = b[1:]
            return float(b[0]), w

        per_task = {}
        for penalty in ANCHOR_PENALTIES:
            z = np.zeros(n)
            for tr, va in splits:
                z[va] = Z[va] @ fit(penalty, tr)[1]
            per_task[penalty] = _task_aurocs(z, y, splits)
        chosen = one_se_choice(per_task, math.inf)
        b0, w = fit(chosen, np.arange(n))
        coef = w / sd  # in the inputs' own units
        stacker = LogisticProbe(C=None, n_hidden=0, n_components=None, n_folds=self.n_folds, seed=self.seed)
        stacker.coef_ = coef
        stacker.intercept_ = np.array([b0 - float(mu @ coef)])
        self.stacker_, self.center_ = stacker, mu
        label = lambda p: "inf" if math.isinf(p) else float(p)  # noqa: E731  (JSON has no infinity)
        self.cv_ = {"param": "anchor_penalty", "anchor": names[j], "grid": [label(p) for p in ANCHOR_PENALTIES],
                    "cv_task_auroc": [float(per_task[p].mean()) if len(per_task[p]) else None for p in ANCHOR_PENALTIES],
                    "single_cv_task_auroc": {names[i]: single[i] for i in signal_cols}, "chosen": label(chosen),
                    "rule": "one standard error over the held-out tasks", "n_folds": len(splits), "grouped": True}
        oof = np.zeros(n)
        for tr, va in oof_splits:
            oof[va] = (Z[va] - Z[tr].mean(axis=0)) @ fit(chosen, tr)[1]
        rows = np.concatenate([va for _, va in oof_splits])
        return sigmoid(oof), rows

    def stacked(self, signals: Mapping[str, np.ndarray], probe_logits: np.ndarray,
                n_options: np.ndarray | None = None) -> np.ndarray:
        """The calibrator's input, (n,): sigmoid of the stacker's centred score ``(S - center_) @ coef_``.

        The calibrator is fitted on out-of-fold scores, and a fold's *intercept* (its training
        rows' base rate) is anti-correlated with its held-out rows' labels: where the inputs rank
        weakly that artefact alone can tilt the calibrator's fit negative.  So the calibrator
        reads the scores without intercepts (each fold's own centring) and sets the level itself.
        Artifacts from before ``center_`` keep the stacker's probability with its intercept.
        """
        S = self._inputs(signals, probe_logits, n_options)
        if not hasattr(self, "center_"):
            return sigmoid(self.stacker_.logit(S))
        return sigmoid((S - self.center_) @ self.stacker_.coef_)

    def predict(self, signals: Mapping[str, np.ndarray], probe_logits: np.ndarray,
                n_options: np.ndarray | None = None) -> np.ndarray:
        """``combined`` confidence, (n,) in [0, 1]."""
        return np.asarray(self.calibrator_.predict(self.stacked(signals, probe_logits, n_options)), dtype=np.float64)

    def predict_one(self, signals: Mapping[str, float], probe_logit: float, n_options: int | None = None) -> float:
        """``predict`` for one answer, on Python floats (the serving path; no (n,) arrays to build)."""
        w = self.stacker_.coef_
        x = []
        for s in self.signals:
            p = min(max(float(signals[s]), 1e-6), 1.0 - 1e-6)
            x.append(math.log(p) - math.log1p(-p))
        x.append(float(probe_logit))
        if self.chance:
            if n_options is None:
                raise ValueError("combined: this stacker reads the number of options; pass n_options")
            x.append(float(chance_logit([n_options])[0]))
        center = getattr(self, "center_", None)
        if center is None:
            z = float(self.stacker_.intercept_[0]) + sum(float(wj) * xj for wj, xj in zip(w, x))
        else:
            z = sum(float(wj) * (xj - float(cj)) for wj, xj, cj in zip(w, x, center))
        stacked = 0.5 * (1.0 + math.tanh(0.5 * z))
        return float(self.calibrator_.predict(np.array([stacked]))[0])

    def input_names(self) -> list[str]:
        return [f"logit_{s}" for s in self.signals] + ["probe_logit"] + (["logit_chance"] if self.chance else [])

    def weights(self) -> dict[str, float]:
        """The stacker's weights on each input's logit, in the input's own units."""
        return {name: float(w) for name, w in zip(self.input_names(), self.stacker_.coef_)} | {
            "intercept": float(self.stacker_.intercept_[0])}

    # -- serialization (numpy arrays go into the artifact's .npz) ------------------------
    def to_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta = {"calibrator": self.calibrator, "signals": list(self.signals), "n_folds": self.n_folds,
                "seed": self.seed, "chance": self.chance, "C": self.C, "anchor": self.anchor, "cv": self.cv_,
                "stacker_params": self.stacker_.params(),
                "calibrator_state": self.calibrator_.to_dict(), "weights": self.weights()}
        return meta, {**self.stacker_.to_arrays(), "center_": self.center_}

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> "Combiner":
        from llmcal.calibrators import from_dict

        obj = cls(meta["calibrator"], meta["signals"], meta["n_folds"], meta["seed"],
                  chance=bool(meta.get("chance", False)), C=meta.get("C", STACKER_C),
                  anchor=bool(meta.get("anchor", False)))
        obj.cv_ = dict(meta.get("cv") or {})
        obj.stacker_ = LogisticProbe.from_arrays(dict(meta["stacker_params"]), dict(arrays))
        if "center_" in arrays:
            obj.center_ = np.asarray(arrays["center_"], dtype=np.float64)
        obj.calibrator_ = from_dict(dict(meta["calibrator_state"]))
        return obj


def fit_probe_and_combiner(probe: Probe, X: np.ndarray, signal_values: Mapping[str, np.ndarray], y: np.ndarray,
                           calibrator: str = "platt", n_folds: int = 5, seed: int = 0,
                           tune: bool = True, stack: Sequence[str] = SIGNALS, n_options: np.ndarray | None = None,
                           groups: np.ndarray | None = None) -> tuple[Probe, Combiner, np.ndarray]:
    """Fit the probe on all of ``X`` (n, D) and the combiner on its out-of-fold logits.

    ``n_options`` (n,): each item's number of options (the combiner's chance input; None: none);
    ``groups`` (n,): each item's source task (leave-one-task-out folds; None: stratified).
    Returns (fitted probe, fitted combiner, out-of-fold probe logits (n,)).
    """
    probe.fit(X, y, tune=tune)  # the probe is tuned in-pool (``external``); the stacker decides how far it carries
    oof = cross_fit_logits(probe, X, y, n_folds, seed, groups=oof_groups(groups))
    comb = Combiner(calibrator, signals=tuple(stack), n_folds=n_folds, seed=seed)
    comb.fit(signal_values, oof, y, n_options=n_options, groups=groups)
    return probe, comb, oof
