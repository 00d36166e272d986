"""The recommender interface and the baselines every videorec model is measured against.

Every model implements :class:`Recommender` (in the style of the ``implicit`` library):
``fit(train)`` on an :class:`~videorec.evaluation.interactions.Interactions`, then
``scores(user_rows)`` gives dense (n_users, n_items) float32 scores for training rows.
The shared :meth:`Recommender.recommend` turns scores into top-k lists in batches, with
the user's training videos excluded and ties broken by item index (lower first), so a
list never depends on the batch it was computed in.

Baselines: :class:`MostPopular`, :class:`ItemKNN` (``implicit``'s cosine item-item),
:class:`ALS` (``implicit``'s CPU alternating least squares), :class:`EASE` (Steck 2019,
closed form) and :class:`EASERecency` (EASE whose user rows weight each watched video by
``decay ** position from the end of the history``).
"""

from __future__ import annotations

import inspect
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack

from videorec.evaluation.interactions import Interactions

DEFAULT_BATCH = 1024
TRAIN = "train"  # recommend(exclude=TRAIN): exclude the fitted training interactions


class NotFittedError(RuntimeError):
    """A recommender was asked for scores before ``fit``."""


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best items of each row: ((n, k) int64 indices, (n, k) float32 scores).

    ``scores`` (n, n_items): higher is better; ``-inf`` marks excluded items. Rows are
    sorted by descending score with ties broken by lower item index, which makes the
    result a pure function of each row (independent of batching and of the selection
    algorithm). Slots that would hold an excluded item (fewer than k candidates) get
    index -1 and score -inf. O(n·n_items): a partition, not a full sort.
    """
    if k <= 0:
        raise ValueError(f"k must be positive; got {k}")
    n, m = scores.shape
    kk = min(k, m)
    if kk == 0 or n == 0:
        idx = np.full((n, k), -1, dtype=np.int64)
        return idx, np.full((n, k), -np.inf, dtype=np.float32)
    if kk == m:
        sel = np.broadcast_to(np.arange(m), (n, m))
    else:
        # The k-th largest value of each row; everything above it is in, and of the
        # items equal to it, the lowest indices fill the remaining slots.
        kth = np.partition(scores, m - kk, axis=1)[:, m - kk]
        above = scores > kth[:, None]
        tied = scores == kth[:, None]
        need = kk - above.sum(axis=1)
        chosen = above
        over = np.flatnonzero(tied.sum(axis=1) > need)
        if len(over):
            t = tied[over]
            t &= np.cumsum(t, axis=1, dtype=np.int32) <= need[over, None]
            tied[over] = t
        chosen |= tied
        sel = np.nonzero(chosen)[1].reshape(n, kk)  # row-major: ascending index per row
    s = np.take_along_axis(scores, sel, axis=1)
    order = np.argsort(-s, axis=1, kind="stable")  # stable keeps lower index first on ties
    idx = np.take_along_axis(sel, order, axis=1).astype(np.int64)
    val = np.take_along_axis(s, order, axis=1).astype(np.float32)
    idx[~np.isfinite(val) & (val < 0)] = -1
    if kk < k:
        idx = np.pad(idx, ((0, 0), (0, k - kk)), constant_values=-1)
        val = np.pad(val, ((0, 0), (0, k - kk)), constant_values=-np.inf)
    return idx, val


def exclude_items(scores: np.ndarray, exclude_rows: sp.csr_matrix) -> np.ndarray:
    """Set ``scores[i, j] = -inf`` wherever ``exclude_rows[i, j]`` is stored; in place.

    ``scores`` (n, n_items), ``exclude_rows`` (n, n_items) CSR. Returns ``scores``.
    """
    r = np.repeat(np.arange(exclude_rows.shape[0]), np.diff(exclude_rows.indptr))
    scores[r, exclude_rows.indices] = -np.inf
    return scores


def batches(rows: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """Consecutive slices of ``rows`` of at most ``size`` elements."""
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


class Recommender(ABC):
    """What every videorec recommender implements.

    Subclasses set ``name`` and implement :meth:`fit`, :meth:`scores` and
    :meth:`params`; :meth:`recommend` is shared. Users are addressed by their row in
    the training :class:`Interactions` (``train.user_rows(ids)`` maps ids to rows) and
    items by column (``train.item_ids[col]`` is the video id).
    """

    name: ClassVar[str] = "Recommender"

    def __init__(self) -> None:
        self.train_: Interactions | None = None

    @abstractmethod
    def fit(self, train: Interactions) -> Self:
        """Learn from the training interactions; returns ``self``."""

    @abstractmethod
    def scores(self, user_rows: np.ndarray) -> np.ndarray:
        """Dense float32 scores, shape (len(user_rows), n_items); higher is better.

        Training items are *not* excluded here (see :meth:`recommend`).
        """

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The hyper-parameters, JSON-able (what a report records)."""

    @property
    def train(self) -> Interactions:
        """The interactions the model was fitted on."""
        if self.train_ is None:
            raise NotFittedError(f"{self.name}: call fit() first")
        return self.train_

    def masked_scores(
        self, user_rows: np.ndarray, exclude: sp.csr_matrix | str | None = TRAIN
    ) -> np.ndarray:
        """:meth:`scores` with excluded items set to -inf, (len(user_rows), n_items).

        ``exclude``: ``"train"`` (each user's training items), a CSR matrix with one row
        per training user (the same shape as ``train.matrix``), or None.
        """
        rows = np.asarray(user_rows, dtype=np.int64)
        s = np.array(self.scores(rows), dtype=np.float32, copy=True)
        if exclude is None:
            return s
        if isinstance(exclude, str):
            if exclude != TRAIN:
                raise ValueError(f"exclude must be 'train', a CSR matrix or None; got {exclude!r}")
            exclude = self.train.matrix
        return exclude_items(s, sp.csr_matrix(exclude)[rows])

    def recommend(
        self,
        user_rows: np.ndarray,
        k: int,
        *,
        exclude: sp.csr_matrix | str | None = TRAIN,
        batch_size: int = DEFAULT_BATCH,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items per user: ((n, k) int64 item indices, (n, k) float32 scores).

        Scored ``batch_size`` users at a time (memory is batch_size × n_items floats);
        excluded items (default: the user's training items) are never returned; ties
        go to the lower item index; -1 pads lists with fewer than k candidates.
        """
        if k <= 0:
            raise ValueError(f"k must be positive; got {k}")
        rows = np.asarray(user_rows, dtype=np.int64)
        idx = np.empty((len(rows), k), dtype=np.int64)
        val = np.empty((len(rows), k), dtype=np.float32)
        pos = 0
        for b in batches(rows, batch_size):
            i, v = top_k(self.masked_scores(b, exclude), k)
            idx[pos : pos + len(b)], val[pos : pos + len(b)] = i, v
            pos += len(b)
        return idx, val

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class MostPopular(Recommender):
    """Every user gets the videos watched by the most distinct training users."""

    name = "MostPopular"

    def fit(self, train: Interactions) -> Self:
        """Count distinct users per video."""
        self.train_ = train
        self.popularity_ = train.item_popularity.astype(np.float32)
        return self

    def scores(self, user_rows: np.ndarray) -> np.ndarray:
        """The popularity count of each item, the same for every user."""
        self.train  # noqa: B018 -- raises NotFittedError before fit
        return np.tile(self.popularity_, (len(user_rows), 1))

    def params(self) -> dict[str, Any]:
        return {}


class ItemKNN(Recommender):
    """Item-based cosine nearest neighbours, the classic candidate-centred form.

    A user's score for a candidate item j is the sum of the cosine similarities between
    j and those of the user's watched items that are among j's ``k`` nearest neighbours
    (Sarwar et al. 2001): score(u, j) = Σ_{i ∈ N_k(j) ∩ I_u} cos(i, j). The pruned
    similarity comes from ``implicit.nearest_neighbours.CosineRecommender``, whose row
    i holds i's nearest neighbours with i itself among them, so it is asked for k + 1
    and the scores use its transpose (row j's neighbours vote for j). Pruning the other
    way (each watched item votes for its own k neighbours, as implicit's ``recommend``
    does) is a different and, on MovieLens, weaker model.
    """

    name = "ItemKNN"

    def __init__(self, k: int = 100, num_threads: int = 0) -> None:
        super().__init__()
        if k <= 0:
            raise ValueError(f"ItemKNN: k must be positive; got {k}")
        self.k, self.num_threads = int(k), num_threads

    def fit(self, train: Interactions) -> Self:
        """Compute the pruned item-item cosine similarity with implicit.

        Stores ``neighbours_`` (n_items, n_items) float32 CSR: column j holds the
        similarities of j's k nearest neighbours (and 1.0 for j itself, which never
        counts: a candidate is never one of the user's watched items).
        """
        from implicit.nearest_neighbours import CosineRecommender

        model = CosineRecommender(K=self.k + 1, num_threads=self.num_threads)
        with warnings.catch_warnings():
            # implicit normalises into a COO matrix and then warns about its own
            # conversion to CSR; nothing for the caller to act on.
            warnings.filterwarnings("ignore", message="Method expects CSR input")
            model.fit(train.matrix, show_progress=False)
        self.neighbours_ = sp.csr_matrix(model.similarity.T, dtype=np.float32)
        self.train_ = train
        return self

    def scores(self, user_rows: np.ndarray) -> np.ndarray:
        """(n, n_items): binary user rows times the column-pruned similarity matrix."""
        x = self.train.matrix[np.asarray(user_rows)]
        return np.asarray((x @ self.neighbours_).toarray(), dtype=np.float32)

    def params(self) -> dict[str, Any]:
        return {"k": self.k}


class ALS(Recommender):
    """Implicit-feedback matrix factorisation with ``implicit``'s CPU ALS.

    ``alpha`` scales the confidence of observed interactions (implicit's ``alpha``);
    ``seed`` fixes implicit's random initialisation, so a fit is reproducible.
    """

    name = "ALS"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.01,
        alpha: float = 1.0,
        iterations: int = 15,
        seed: int = 0,
        num_threads: int = 0,
    ) -> None:
        super().__init__()
        self.factors, self.regularization = int(factors), float(regularization)
        self.alpha, self.iterations = float(alpha), int(iterations)
        self.seed, self.num_threads = int(seed), num_threads

    def fit(self, train: Interactions) -> Self:
        """Fit user and item factors, (n_users, factors) and (n_items, factors) float32."""
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        # implicit runs its own threads; a multi-threaded BLAS underneath oversubscribes
        # the cores (implicit warns, and it is many times slower).
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=self.alpha,
                iterations=self.iterations,
                random_state=self.seed,
                num_threads=self.num_threads,
                calculate_training_loss=False,
            )
            model.fit(train.matrix, show_progress=False)
        self.user_factors_ = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_factors_ = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        self.train_ = train
        return self

    def scores(self, user_rows: np.ndarray) -> np.ndarray:
        """(n, n_items): dot products of user and item factors."""
        self.train  # noqa: B018 -- raises NotFittedError before fit
        return self.user_factors_[np.asarray(user_rows)] @ self.item_factors_.T

    def params(self) -> dict[str, Any]:
        return {
            "factors": self.factors,
            "regularization": self.regularization,
            "alpha": self.alpha,
            "iterations": self.iterations,
            "seed": self.seed,
        }


def ease_weights(x: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE's item-item weights B, (n_items, n_items) float32, zero diagonal.

    B = I - P·diag(1/diag(P)) with P = (XᵀX + λI)⁻¹ (Steck, "Embarrassingly Shallow
    Autoencoders", 2019), for the (n_users, n_items) interaction matrix ``x``. Solved in
    float64 the cheaper of two exact ways:

    - items-side (n_items³): a Cholesky factorisation of XᵀX + λI (symmetric positive
      definite) and its inverse, about half the work of a general inverse;
    - users-side, when there are clearly fewer users than items (MovieLens: 610 users,
      ~8k films): by the Woodbury identity P = (I - W)/λ with W = Xᵀ(XXᵀ + λI)⁻¹X, so
      B_ij = W_ij / (1 - W_jj), which costs n_users²·n_items instead of n_items³.

    B is returned in float32 for scoring.
    """
    if lam <= 0:
        raise ValueError(f"EASE: lambda must be positive; got {lam}")
    n_users, n = x.shape
    xd = sp.csr_matrix(x, dtype=np.float64)
    if 2 * n_users**2 < n**2:
        k = (xd @ xd.T).toarray()
        k[np.diag_indices(n_users)] += lam
        c, info = lapack.dpotrf(k, lower=0, overwrite_a=1, clean=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"EASE: Cholesky failed (info={info})")
        z, info = lapack.dpotrs(c, xd.toarray(), lower=0, overwrite_b=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"EASE: solve failed (info={info})")
        b = np.asarray(xd.T @ z)  # W, (n_items, n_items)
        del z
        b /= (1.0 - np.diag(b))[None, :]
        b[np.diag_indices(n)] = 0.0
        return b.astype(np.float32)
    g = (xd.T @ xd).toarray()
    g[np.diag_indices(n)] += lam
    c, info = lapack.dpotrf(g, lower=0, overwrite_a=1, clean=0)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: Cholesky failed (info={info})")
    p, info = lapack.dpotri(c, lower=0, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: inverse failed (info={info})")
    # potri fills the upper triangle only; mirror it in blocks to bound the temporaries.
    step = 2048
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        p[hi:, lo:hi] = p[lo:hi, hi:].T
        blk = p[lo:hi, lo:hi]
        blk[np.tril_indices(hi - lo, -1)] = blk.T[np.tril_indices(hi - lo, -1)]
    b = p
    b /= -np.diag(b).copy()[None, :]
    b[np.diag_indices(n)] = 0.0
    return b.astype(np.float32)


class EASE(Recommender):
    """EASE: a closed-form linear item-item model with an L2 penalty ``lam``."""

    name = "EASE"

    def __init__(self, lam: float = 200.0) -> None:
        super().__init__()
        if lam <= 0:
            raise ValueError(f"EASE: lam must be positive; got {lam}")
        self.lam = float(lam)

    def fit(self, train: Interactions) -> Self:
        """Solve for B (n_items × n_items float32) in closed form."""
        self.weights_ = ease_weights(train.matrix, self.lam)
        self.train_ = train
        return self

    def reuse_weights(self, fitted: EASE) -> Self:
        """Adopt B and the training set of a fitted EASE with the same lambda (no solve)."""
        if fitted.lam != self.lam:
            raise ValueError(f"EASE: cannot reuse B of lambda {fitted.lam} for {self.lam}")
        self.weights_, self.train_ = fitted.weights_, fitted.train
        return self

    def user_rows_matrix(self, user_rows: np.ndarray) -> sp.csr_matrix:
        """The input rows the model multiplies with B: binary training rows here."""
        return self.train.matrix[np.asarray(user_rows)]

    def scores(self, user_rows: np.ndarray) -> np.ndarray:
        """(n, n_items): the users' rows times B (a sparse-dense product)."""
        x = self.user_rows_matrix(user_rows)
        return np.asarray(x @ self.weights_, dtype=np.float32)

    def params(self) -> dict[str, Any]:
        return {"lam": self.lam}


class EASERecency(EASE):
    """EASE with recency-weighted user rows.

    B is EASE's; at scoring time the user's row weights each watched video by
    ``decay ** p`` where p is its position from the end of the time-ordered history
    (0 = the latest, by last watch), so recent tastes dominate on temporal splits.
    """

    name = "EASE-recency"

    def __init__(self, lam: float = 200.0, decay: float = 0.98) -> None:
        super().__init__(lam)
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"EASE-recency: decay must be in (0, 1]; got {decay}")
        self.decay = float(decay)

    def fit(self, train: Interactions) -> Self:
        """Solve EASE's B and build the recency-weighted user rows."""
        super().fit(train)
        self._build_rows()
        return self

    def _build_rows(self) -> None:
        pos = self.train.recency_positions()
        pos.data = np.power(self.decay, pos.data - 1.0)
        self.rows_ = sp.csr_matrix(pos, dtype=np.float32)

    def reuse_weights(self, fitted: EASE) -> Self:
        """Adopt B and the training set of a fitted EASE with the same lambda, then build
        the recency-weighted rows (tuning and the harness use this: decay does not
        change B, so one inverse serves every decay)."""
        super().reuse_weights(fitted)
        self._build_rows()
        return self

    def user_rows_matrix(self, user_rows: np.ndarray) -> sp.csr_matrix:
        """Recency-weighted training rows."""
        self.train  # noqa: B018 -- raises NotFittedError before fit
        return self.rows_[np.asarray(user_rows)]

    def params(self) -> dict[str, Any]:
        return {"lam": self.lam, "decay": self.decay}


MODELS: dict[str, Callable[..., Recommender]] = {
    "MostPopular": MostPopular,
    "ItemKNN": ItemKNN,
    "ALS": ALS,
    "EASE": EASE,
    "EASE-recency": EASERecency,
}
# The built-in baselines; ``MODELS`` also holds models added with register_model.
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)

# The hyper-parameters the reference figures were measured with. EASE-recency
# has no reference figure: its lambda is EASE's and its decay is tuned on validation.
REFERENCE_PARAMS: dict[str, dict[str, Any]] = {
    "MostPopular": {},
    "ItemKNN": {"k": 100},
    "ALS": {"factors": 32, "regularization": 0.01, "alpha": 1.0, "iterations": 15},
    "EASE": {"lam": 200.0},
    "EASE-recency": {"lam": 200.0},
}

# Grids searched on the validation split. Kept small on purpose: every point is a
# full fit, and EASE's cost is one n_items³ inverse per lambda (decay is free: it
# only changes the user rows, so EASE-recency reuses each lambda's B).
PARAM_GRIDS: dict[str, dict[str, list[Any]]] = {
    "MostPopular": {},
    "ItemKNN": {"k": [25, 50, 100, 200, 400]},
    "ALS": {
        "factors": [32, 64, 128],
        "regularization": [0.01, 0.1, 1.0],
        "alpha": [1.0, 5.0],
        "iterations": [15],
    },
    "EASE": {"lam": [50.0, 100.0, 200.0, 500.0, 1000.0]},
    "EASE-recency": {
        "lam": [50.0, 100.0, 200.0, 500.0, 1000.0],
        "decay": [0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99],
    },
}


def register_model(
    name: str,
    factory: Callable[..., Recommender],
    *,
    reference: Mapping[str, Any] | None = None,
    grid: Mapping[str, list[Any]] | None = None,
) -> None:
    """Make another recommender (e.g. issue 5's TwoTower) known to ``--models``.

    ``factory(**params)`` builds an unfitted model; ``reference`` is its
    ``--params reference`` setting and ``grid`` what tuning searches (none: used as is).
    """
    MODELS[name] = factory
    REFERENCE_PARAMS[name] = dict(reference or {})
    PARAM_GRIDS[name] = dict(grid or {})


def make_model(name: str, params: Mapping[str, Any] | None = None, *, seed: int = 0) -> Recommender:
    """A new, unfitted model by registered name; ``seed`` goes to models that take one."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    kwargs = dict(params or {})
    if "seed" in inspect.signature(MODELS[name]).parameters:
        kwargs.setdefault("seed", seed)
    return MODELS[name](**kwargs)
