"""The vectorised core: batched ANN search with exclusions, recall, trending and popular.

Nothing here loops over candidates in Python: a search returns an (n, K) matrix, the
exclusions are one boolean mask over it (sorted-array lookups), and the kept items
are moved to the front of each row by one stable argsort.

Scores are "larger is better": the inner product for an ``inner_product`` index, the
negated squared L2 distance for an ``l2`` one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class TopK:
    """Per query, the first ``lengths[i]`` items of row i are kept, best first.

    ids (n, k) int64 (-1 beyond the length), scores (n, k) float32, lengths (n,) int64.
    """

    ids: np.ndarray
    scores: np.ndarray
    lengths: np.ndarray


def isin_sorted(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Boolean array shaped like ``queries``: which values occur in ``sorted_keys``."""
    if len(sorted_keys) == 0:
        return np.zeros(np.shape(queries), dtype=bool)
    i = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
    return sorted_keys[i] == queries


def search_wide(index: Any, queries: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores or distances (n, K), ids (n, K)) of the ``want`` nearest, K = min(want, ntotal).

    FAISS releases the GIL here, so a caller may run this for the next chunk in a
    thread while it post-processes and writes the current one.
    """
    return index.search(
        np.ascontiguousarray(queries, dtype=np.float32), int(min(want, index.ntotal))
    )


def keep_top(dist: np.ndarray, found: np.ndarray, k: int, drop: np.ndarray, *, metric: str) -> TopK:
    """The first ``k`` items of each row of a search result that ``drop`` (n, K) does not
    mark (FAISS's -1 padding is always dropped), in rank order."""
    drop = drop | (found < 0)
    order = np.argsort(drop, axis=1, kind="stable")[:, :k]  # kept first, in rank order
    ids = np.take_along_axis(found, order, axis=1)
    scores = np.take_along_axis(dist, order, axis=1).astype(np.float32)
    if metric == "l2":
        scores = -scores
    lengths = np.minimum((~drop).sum(axis=1), k).astype(np.int64)
    beyond = np.arange(ids.shape[1])[None, :] >= lengths[:, None]
    ids[beyond], scores[beyond] = -1, 0.0
    if ids.shape[1] < k:  # a catalogue smaller than k
        pad = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)))
    return TopK(ids=ids, scores=scores, lengths=lengths)


def search_excluding(
    index: Any,
    queries: np.ndarray,
    k: int,
    extra: int,
    excluded: Callable[[np.ndarray], np.ndarray],
    *,
    metric: str,
) -> TopK:
    """The top ``k`` of (n, d) ``queries`` after dropping what ``excluded`` marks.

    The index is asked for ``k + extra`` neighbours, so each query keeps ``k`` items
    when at most ``extra`` of them are excluded. ``excluded`` maps the (n, K) found
    ids to an (n, K) mask.
    """
    dist, found = search_wide(index, queries, k + extra)
    return keep_top(dist, found, k, excluded(found), metric=metric)


def watched_width(watched_rows: np.ndarray, n_queries: int) -> int:
    """The largest number of watched pairs of any one query row: the search's extra width."""
    return int(np.bincount(watched_rows, minlength=n_queries).max()) if len(watched_rows) else 0


def keep_unwatched(
    dist: np.ndarray,
    found: np.ndarray,
    watched_rows: np.ndarray,
    watched_videos: np.ndarray,
    k: int,
    *,
    metric: str,
) -> TopK:
    """The top ``k`` of a chunk's search result (n, K) that its user has not watched.

    The watched set is given as (p,) pairs (row of the chunk, video id). The chunk's
    watched videos are numbered 0..m-1; a candidate is looked up in them by hash
    (``pandas.Index.get_indexer``: about 7x faster here than a binary search of the
    whole catalogue, measured on 4,096 × 530 candidates against 1M videos), and only
    candidates some user of the chunk watched are checked against the (row, video)
    pairs, as one sortable key each.
    """
    drop = np.zeros(found.shape, dtype=bool)
    if len(watched_rows):
        import pandas as pd

        uniq, local = np.unique(watched_videos, return_inverse=True)
        pairs = np.sort(pair_keys(np.asarray(watched_rows), local, len(uniq)))
        pos = pd.Index(uniq).get_indexer(found.ravel()).reshape(found.shape)
        hit = pos >= 0
        rows = np.broadcast_to(np.arange(len(found))[:, None], found.shape)[hit]
        drop[hit] = isin_sorted(pairs, pair_keys(rows, pos[hit], len(uniq)))
    return keep_top(dist, found, k, drop, metric=metric)


def top_unwatched(
    index: Any,
    queries: np.ndarray,
    watched_rows: np.ndarray,
    watched_videos: np.ndarray,
    k: int,
    *,
    metric: str,
) -> TopK:
    """Base recommendations for one chunk of users: the top ``k`` of each of the (c, d)
    ``queries`` that its user has not watched (see ``keep_unwatched``).

    The search is widened by the chunk's largest watched count, so every user keeps
    ``k`` items when the index has them. A pure function of its inputs: the local
    loop (which overlaps the next chunk's search with this one's writes) and each
    Spark partition compute exactly this.
    """
    want = k + watched_width(watched_rows, len(queries))
    dist, found = search_wide(index, queries, want)
    return keep_unwatched(dist, found, watched_rows, watched_videos, k, metric=metric)


def pair_keys(rows: np.ndarray, positions: np.ndarray, n_items: int) -> np.ndarray:
    """(row, item position) pairs as one sortable int64 key each: row · n_items + position."""
    return rows.astype(np.int64) * np.int64(n_items) + positions.astype(np.int64)


def recall_vs_exact(found: np.ndarray, truth: np.ndarray, block: int = 256) -> float:
    """|found ∩ truth| / |truth| over all rows of two (n, ·) id matrices (-1 = none)."""
    hits = total = 0
    for lo in range(0, len(truth), block):
        f, t = found[lo : lo + block], truth[lo : lo + block]
        match = (f[:, :, None] == t[:, None, :]) & (t[:, None, :] >= 0)
        hits += int(match.any(axis=1).sum())
        total += int((t >= 0).sum())
    return hits / max(total, 1)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    """(nq, k) row positions of the exact top ``k`` of ``queries`` among ``vectors``."""
    import faiss

    flat = faiss.IndexFlat(
        vectors.shape[1],
        faiss.METRIC_INNER_PRODUCT if metric == "inner_product" else faiss.METRIC_L2,
    )
    flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]


def duplicate_groups(
    catalogue: np.ndarray, video_ids: np.ndarray, dup_keys: np.ndarray
) -> np.ndarray:
    """(n,) group id per position of the sorted ``catalogue``: videos whose ``dup_keys``
    are equal (and not "") share one group; every other video has a group of its own.

    ``dup_keys`` (m,) str describes ``video_ids`` (m,): for reuploads, the channel and
    the normalised title (see ``run.reupload_keys``); "" means unknown. Catalogue ids
    that no row describes get groups of their own.
    """
    n = len(catalogue)
    groups = np.arange(n, dtype=np.int64) + n  # own groups, numbered above any shared one
    if n == 0 or len(video_ids) == 0:
        return groups
    pos = np.minimum(np.searchsorted(catalogue, video_ids), n - 1)
    ok = (catalogue[pos] == video_ids) & (dup_keys != "")
    if ok.any():
        _, shared = np.unique(dup_keys[ok], return_inverse=True)
        groups[pos[ok]] = shared
    return groups


def top_per_group(
    groups: np.ndarray, items: np.ndarray, scores: np.ndarray, n: int
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per group code, its top ``n`` (items, scores), best first; ties by item ascending."""
    if len(groups) == 0:
        return {}
    order = np.lexsort((items, -scores, groups))
    g, it, sc = groups[order], items[order], scores[order]
    starts = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    ends = np.r_[starts[1:], len(g)]
    return {
        int(g[s]): (it[s : min(e, s + n)], sc[s : min(e, s + n)])
        for s, e in zip(starts, ends, strict=True)
    }


def trending_scores(
    views_1h: np.ndarray, views_24h: np.ndarray, viewers_24h: np.ndarray,
    half_life_h: float, min_viewers: int,
) -> np.ndarray:  # fmt: skip
    """(n,) trending scores; NaN for videos with too few distinct viewers.

    score = views_1h + 2^(-12.5 / half_life_h) · (views_24h − views_1h): a view of the
    last hour weighs 1 and one of the 23 hours before it the exponential decay at that
    bucket's mid-age (12.5 h), the finest the feature stage's two counts allow.
    """
    older = np.maximum(views_24h.astype(np.float64) - views_1h, 0.0)
    score = views_1h.astype(np.float64) + 2.0 ** (-12.5 / half_life_h) * older
    score[viewers_24h < min_viewers] = np.nan
    return score


def decayed_sums(
    groups: np.ndarray, videos: np.ndarray, ts_s: np.ndarray, at_s: float, half_life_h: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct (group, video): Σ 2^(-age_h / half_life_h) over its plays, the age
    taken at ``at_s``. Returns (groups (p,), videos (p,), sums (p,) float64)."""
    w = 2.0 ** (-np.maximum(at_s - ts_s, 0.0) / 3600.0 / half_life_h)
    vid_u, vid_pos = np.unique(videos, return_inverse=True)
    key = pair_keys(groups, vid_pos, max(len(vid_u), 1))
    uniq, inv = np.unique(key, return_inverse=True)
    sums = np.bincount(inv, weights=w, minlength=len(uniq))
    return uniq // max(len(vid_u), 1), vid_u[uniq % max(len(vid_u), 1)], sums
