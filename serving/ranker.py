"""The stage-2 ranker in the serving shim: loaded off the request path, one forward pass
per home request.

**What is served.** The artifact store's ``ranker`` pointer
(:func:`videorec.ranking.publish.read_ranker_pointer`) names a ``models/ranker``
version; its ``ranker.npz`` (the numpy runtime's weights,
:class:`~videorec.ranking.runtime.RankerRuntime`) and ``neighbours.npz`` (the
co-visitation matrix the sequence features read) are loaded into a
:class:`ServedRanker`. Each worker's refresh loop (:func:`refresh_ranker`, every
``serving.refresh_s`` in a thread beside the Redis refresh) re-reads the pointer; a
new version is loaded completely (both files parsed and checked, one candidate scored)
before ``LiveState.ranker`` is swapped, one reference, so a request sees the old ranker
or the new one, never half of either. A version that fails to load leaves the one in
use serving and is reported (``/readyz``'s ``ranker`` check, the log and
``videorec_ranker_loads_total{outcome="error"}``), and is tried again after
:data:`LOAD_RETRY_S`. An unset pointer serves no ranker.

**On the request path** (:func:`ranker_scores`): the personal pool's candidates (base
recommendations and fresh candidates, after the filters) become one
:class:`~videorec.ranking.features.PairInputs` with U = 1 and go through
:func:`~videorec.ranking.features.pair_features`, the definition the ranker was trained
with, and one ``RankerRuntime.score`` call: one batched forward pass on the CPU (no
torch in this process). The feature inputs, as the ranking-examples stage builds them
offline (``ranking/examples.py``):

- query: the user's query embedding (the feature hash's ``embedding``; zeros without
  one); candidates: their catalogue embeddings; history: the catalogue embeddings of
  the user's last ``ranking.history_len`` plays (``UserView.history``, oldest first;
  most recent last, zero rows in front where there are fewer, and for plays the
  catalogue does not hold), with their category codes (-1 for those);
- retrieval score: the pool's retrieval score (the precomputed list's score, a fresh
  candidate's inner product); retrieval rank: 0-based by that score, over the pool;
- views, completion, dislike ratio, duration: the catalogue's columns; age: days
  since ``published_at`` at the request's time; hour: the request's hour of day (UTC);
- co-visitation: :func:`~videorec.ranking.features.knn_scores` with plays and
  candidates looked up in ``neighbours.npz``'s ``item_ids`` (-1: not in it), given the
  block of the matrix they span (:func:`covisitation_block`: the same sums, cheaper).

The caller (``serving/feed.py``) turns the scores into relevance
(:func:`videorec.serving.rank.ranker_relevance`) and wraps the call in the ranker's
circuit breaker; without a ranker, while that breaker is open or when the ranker raises,
the documented rule (:func:`videorec.serving.rank.relevance`) ranks the pool.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from videorec import artifact_names as names
from videorec.ranking.features import FEATURE_NAMES, PairInputs, knn_scores, pair_features
from videorec.ranking.runtime import RankerRuntime

if TYPE_CHECKING:
    from videorec.config import Config
    from videorec.serving.live import Catalogue, LiveState
    from videorec.serving.rank import UserView

log = logging.getLogger("videorec.serving")
LOAD_RETRY_S = 60.0  # a version that failed to load is tried again after this long
SECONDS_PER_DAY = 86_400.0


class RankerLoadError(ValueError):
    """A ranker version's files are missing, malformed, or of other features."""


@dataclass(frozen=True, eq=False)
class ServedRanker:
    """A loaded ranker version: the runtime, the co-visitation matrix and its item ids
    (sorted), and what scoring reads from the config."""

    version: str
    runtime: RankerRuntime
    item_ids: np.ndarray  # (I,) int64, sorted: the matrix's rows and columns
    neighbours: sp.csr_matrix  # (I, I)
    score_weights: dict[str, float]
    history_len: int

    def item_index(self, ids: np.ndarray) -> np.ndarray:
        """(n,) int64 rows of ``neighbours`` of video ``ids``, -1 where absent."""
        ids = np.asarray(ids, np.int64)
        if not len(self.item_ids):
            return np.full(ids.shape, -1, np.int64)
        pos = np.searchsorted(self.item_ids, ids).clip(0, len(self.item_ids) - 1)
        return np.where(self.item_ids[pos] == ids, pos, -1).astype(np.int64)


def load_ranker(path: Any, version: str, cfg: Config) -> ServedRanker:
    """The ranker version whose files are in folder ``path``; RankerLoadError when they
    are missing, malformed or computed on features other than :data:`FEATURE_NAMES`."""
    from pathlib import Path

    folder = Path(path)
    try:
        runtime = RankerRuntime.load(folder / names.RANKER_WEIGHTS_FILE)
        with np.load(folder / names.NEIGHBOURS_FILE, allow_pickle=False) as z:
            item_ids = np.asarray(z["item_ids"], np.int64)
            # float64: knn_scores weighs the plays in float64, and scipy would otherwise
            # upcast the whole matrix (a copy of every vote) in each request's product.
            indptr, indices, data = z["indptr"], z["indices"], z["data"].astype(np.float64)
    except Exception as err:  # missing, truncated, not an npz, an array missing
        raise RankerLoadError(f"ranker {version}: {type(err).__name__}: {err}") from None
    if runtime.feature_names != list(FEATURE_NAMES):
        raise RankerLoadError(
            f"ranker {version}: trained on features {runtime.feature_names}, serving builds "
            f"{list(FEATURE_NAMES)}"
        )
    n = len(item_ids)
    if n > 1 and not (np.diff(item_ids) > 0).all():
        raise RankerLoadError(f"ranker {version}: {names.NEIGHBOURS_FILE} item_ids not sorted")
    try:
        neighbours = sp.csr_matrix((data, indices, indptr), shape=(n, n))
        neighbours.check_format(full_check=True)
    except (ValueError, TypeError) as err:
        raise RankerLoadError(f"ranker {version}: {names.NEIGHBOURS_FILE}: {err}") from None
    ranker = ServedRanker(version, runtime, item_ids, neighbours,
                          dict(cfg.ranking.score_weights), cfg.ranking.history_len)  # fmt: skip
    try:  # every weight the forward pass reads is there, of the right shape
        out = runtime.score(np.zeros((1, len(FEATURE_NAMES)), np.float32), ranker.score_weights)
    except (KeyError, ValueError, IndexError) as err:
        raise RankerLoadError(f"ranker {version}: {names.RANKER_WEIGHTS_FILE}: {err}") from None
    if out.shape != (1,):
        raise RankerLoadError(f"ranker {version}: scores of shape {out.shape}, not (1,)")
    return ranker


# ---- the request path


def retrieval_rank(retrieval: np.ndarray) -> np.ndarray:
    """(n,) 0-based rank of each candidate by retrieval score, best first (ties: pool order)."""
    order = np.argsort(-np.asarray(retrieval, np.float64), kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


def pair_inputs(
    ranker: ServedRanker, cat: Catalogue, rows: np.ndarray, retrieval: np.ndarray,
    rank: np.ndarray, user: UserView, now_s: float,
) -> PairInputs:  # fmt: skip
    """The :class:`PairInputs` (U = 1) of catalogue ``rows`` for ``user`` at ``now_s``:
    ``retrieval`` (n,) their retrieval scores, ``rank`` (n,) their retrieval ranks."""
    rows = np.asarray(rows, np.int64)
    d, h = cat.emb.shape[1], ranker.history_len
    played = np.asarray(user.history, np.int64)[-h:]  # most recent last
    hist_rows, found = cat.rows(played)
    hist = np.zeros((h, d), np.float32)
    hist_cat = np.full(h, -1, np.int64)
    pad = h - len(played)
    hist[pad:] = np.where(found[:, None], cat.emb[hist_rows], 0.0)
    hist_cat[pad:] = np.where(found, cat.category[hist_rows], -1)
    hist_idx = np.full(h, -1, np.int64)
    hist_idx[pad:] = ranker.item_index(played)
    block, hist_local, cand_local = covisitation_block(
        ranker.neighbours, hist_idx, ranker.item_index(cat.ids[rows])
    )
    q = user.embedding
    query = (
        np.asarray(q, np.float32)
        if q is not None and np.shape(q) == (d,)
        else np.zeros(d, np.float32)
    )
    age_days = (now_s - cat.published_at[rows]) / SECONDS_PER_DAY  # NaN stays NaN: unknown
    return PairInputs(
        query=query[None, :],
        history=hist[None],
        history_category=hist_cat[None],
        candidate=cat.emb[rows][None],
        candidate_category=cat.category[rows].astype(np.int64)[None],
        retrieval_score=np.asarray(retrieval, np.float64)[None],
        retrieval_rank=np.asarray(rank, np.int64)[None],
        views=cat.views[rows].astype(np.float64)[None],
        completion=cat.completion[rows].astype(np.float64)[None],
        dislike_ratio=cat.dislike[rows].astype(np.float64)[None],
        age_days=age_days[None],
        duration_s=cat.duration_s[rows][None],
        hour=np.array([(now_s / 3600.0) % 24.0]),
        knn=knn_scores(block, hist_local[None], cand_local[None]),
    )


def covisitation_block(
    neighbours: sp.csr_matrix, hist: np.ndarray, cand: np.ndarray
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """(block, hist', cand'): the rows of ``neighbours`` of the plays ``hist`` and its
    columns of the candidates ``cand`` (indices into it, -1 absent), renumbered in the
    same order, with the plays and candidates indexed into the block.

    :func:`~videorec.ranking.features.knn_scores` of the block gives the same sums as of
    the whole matrix, added in the same order (so the same bits): it reads only those
    rows and columns. Its cost is then the request's, not the catalogue's: on the whole
    matrix one product holds every video the plays vote for (thousands), and scipy looks
    each candidate up in it by a linear scan (2 ms a request at 50,000 videos)."""
    rows = np.unique(hist[hist >= 0])
    cols = np.unique(cand[cand >= 0])
    if not len(rows) or not len(cols):  # knn_scores answers zeros without reading it
        return sp.csr_matrix((0, 0)), np.full(hist.shape, -1), np.full(cand.shape, -1)
    sub = neighbours[rows]
    local = np.searchsorted(cols, sub.indices).clip(0, len(cols) - 1)
    keep = cols[local] == sub.indices
    row_of = np.repeat(np.arange(len(rows)), np.diff(sub.indptr))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(row_of[keep], minlength=len(rows)))])
    block = sp.csr_matrix((sub.data[keep], local[keep], indptr), shape=(len(rows), len(cols)))

    def renumber(idx: np.ndarray, kept: np.ndarray) -> np.ndarray:
        return np.where(idx >= 0, np.searchsorted(kept, idx), -1)

    return block, renumber(hist, rows), renumber(cand, cols)


def ranker_scores(
    ranker: ServedRanker, cat: Catalogue, rows: np.ndarray, retrieval: np.ndarray,
    rank: np.ndarray, user: UserView, now_s: float,
) -> np.ndarray:  # fmt: skip
    """(n,) the ranker's final scores of catalogue ``rows`` for ``user``: their features
    built in one call and scored in one batched forward pass. Raises ValueError on a
    score that is not finite (the caller's circuit breaker counts it)."""
    if not len(rows):
        return np.zeros(0)
    x = pair_features(pair_inputs(ranker, cat, rows, retrieval, rank, user, now_s))[0]
    score = np.asarray(ranker.runtime.score(x, ranker.score_weights), np.float64)
    if score.shape != (len(rows),) or not np.isfinite(score).all():
        raise ValueError(f"ranker {ranker.version}: {score.shape} scores, not all finite")
    return score


# ---- the refresh loop


@dataclass
class RankerStatus:
    """What ``/readyz`` reports of the ranker: the pointer's version, the last failure."""

    pointer: str | None = None  # the version the pointer names (None: unset)
    error: str | None = None  # why the pointer's version is not the one served
    failed: str | None = None  # the version that failed to load
    failed_at: float = 0.0
    loads: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0})


def refresh_ranker(state: LiveState, store: Any, cfg: Config, now_s: float) -> None:
    """Re-read the ``ranker`` pointer; load a new version and swap it in (run in a
    thread). A version that fails to load keeps the one in use; an unset pointer, none."""
    from videorec.ranking.publish import read_ranker_pointer
    from videorec.serving import metrics

    status = state.ranker_status
    pointer = read_ranker_pointer(store)  # a store failure raises: the caller counts it
    version = str(pointer["version"]) if pointer and pointer.get("version") else None
    status.pointer = version
    current = state.ranker
    if version is None:
        state.ranker, status.error = None, None
        return
    if current is not None and current.version == version:
        status.error = None
        return
    if status.failed == version and now_s - status.failed_at < LOAD_RETRY_S:
        return
    try:
        ranker = load_ranker(store.local_path(names.RANKER, version), version, cfg)
    except Exception as err:  # any failure: the ranker in use keeps serving
        status.failed, status.failed_at = version, now_s
        status.error = f"{type(err).__name__}: {err}"
        status.loads["error"] += 1
        metrics.RANKER_LOADS.labels("error").inc()
        log.warning("ranker %s not loaded (%s); serving %s", version, status.error,
                    current.version if current else "the rule")  # fmt: skip
        return
    state.ranker = ranker  # the swap: one reference
    status.error, status.failed = None, None
    status.loads["ok"] += 1
    metrics.RANKER_LOADS.labels("ok").inc()
    log.info("ranker %s loaded (%d co-visitation items)", version, len(ranker.item_ids))


def ranker_check(state: LiveState, breaker_open: bool) -> dict[str, Any]:
    """``/readyz``'s ranker entry: never what makes the process unready (the rule serves)."""
    status, ranker = state.ranker_status, state.ranker
    return {
        "ok": True,
        "version": ranker.version if ranker is not None else None,
        "pointer": status.pointer,
        "error": status.error,
        "breaker_open": breaker_open,
    }
