"""Correctness probes: P(answer is right | features), trained on the calibration part only.

Input: a design matrix ``X`` (n, D) whose first ``n_hidden`` columns are hidden
states (``features.design_matrix``) and whose remaining columns are cheap
input/output features.  Preprocessing, fitted on the training rows only:

1. standardize every column (mean 0, variance 1);
2. project the hidden block on its first ``n_components`` principal components,
   whitened (unit variance), so a few hundred calibration items are not asked to
   fit ``layers x hidden_size`` weights, and hidden and cheap columns meet one
   L2 penalty on the same scale.  ``n_components=None`` keeps every hidden column.

Then one of two probes:

* :class:`LogisticProbe`: L2-regularized logistic regression (scikit-learn),
  the linear probe of Kadavath et al. 2022 (P(IK), "Language Models (Mostly)
  Know What They Know"), Azaria & Mitchell 2023 ("The Internal State of an LLM
  Knows When It's Lying") and Liu et al. 2024 ("Uncertainty Estimation and
  Quantification for LLMs: A Simple Supervised Approach"); Burns et al. 2023
  (CCS) likewise normalize activations before a linear read-out.  The inverse
  regularization ``C`` is chosen by stratified k-fold cross-validated log loss.
* :class:`MLPProbe`: one hidden ReLU layer trained with torch (full-batch Adam
  on binary cross-entropy plus an L2 penalty; a small version of Azaria &
  Mitchell's SAPLMA), the penalty chosen the same way.

After fitting, the preprocessing is folded into the first linear map, so
inference is numpy only and one matrix product: ``X @ w + b`` (logistic) or
``relu(X @ W1 + b1) @ w2 + b2`` (MLP); well under a millisecond an answer
(``benchmarks/probe.py``).  ``to_arrays``/``from_arrays`` are the artifact's
payload (``artifact.py``).

Shapes: ``X`` (n, D) float, ``y`` (n,) 0/1; outputs (n,).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

import numpy as np

#: Inverse L2 strengths searched for the logistic probe (on standardized inputs).
DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 2, 9))
#: L2 penalties searched for the MLP probe.
DEFAULT_PENALTIES = (1e-3, 1e-2, 1e-1, 1.0)
#: Principal components kept of the hidden-state block.
DEFAULT_COMPONENTS = 16


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))  # stable, exact at 0


def check_labels(y: np.ndarray, who: str, n_folds: int) -> np.ndarray:
    """0/1 labels (n,) with both classes present (at least 2 of each to cross-validate)."""
    y = np.asarray(y, dtype=np.float64).ravel()
    if y.size == 0:
        raise ValueError(f"{who}: no training items")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"{who}: labels must be 0/1 (answer right or not)")
    k = int(y.sum())
    if k == 0 or k == len(y):
        raise ValueError(f"{who}: all {len(y)} training answers are {'right' if k else 'wrong'}; "
                         "a correctness probe needs both")
    if n_folds > 1 and min(k, len(y) - k) < 2:
        raise ValueError(f"{who}: needs at least 2 right and 2 wrong answers to cross-validate, "
                         f"got {k} right of {len(y)}")
    return y


def n_folds_for(y: np.ndarray, n_folds: int) -> int:
    """Stratified folds cannot outnumber the minority class."""
    minority = int(min(y.sum(), len(y) - y.sum()))
    return max(2, min(n_folds, minority))


def cv_splits(y: np.ndarray, n_folds: int, seed: int, groups: np.ndarray | None = None
              ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) index pairs for choosing a hyperparameter or cross-fitting.

    With ``groups`` (n,) holding at least two distinct values (the source tasks of a pooled
    calibration part): leave one group out, so a choice is judged on a task the fit never
    saw -- the deployment the pool is fitted for, where a model that learned each task's
    base rate (hidden states name the task) is penalized instead of rewarded (issue #15).
    Otherwise stratified k-fold (:func:`n_folds_for` folds, shuffled with ``seed``).
    A validation fold whose training rows hold one class only is dropped.
    """
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y, dtype=np.float64)
    if groups is not None and len(set(np.asarray(groups).tolist())) >= 2:
        g = np.asarray(groups)
        splits = [(np.flatnonzero(g != v), np.flatnonzero(g == v)) for v in sorted(set(g.tolist()))]
        splits = [(tr, va) for tr, va in splits if 0 < y[tr].sum() < len(tr)]
        if splits:
            return splits
    cv = StratifiedKFold(n_folds_for(y, n_folds), shuffle=True, random_state=seed)
    return list(cv.split(np.zeros((len(y), 1)), y))


def _auroc(z: np.ndarray, y: np.ndarray) -> float:
    """Mann-Whitney AUROC of scores ``z`` (n,) for labels ``y`` (n,) 0/1 (ties count one half)."""
    from scipy.stats import rankdata

    r = rankdata(z)
    n_pos = float(y.sum())
    return float((r[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(y) - n_pos)))


def cv_choose(grid: Sequence[float], fold_logits: Callable[[float, np.ndarray, np.ndarray], np.ndarray],
              y: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]], grouped: bool, param: str
              ) -> tuple[float, dict[str, Any]]:
    """The grid value with the best cross-validated score, and the record of the search.

    ``fold_logits(value, train, validation)`` returns the validation rows' logits.  Stratified
    folds: the lowest log loss.  Leave-one-task-out folds (``grouped``): the highest mean AUROC
    over the held-out tasks.  Log loss on a held-out task is dominated by the difference of its
    base rate from the other tasks', which no penalty can fix and the flattest model hides
    best, so it would choose a model that ranks nothing; the within-task ranking is what
    carries to a new task, and the calibrator downstream sets the level.
    """
    if grouped:
        scores = []
        for v in grid:
            per_task = [_auroc(fold_logits(v, tr, va), y[va]) for tr, va in splits if 0 < y[va].sum() < len(va)]
            scores.append(float(np.mean(per_task)) if per_task else 0.5)
        best = grid[int(np.argmax(scores))]
        return float(best), {"param": param, "grid": list(grid), "cv_task_auroc": scores, "chosen": float(best),
                             "n_folds": len(splits), "grouped": True}
    losses = np.zeros(len(grid))
    for j, v in enumerate(grid):
        for tr, va in splits:
            z = fold_logits(v, tr, va)
            losses[j] += float(np.sum(np.logaddexp(0.0, z) - y[va] * z))
    losses /= sum(len(va) for _, va in splits)
    best = grid[int(np.argmin(losses))]
    return float(best), {"param": param, "grid": list(grid), "cv_log_loss": losses.tolist(), "chosen": float(best),
                         "n_folds": len(splits), "grouped": False}


def _one_thread():
    """BLAS/OpenMP at one thread: these matrices are tiny and the cores are shared."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def _top_components(Z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` leading principal directions of centred ``Z`` (n, h): (h, k) and their s.d. (k,).

    Through the smaller of the two Gram matrices (n x n or h x h) and a symmetric
    eigensolver for the top ``k`` only: far cheaper than a full SVD when n << h.
    """
    from scipy.linalg import eigh

    n, h = Z.shape
    if k <= 0:
        return np.zeros((h, 0)), np.zeros(0)
    with _one_thread():
        if n <= h:
            G = Z @ Z.T  # (n, n)
            lam, U = eigh(G, subset_by_index=[n - k, n - 1])
            lam, U = lam[::-1], U[:, ::-1]
            lam = np.maximum(lam, 0.0)
            V = Z.T @ U / np.sqrt(np.where(lam > 0, lam, 1.0))  # (h, k)
        else:
            C = Z.T @ Z  # (h, h)
            lam, V = eigh(C, subset_by_index=[h - k, h - 1])
            lam, V = np.maximum(lam[::-1], 0.0), V[:, ::-1]
    return V, np.sqrt(lam / n)


class Preprocessor:
    """Standardize, PCA-whiten the hidden block: ``F = (X - mean) @ A``.

    ``mean`` (D,), ``A`` (D, f) with ``f = k + (D - n_hidden)``; block diagonal:
    ``diag(1/scale) @ blockdiag(P, I)`` where ``P`` (n_hidden, k) holds the
    whitened principal directions of the standardized hidden block.
    """

    def __init__(self, n_hidden: int, n_components: int | None) -> None:
        self.n_hidden = int(n_hidden)
        self.n_components = n_components

    def fit(self, X: np.ndarray) -> "Preprocessor":
        n, D = X.shape
        mean = X.mean(axis=0)
        scale = X.std(axis=0)
        scale = np.where(scale > 1e-8, scale, 1.0)  # constant columns: centred, not scaled
        h = self.n_hidden
        if h and self.n_components is not None:
            Zh = (X[:, :h] - mean[:h]) / scale[:h]  # (n, h)
            k = int(min(self.n_components, n - 1, h))
            V, sd = _top_components(Zh, k)  # (h, k) unit directions, (k,) standard deviations
            keep = sd > 1e-6 * max(float(sd[0]) if k else 1.0, 1e-300)
            P = V[:, keep] / sd[keep]  # (h, k') whitened directions
            A = np.zeros((D, P.shape[1] + D - h))
            A[:h, : P.shape[1]] = P / scale[:h, None]
            A[h:, P.shape[1]:] = np.diag(1.0 / scale[h:])
        else:
            A = np.diag(1.0 / scale)
        self.mean_, self.A_ = mean, A
        return self

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean_) @ self.A_  # (n, f)


class Probe:
    """Common surface: ``fit(X, y, tune=True)``, ``logit(X)``, ``predict_proba(X)``, ``clone()``."""

    kind: ClassVar[str] = ""
    #: names of the fitted numpy arrays (the artifact's payload)
    arrays: ClassVar[tuple[str, ...]] = ()

    def __init__(self, n_hidden: int = 0, n_components: int | None = DEFAULT_COMPONENTS,
                 n_folds: int = 5, seed: int = 0) -> None:
        self.n_hidden = int(n_hidden)
        self.n_components = None if n_components is None else int(n_components)
        self.n_folds = int(n_folds)
        self.seed = int(seed)
        self.cv_: dict[str, Any] = {}

    def params(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able); tuned values included."""
        return {"n_hidden": self.n_hidden, "n_components": self.n_components, "n_folds": self.n_folds,
                "seed": self.seed}

    @property
    def is_fitted(self) -> bool:
        return all(hasattr(self, a) for a in self.arrays)

    @property
    def n_features(self) -> int:
        return int(getattr(self, self.arrays[0]).shape[0])

    def _check(self, X: np.ndarray) -> np.ndarray:
        if not self.is_fitted:
            raise ValueError(f"{type(self).__name__} is not fitted")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X[None, :]
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"{type(self).__name__}: expected (n, {self.n_features}) features, got {X.shape}")
        return X

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(right), shape (n,)."""
        return sigmoid(self.logit(X))

    def logit(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def fit(self, X: np.ndarray, y: np.ndarray, tune: bool = True,
            groups: np.ndarray | None = None) -> "Probe":  # pragma: no cover
        raise NotImplementedError

    def clone(self) -> "Probe":
        """An unfitted copy with the same (tuned) hyperparameters."""
        return type(self)(**self.params())

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {a: getattr(self, a) for a in self.arrays}

    @classmethod
    def from_arrays(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> "Probe":
        obj = cls(**params)
        missing = [a for a in cls.arrays if a not in arrays]
        if missing:
            raise ValueError(f"{cls.kind} probe: artifact lacks arrays {missing}")
        for a in cls.arrays:
            setattr(obj, a, np.asarray(arrays[a], dtype=np.float64))
        return obj


class LogisticProbe(Probe):
    """Preprocess, then L2 logistic regression; ``C`` by stratified k-fold CV log loss.

    Fitted (folded) state: ``coef_`` (D,), ``intercept_`` (1,), so ``logit(X) = X @ coef_ + intercept_``.
    """

    kind = "logistic"
    arrays = ("coef_", "intercept_")

    def __init__(self, C: float | None = None, Cs: tuple[float, ...] | list[float] = DEFAULT_CS,
                 n_hidden: int = 0, n_components: int | None = DEFAULT_COMPONENTS, n_folds: int = 5,
                 seed: int = 0) -> None:
        super().__init__(n_hidden, n_components, n_folds, seed)
        self.C = None if C is None else float(C)
        self.Cs = tuple(sorted(float(c) for c in Cs))

    def params(self) -> dict[str, Any]:
        return {**super().params(), "C": self.C, "Cs": list(self.Cs)}

    @staticmethod
    def _lr(C: float):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=C, solver="newton-cholesky", max_iter=200)

    def fit(self, X: np.ndarray, y: np.ndarray, tune: bool = True,
            groups: np.ndarray | None = None) -> "LogisticProbe":
        """``X`` (n, D), ``y`` (n,).  ``tune`` (or no ``C`` yet): choose ``C`` by CV (:func:`cv_splits`:
        leave-one-group-out when ``groups`` (n,) names two or more source tasks)."""
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        X = np.asarray(X, dtype=np.float64)
        tune = tune or self.C is None
        y = check_labels(y, "logistic probe", self.n_folds if tune else 1)
        pre = Preprocessor(self.n_hidden, self.n_components).fit(X)
        F = pre(X)  # (n, f); unsupervised, so sharing it across folds leaks no labels
        with warnings.catch_warnings(), _one_thread():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if tune:
                splits = cv_splits(y, self.n_folds, self.seed, groups)
                self.C, self.cv_ = cv_choose(
                    self.Cs, lambda C, tr, va: self._lr(C).fit(F[tr], y[tr]).decision_function(F[va]), y, splits,
                    _grouped(groups), "C")
            m = self._lr(float(self.C)).fit(F, y)
        w = np.asarray(m.coef_, dtype=np.float64).ravel()  # (f,)
        self.coef_ = pre.A_ @ w  # (D,)
        self.intercept_ = np.array([float(m.intercept_[0]) - float(pre.mean_ @ self.coef_)])
        return self

    def logit(self, X: np.ndarray) -> np.ndarray:
        """Log-odds of a right answer, (n,); ``X`` (n, D)."""
        X = self._check(X)
        return X @ self.coef_ + self.intercept_[0]


class MLPProbe(Probe):
    """Preprocess, then ``f -> hidden (ReLU) -> 1`` trained with torch; L2 penalty by k-fold CV.

    Loss: mean binary cross-entropy + ``penalty`` * (||W1||^2 + ||w2||^2) / 2, full-batch
    Adam for ``epochs`` steps from a seeded start.  Fitted (folded) state, numpy:
    ``W1_`` (D, hidden), ``b1_`` (hidden,), ``w2_`` (hidden,), ``b2_`` (1,).
    """

    kind = "mlp"
    arrays = ("W1_", "b1_", "w2_", "b2_")

    def __init__(self, penalty: float | None = None,
                 penalties: tuple[float, ...] | list[float] = DEFAULT_PENALTIES, hidden: int = 32,
                 epochs: int = 300, lr: float = 1e-2, n_hidden: int = 0,
                 n_components: int | None = DEFAULT_COMPONENTS, n_folds: int = 5, seed: int = 0) -> None:
        super().__init__(n_hidden, n_components, n_folds, seed)
        self.penalty = None if penalty is None else float(penalty)
        self.penalties = tuple(float(p) for p in penalties)
        self.hidden = int(hidden)
        self.epochs = int(epochs)
        self.lr = float(lr)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "penalty": self.penalty, "penalties": list(self.penalties),
                "hidden": self.hidden, "epochs": self.epochs, "lr": self.lr}

    def _train(self, F: np.ndarray, y: np.ndarray, penalty: float) -> dict[str, np.ndarray]:
        """Train on preprocessed ``F`` (n, f); return numpy weights over ``F``."""
        import torch

        g = torch.Generator().manual_seed(self.seed)
        f = F.shape[1]
        W1 = (torch.randn(f, self.hidden, generator=g, dtype=torch.float64) * (2.0 / f) ** 0.5).requires_grad_()
        b1 = torch.zeros(self.hidden, dtype=torch.float64, requires_grad=True)
        w2 = (torch.randn(self.hidden, generator=g, dtype=torch.float64) * (1.0 / self.hidden) ** 0.5
              ).requires_grad_()
        b2 = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        Ft = torch.from_numpy(np.ascontiguousarray(F))  # (n, f)
        yt = torch.from_numpy(y)  # (n,)
        opt = torch.optim.Adam([W1, b1, w2, b2], lr=self.lr)
        bce = torch.nn.BCEWithLogitsLoss()
        for _ in range(self.epochs):
            opt.zero_grad()
            z = torch.relu(Ft @ W1 + b1) @ w2 + b2  # (n,)
            loss = bce(z, yt) + 0.5 * penalty * ((W1 * W1).sum() + (w2 * w2).sum())
            loss.backward()
            opt.step()
        return {"W1_": W1.detach().numpy().copy(), "b1_": b1.detach().numpy().copy(),
                "w2_": w2.detach().numpy().copy(), "b2_": b2.detach().numpy().copy()}

    @staticmethod
    def _forward(F: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
        return np.maximum(F @ w["W1_"] + w["b1_"], 0.0) @ w["w2_"] + w["b2_"][0]  # (n,)

    def fit(self, X: np.ndarray, y: np.ndarray, tune: bool = True,
            groups: np.ndarray | None = None) -> "MLPProbe":
        """``X`` (n, D), ``y`` (n,).  ``tune`` (or no ``penalty`` yet): choose ``penalty`` by CV
        (:func:`cv_splits`, by ``groups`` when given)."""
        import torch

        X = np.asarray(X, dtype=np.float64)
        tune = tune or self.penalty is None
        y = check_labels(y, "MLP probe", self.n_folds if tune else 1)
        pre = Preprocessor(self.n_hidden, self.n_components).fit(X)
        F = pre(X)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            if tune:
                splits = cv_splits(y, self.n_folds, self.seed, groups)
                self.penalty, self.cv_ = cv_choose(
                    self.penalties, lambda pen, tr, va: self._forward(F[va], self._train(F[tr], y[tr], pen)), y,
                    splits, _grouped(groups), "penalty")
            w = self._train(F, y, float(self.penalty))
        finally:
            torch.set_num_threads(threads)
        self.W1_ = pre.A_ @ w["W1_"]  # (D, hidden)
        self.b1_ = w["b1_"] - pre.mean_ @ self.W1_
        self.w2_, self.b2_ = w["w2_"], w["b2_"]
        return self

    def logit(self, X: np.ndarray) -> np.ndarray:
        """Log-odds of a right answer, (n,); ``X`` (n, D)."""
        X = self._check(X)
        return np.maximum(X @ self.W1_ + self.b1_, 0.0) @ self.w2_ + self.b2_[0]


PROBES: dict[str, type[Probe]] = {"logistic": LogisticProbe, "mlp": MLPProbe}


def make_probe(kind: str, **params: Any) -> Probe:
    """A new probe by name: ``logistic`` or ``mlp``."""
    if kind not in PROBES:
        raise ValueError(f"unknown probe {kind!r}; known: {', '.join(PROBES)}")
    return PROBES[kind](**params)


def _grouped(groups: np.ndarray | None) -> bool:
    return groups is not None and len(set(np.asarray(groups).tolist())) >= 2


def cross_fit_logits(probe: Probe, X: np.ndarray, y: np.ndarray, n_folds: int = 5, seed: int = 0,
                     groups: np.ndarray | None = None) -> np.ndarray:
    """Out-of-fold logits (n,): each row scored by a copy of ``probe`` that never saw it.

    Hyperparameters stay as tuned on all rows; each fold refits the preprocessing
    and the weights.  The stacker downstream thus sees the probe as it behaves on
    new items rather than its in-sample overconfidence (Wolpert 1992, stacked
    generalization).  With ``groups`` (the source tasks) each task is scored by a probe
    fitted on the others: the probe as it behaves on a task it never saw.  A row whose
    fold could not be fitted (its task's complement holds one class) keeps a stratified
    out-of-fold logit.
    """
    y = check_labels(y, f"{probe.kind} probe", n_folds)
    out = np.full(len(y), np.nan)
    for tr, va in cv_splits(y, n_folds, seed, groups):
        out[va] = probe.clone().fit(X[tr], y[tr], tune=False).logit(X[va])
    if np.isnan(out).any():  # only where a group's complement was one class
        rest = np.flatnonzero(np.isnan(out))
        for tr, va in cv_splits(y, n_folds, seed):
            va = np.intersect1d(va, rest)
            if len(va):
                out[va] = probe.clone().fit(X[tr], y[tr], tune=False).logit(X[va])
    return out
