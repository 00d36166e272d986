"""Offline metrics: full-catalogue ranking accuracy and beyond-accuracy list properties.

Kept apart from the models: everything here is a function of top-k lists (item
indices, -1 for an empty slot), of scores, of the held-out items and of catalogue
metadata. All metrics are computed per user, then averaged over the evaluated users
(each has at least one held-out item), so a heavy user counts as much as a light one.

Definitions (for one user with R held-out items, hits ``h_r`` = 1 if the item at rank r
is held out, ranks 1-based):

- Recall@K   = Σ_{r≤K} h_r / R  (R counts held-out items outside the catalogue too)
- HitRate@K  = 1 if Σ_{r≤K} h_r > 0
- NDCG@K     = Σ_{r≤K} h_r / log2(r + 1)  ÷  Σ_{r≤min(R, K)} 1 / log2(r + 1)
- MRR        = 1 / rank of the best-ranked held-out item over the *full* catalogue
  (training items excluded, ties by item index), 0 if none is in the catalogue
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from videorec.evaluation.interactions import _NULL_TS, ItemMeta

DEFAULT_KS: tuple[int, ...] = (10, 20, 50, 100, 200)
DAY_US = 86_400 * 1_000_000
MAX_PER_CHANNEL = 3
MAX_CATEGORY_SHARE = 0.30


def check_ks(ks: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """Sorted unique cut-offs; ValueError for an empty list or a K ≤ 0."""
    out = tuple(sorted({int(k) for k in ks}))
    if not out or out[0] <= 0:
        raise ValueError(f"every K must be a positive integer; got {list(ks)}")
    return out


def hits(top_items: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """(n, K) bool: whether ``top_items[u, r]`` is one of row u's relevant items.

    ``top_items`` (n, K) int item indices (-1 = empty slot, never a hit);
    ``relevant`` (n, n_items) CSR with one row per list.
    """
    n, k = top_items.shape
    m = relevant.shape[1]
    rel = sp.csr_matrix(relevant)
    rel.sum_duplicates()
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(rel.indptr))
    keys_rel = np.sort(rows * m + rel.indices)
    keys_top = np.arange(n, dtype=np.int64)[:, None] * m + top_items
    pos = np.searchsorted(keys_rel, keys_top)
    pos = np.minimum(pos, max(len(keys_rel) - 1, 0))
    found = keys_rel[pos] == keys_top if len(keys_rel) else np.zeros((n, k), bool)
    return found & (top_items >= 0)


def ranking_metrics(
    top_items: np.ndarray,
    relevant: sp.csr_matrix,
    n_relevant: np.ndarray,
    ks: tuple[int, ...] = DEFAULT_KS,
) -> dict[str, np.ndarray]:
    """Per-user ``recall@K``, ``ndcg@K`` and ``hitrate@K`` for each K, each (n,) float64.

    ``top_items`` (n, ≥max(ks)) ranked item indices; ``relevant`` (n, n_items) CSR of
    held-out items in the catalogue; ``n_relevant`` (n,) the number of held-out items
    including those outside the catalogue (must be ≥ 1 and ≥ the row's stored items).
    """
    ks = check_ks(ks)
    if top_items.shape[1] < ks[-1]:
        raise ValueError(f"lists of length {top_items.shape[1]} are shorter than K={ks[-1]}")
    n_rel = np.asarray(n_relevant, dtype=np.float64)
    if (n_rel < 1).any():
        raise ValueError("every evaluated user needs at least one held-out item")
    h = hits(top_items[:, : ks[-1]], relevant)
    disc = 1.0 / np.log2(np.arange(2, ks[-1] + 2))  # rank r (1-based) -> 1/log2(r+1)
    cum_hits = np.cumsum(h, axis=1)
    cum_dcg = np.cumsum(h * disc, axis=1)
    ideal = np.cumsum(disc)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hk = cum_hits[:, k - 1]
        out[f"recall@{k}"] = hk / n_rel
        out[f"hitrate@{k}"] = (hk > 0).astype(np.float64)
        idcg = ideal[np.minimum(n_rel, k).astype(np.int64) - 1]
        out[f"ndcg@{k}"] = cum_dcg[:, k - 1] / idcg
    return out


def first_relevant_rank(scores: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """(n,) float64: 1-based full-catalogue rank of each row's best relevant item.

    ``scores`` (n, n_items) with excluded items at -inf; ranks follow the same order as
    :func:`~videorec.evaluation.recommenders.top_k` (descending score, ties to the lower
    index). ``inf`` where a row has no relevant item with a finite score.
    """
    n, m = scores.shape
    rel = sp.csr_matrix(relevant)
    r = np.repeat(np.arange(n), np.diff(rel.indptr))
    c = rel.indices.astype(np.int64)
    ranks = np.full(n, np.inf)
    if len(c) == 0:
        return ranks
    s = scores[r, c]
    order = np.lexsort((c, -s, r))  # per row: highest score, then lowest index
    r_o = r[order]
    first = np.r_[True, r_o[1:] != r_o[:-1]]
    rows, cols, best = r_o[first], c[order][first], s[order][first]
    ok = np.isfinite(best)
    rows, cols, best = rows[ok], cols[ok], best[ok]
    sub = scores[rows]
    better = (sub > best[:, None]).sum(axis=1)
    tied_before = ((sub == best[:, None]) & (np.arange(m) < cols[:, None])).sum(axis=1)
    ranks[rows] = 1.0 + better + tied_before
    return ranks


def coverage(top_items: np.ndarray, n_items: int) -> float:
    """Share of the catalogue's ``n_items`` that appear in at least one list."""
    shown = top_items[top_items >= 0]
    return float(len(np.unique(shown)) / n_items) if n_items else 0.0


def _max_group_count(codes: np.ndarray) -> np.ndarray:
    """(n,) the size of the largest group in each row of ``codes`` (n, K); -1 is no group."""
    n = codes.shape[0]
    ok = codes >= 0
    if not ok.any():
        return np.zeros(n, dtype=np.int64)
    rows = np.broadcast_to(np.arange(n)[:, None], codes.shape)[ok]
    counts = sp.csr_matrix(
        (np.ones(int(ok.sum()), dtype=np.int64), (rows, codes[ok])),
        shape=(n, int(codes[ok].max()) + 1),
    )
    counts.sum_duplicates()
    return counts.max(axis=1).toarray().ravel().astype(np.int64)


def beyond_accuracy(
    top_items: np.ndarray,
    items: ItemMeta,
    popularity: np.ndarray,
    n_train_users: int,
    serve_ts: np.ndarray,
    *,
    max_per_channel: int = MAX_PER_CHANNEL,
    max_category_share: float = MAX_CATEGORY_SHARE,
) -> dict[str, float | int | None]:
    """List properties of the top-K lists ``top_items`` (n, K); None where the data lacks
    the field the metric needs (e.g. channels on MovieLens).

    - ``top_channel_share`` / ``top_category_share``: mean over lists of (count of the
      list's most frequent channel / category) / K; unknown values are not a group.
    - ``lists_over_channel_cap`` (more than ``max_per_channel`` from one channel),
      ``lists_over_category_cap`` (one category above ``max_category_share`` of K) and
      ``lists_breaking_caps`` (either; None unless both fields are known): list counts.
    - ``mean_log_popularity``: mean of ln(training users of the item) over impressions;
      ``novelty_bits``: mean of -log2(popularity / n_train_users).
    - ``fresh_video_share``: impressions of videos published less than 24 h before the
      list's serve time; ``not_yet_published_share``: published after it (a leak check).
    - ``new_creator_share``: impressions of videos whose channel was created inside the
      data window.

    ``popularity`` (n_items,) training users per item; ``serve_ts`` (n,) UTC µs.
    """
    n, k = top_items.shape
    valid = top_items >= 0
    n_imp = int(valid.sum())
    safe = np.where(valid, top_items, 0)
    out: dict[str, float | int | None] = {"lists": int(n), "list_length": int(k)}

    def group_stats(codes_of_item: np.ndarray, label: str) -> np.ndarray | None:
        if (codes_of_item < 0).all():
            out[f"top_{label}_share"] = None
            return None
        codes = np.where(valid, codes_of_item[safe], -1)
        biggest = _max_group_count(codes)
        out[f"top_{label}_share"] = float(np.mean(biggest / k)) if n else None
        return biggest

    ch = group_stats(items.channel, "channel")
    cat = group_stats(items.category, "category")
    over_ch = ch > max_per_channel if ch is not None else None
    over_cat = cat > max_category_share * k + 1e-9 if cat is not None else None
    out["lists_over_channel_cap"] = int(over_ch.sum()) if over_ch is not None else None
    out["lists_over_category_cap"] = int(over_cat.sum()) if over_cat is not None else None
    out["lists_breaking_caps"] = (
        int((over_ch | over_cat).sum()) if over_ch is not None and over_cat is not None else None
    )

    pop = np.asarray(popularity, dtype=np.float64)[top_items[valid]]
    if n_imp and (pop > 0).all():
        out["mean_log_popularity"] = float(np.mean(np.log(pop)))
        out["novelty_bits"] = float(np.mean(-np.log2(pop / max(n_train_users, 1))))
    else:
        out["mean_log_popularity"] = out["novelty_bits"] = None

    if (items.published_us == _NULL_TS).all() or n_imp == 0:
        out["fresh_video_share"] = out["not_yet_published_share"] = None
    else:
        pub = items.published_us[safe]
        known = valid & (pub != _NULL_TS)
        age = np.asarray(serve_ts, dtype=np.int64)[:, None] - pub
        out["fresh_video_share"] = float(((age >= 0) & (age < DAY_US) & known).sum() / n_imp)
        out["not_yet_published_share"] = float(((age < 0) & known).sum() / n_imp)

    if (items.channel_created_us == _NULL_TS).all() or n_imp == 0:
        out["new_creator_share"] = None
    else:
        created = items.channel_created_us[safe]
        new = valid & (created != _NULL_TS) & (created >= items.window_start_us)
        out["new_creator_share"] = float(new.sum() / n_imp)
    return out


def summarise(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean over users of each per-user metric."""
    return {k: float(np.mean(v)) if len(v) else float("nan") for k, v in per_user.items()}


def popularity_histogram(
    top_items: np.ndarray, popularity: np.ndarray, edges: np.ndarray
) -> list[float]:
    """Share of impressions (valid slots of ``top_items``) per popularity bin ``edges``."""
    pop = np.asarray(popularity)[top_items[top_items >= 0]]
    counts, _ = np.histogram(pop, bins=edges)
    return (counts / max(len(pop), 1)).tolist()


def jsonable(value: Any) -> Any:
    """Plain JSON data: numpy scalars become Python numbers, NaN and inf become None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [jsonable(v) for v in value]
    return value
