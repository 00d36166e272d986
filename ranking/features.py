"""The stage-2 ranker's features of a (user, candidate) pair: one definition, two callers.

The ranking-examples stage (offline, :mod:`videorec.ranking.examples`) and the serving
shim (online) both build a :class:`PairInputs` and call :func:`pair_features`, so a
feature means the same thing where it is learnt and where it is used. Numpy only: the
serving shim imports this module and must not import torch.

Embeddings enter only through quantities that do not depend on the embedding space's
basis (cosines, the retrieval score): the ranker is trained on candidates from the
two-tower's validation-phase model (which never saw the labels) and serves candidates
from the refit model, two trainings whose coordinates are unrelated. Raw coordinates or
their element-wise product would tie the ranker to one two-tower version.

The features, in :data:`FEATURE_NAMES` order:

- **retrieval**: the two-tower inner product (the retrieval score), the candidate's
  0-based retrieval rank as ``log1p(rank)``, and the query-candidate cosine.
- **sequence** (the user's last ``H`` plays, most recent last; the recency signal that
  makes recency-weighted EASE strong): the candidate's cosine with the last play, the
  mean and max over the last 5, the max over all, exponentially decayed means
  (decay 0.7, 0.9, 0.97 per play back), and ``log1p`` of the history length.
- **category**: the share of the user's last ``H`` plays in the candidate's category,
  and whether the candidate's category is known.
- **video statistics** as of the pair's time: ``log1p(views)``, mean completion,
  dislikes per view, ``log1p(age in days)``, ``log(duration / 300 s)``, each unknown
  value as a fixed default with a known-flag beside it.
- **co-visitation** (item-based CF, the signal EASE and ItemKNN are strong on): the
  sum over the user's last ``H`` plays of each play's pruned cosine similarity to the
  candidate (:class:`~videorec.evaluation.recommenders.ItemKNN`'s neighbour matrix, fitted
  on the same training interactions as the retrieval model), undecayed and decayed by
  0.8 per play back (:func:`knn_scores`).
- **context**: the hour of day (UTC) as sine and cosine (0, 0 when unknown).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

SEQUENCE_DECAYS = (0.7, 0.9, 0.97)
KNN_DECAYS = (1.0, 0.8)
FEATURE_NAMES: tuple[str, ...] = (
    "retrieval_score", "retrieval_rank", "query_cosine",
    "seq_last", "seq_mean5", "seq_max5", "seq_max", "seq_decay0.7", "seq_decay0.9",
    "seq_decay0.97", "seq_length",
    "category_share", "category_known",
    "log_views", "completion", "completion_known", "dislike_ratio",
    "log_age_days", "age_known", "log_duration", "duration_known",
    "hour_sin", "hour_cos",
    "knn_sum", "knn_decay0.8",
)  # fmt: skip
SEQUENCE_FEATURES: tuple[str, ...] = tuple(n for n in FEATURE_NAMES if n.startswith("seq_"))
KNN_FEATURES: tuple[str, ...] = tuple(n for n in FEATURE_NAMES if n.startswith("knn_"))


@dataclass
class PairInputs:
    """What :func:`pair_features` reads, grouped by user: U users, C candidates each, H
    history slots, D embedding dims.

    - ``query`` (U, D): the users' query embeddings (any scale; normalised here).
    - ``history`` (U, H, D): embeddings of each user's last H plays, most recent last;
      all-zero rows are padding (or plays without an embedding).
    - ``history_category`` (U, H) int: category codes of those plays, -1 pad/unknown.
    - ``candidate`` (U, C, D): candidate embeddings; ``candidate_category`` (U, C) int
      codes in the same code space as ``history_category`` (-1 unknown).
    - ``retrieval_score`` (U, C): the retrieval inner product; ``retrieval_rank``
      (U, C) int, 0-based.
    - ``views`` (U, C) plays before the request; ``completion`` (U, C) mean completion
      in [0, 1], NaN unknown; ``dislike_ratio`` (U, C) dislikes per view, NaN unknown;
      ``age_days`` (U, C) days since publication, NaN unknown; ``duration_s`` (U, C),
      NaN unknown.
    - ``hour`` (U,) hour of day UTC in [0, 24) of the request, NaN unknown.
    - ``knn`` (U, C, len(KNN_DECAYS)): :func:`knn_scores` of the pairs.
    """

    query: np.ndarray
    history: np.ndarray
    history_category: np.ndarray
    candidate: np.ndarray
    candidate_category: np.ndarray
    retrieval_score: np.ndarray
    retrieval_rank: np.ndarray
    views: np.ndarray
    completion: np.ndarray
    dislike_ratio: np.ndarray
    age_days: np.ndarray
    duration_s: np.ndarray
    hour: np.ndarray
    knn: np.ndarray


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(n > 0, n, 1.0)).astype(np.float32, copy=False)


def _known(x: np.ndarray, default: float) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x)
    return np.where(ok, x, default), ok.astype(np.float64)


def sequence_features(cand: np.ndarray, hist: np.ndarray) -> np.ndarray:
    """(U, C, 8) cosines of each candidate with its user's history, :data:`SEQUENCE_FEATURES`.

    ``cand`` (U, C, D) unit rows; ``hist`` (U, H, D) unit rows or zero padding, most
    recent last. Padding never counts: means and maxima are over real plays (0 when
    there are none).
    """
    u, c, h = cand.shape[0], cand.shape[1], hist.shape[1]
    real = (np.abs(hist).sum(axis=2) > 0)[:, None, :]  # (U, 1, H)
    sim = np.einsum("ucd,uhd->uch", cand, hist, optimize=True).astype(np.float64)
    count = real.sum(axis=2)  # (U, 1)
    # Plays back from the most recent: 0 is the last play; padding sits at the front.
    back = (h - 1 - np.arange(h))[None, None, :]
    last5 = real & (back < 5)
    out = np.zeros((u, c, len(SEQUENCE_FEATURES)), dtype=np.float64)
    if h == 0:
        return out
    out[..., 0] = np.where(real[..., -1], sim[..., -1], 0.0)
    out[..., 1] = np.where(last5, sim, 0).sum(2) / np.maximum(last5.sum(2), 1)
    out[..., 2] = np.where(last5.any(2), np.where(last5, sim, -np.inf).max(2), 0.0)
    out[..., 3] = np.where(count > 0, np.where(real, sim, -np.inf).max(2), 0.0)
    for j, d in enumerate(SEQUENCE_DECAYS):
        w = np.where(real, float(d) ** back, 0.0)
        out[..., 4 + j] = (w * sim).sum(2) / np.maximum(w.sum(2), 1e-12)
    out[..., 7] = np.log1p(count)
    return out


def knn_scores(neighbours: sp.csr_matrix, hist: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """(U, C, len(KNN_DECAYS)) co-visitation scores: Σ_j decay^back_j · S[h_j, c].

    ``neighbours`` S (I, I) CSR: row i holds the pruned cosine similarity of item i to
    the items it is a neighbour of (ItemKNN's ``neighbours_``); ``hist`` (U, H) item
    indices into S of the user's last plays, most recent last, -1 padding or unknown;
    ``cand`` (U, C) item indices, -1 unknown (scores 0).
    """
    u, h = hist.shape
    out = np.zeros((*cand.shape, len(KNN_DECAYS)))
    real = hist >= 0
    if not real.any() or not (cand >= 0).any():
        return out
    back = np.broadcast_to(h - 1 - np.arange(h), hist.shape)
    ui, hj = np.nonzero(real)
    rows, cols = np.nonzero(cand >= 0)
    for k, d in enumerate(KNN_DECAYS):
        w = sp.csr_matrix(
            (float(d) ** back[ui, hj], (ui, hist[ui, hj])), shape=(u, neighbours.shape[0])
        )
        prod = sp.csr_matrix(w @ neighbours)  # (U, I): duplicate plays add up, as weights
        prod.sum_duplicates()  # canonical: sorted column indices within each row
        # Look the pairs up by (row, column) key in the product's sorted keys: one
        # vectorised search instead of scipy's per-element scan of each row.
        n_i = np.int64(neighbours.shape[1])
        keys = np.repeat(np.arange(u, dtype=np.int64), np.diff(prod.indptr)) * n_i + prod.indices
        want = rows.astype(np.int64) * n_i + cand[rows, cols]
        pos = np.searchsorted(keys, want).clip(0, max(len(keys) - 1, 0))
        hit = keys[pos] == want if len(keys) else np.zeros(len(want), bool)
        out[rows, cols, k] = np.where(hit, prod.data[pos] if len(keys) else 0.0, 0.0)
    return out


def category_share(hist_cat: np.ndarray, cand_cat: np.ndarray) -> np.ndarray:
    """(U, C) share of each user's history plays (``hist_cat`` (U, H), -1 pad) in each
    candidate's category (``cand_cat`` (U, C), -1 unknown: 0)."""
    real = hist_cat >= 0  # (U, H)
    n = np.maximum(real.sum(1), 1)[:, None]
    same = (hist_cat[:, None, :] == cand_cat[:, :, None]) & real[:, None, :]
    return np.where(cand_cat >= 0, same.sum(2) / n, 0.0)


def pair_features(x: PairInputs) -> np.ndarray:
    """(U, C, F) float32 features of each pair, columns in :data:`FEATURE_NAMES` order."""
    q = _unit(np.asarray(x.query, np.float32))
    c = _unit(np.asarray(x.candidate, np.float32))
    hist = _unit(np.asarray(x.history, np.float32))
    seq = sequence_features(c, hist)
    cat = np.asarray(x.candidate_category)
    completion, completion_ok = _known(x.completion, 0.5)
    dislike, _ = _known(x.dislike_ratio, 0.0)
    age, age_ok = _known(x.age_days, 0.0)
    dur, dur_ok = _known(x.duration_s, 300.0)
    hour, hour_ok = _known(np.broadcast_to(np.asarray(x.hour)[:, None], cat.shape), 0.0)
    angle = 2 * np.pi * hour / 24.0
    cols = [
        np.asarray(x.retrieval_score, np.float64),
        np.log1p(np.maximum(np.asarray(x.retrieval_rank, np.float64), 0)),
        np.einsum("ucd,ud->uc", c, q).astype(np.float64),
        *np.moveaxis(seq, 2, 0),
        category_share(np.asarray(x.history_category), cat),
        (cat >= 0).astype(np.float64),
        np.log1p(np.maximum(np.asarray(x.views, np.float64), 0)),
        completion,
        completion_ok,
        dislike,
        np.log1p(np.maximum(age, 0)),
        age_ok,
        np.log(np.maximum(dur, 1.0) / 300.0),
        dur_ok,
        np.sin(angle) * hour_ok,
        np.cos(angle) * hour_ok,
        *np.moveaxis(np.asarray(x.knn, np.float64), 2, 0),
    ]
    out = np.stack(cols, axis=-1).astype(np.float32)
    assert out.shape[-1] == len(FEATURE_NAMES)
    return out
