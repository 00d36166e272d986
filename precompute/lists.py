"""Trending and popular lists from counts and plays: pure functions over numpy arrays.

Shared by the 4-hourly generation (counts from the features version) and the
15-minute fresh lists (counts from the event log's newest partitions,
:mod:`videorec.precompute.fresh`), so both rank by the same rule.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from videorec.config import PrecomputeConfig
from videorec.precompute import compute, inputs

Lists = dict  # name -> (video ids (n,) int64, scores (n,) float64), best first


def codes_of(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(names (g,), code per value (m,), -1 for None/"") of an object array of strings."""
    present = np.array([v is not None and v != "" for v in values], dtype=bool)
    names, codes = np.unique(values[present].astype(str), return_inverse=True)
    out = np.full(len(values), -1, np.int64)
    out[present] = codes
    return names, out


def lookup(keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(q,) object array: the value of each query's key (first one), None when absent."""
    order = np.argsort(keys, kind="stable")
    k, v = keys[order], values[order]
    out = np.full(len(queries), None, dtype=object)
    if len(k):
        pos = np.minimum(np.searchsorted(k, queries), len(k) - 1)
        hit = k[pos] == queries
        out[hit] = v[pos[hit]]
    return out


def trending_from_counts(
    counts: pa.Table, videos: pa.Table, p: PrecomputeConfig
) -> dict[str | None, tuple[np.ndarray, np.ndarray]]:
    """{None: global, category: its list} from per-video ``counts`` (video_id, views_1h,
    views_24h, viewers_24h) and ``videos`` (video_id, category)."""
    import pyarrow.compute as pc

    vid = inputs.ids(counts["video_id"])
    n = {
        c: inputs.ids(pc.fill_null(counts[c], 0)) for c in ("views_1h", "views_24h", "viewers_24h")
    }
    score = compute.trending_scores(
        n["views_1h"], n["views_24h"], n["viewers_24h"], p.trending_half_life_h,
        p.trending_min_viewers,
    )  # fmt: skip
    keep = ~np.isnan(score)
    vid, score = vid[keep], score[keep]
    lists: dict[str | None, tuple[np.ndarray, np.ndarray]] = {}
    glob = compute.top_per_group(np.zeros(len(vid), np.int64), vid, score, p.trending_top_n)
    lists[None] = glob.get(0, (vid[:0], score[:0]))
    cats = np.asarray(videos["category"].to_numpy(zero_copy_only=False), dtype=object)
    names, codes = codes_of(lookup(inputs.ids(videos["video_id"]), cats, vid))
    has = codes >= 0
    for code, lst in compute.top_per_group(
        codes[has], vid[has], score[has], p.trending_top_n
    ).items():
        lists[str(names[code])] = lst
    return lists


def popular_from_plays(
    groups: pa.Table, column: str, plays: inputs.Plays, at_s: float, p: PrecomputeConfig
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{country or language of the player: (video ids, decayed popularity)}, best first.

    ``groups`` holds user_id and ``column``; positive ``plays`` up to ``at_s`` (epoch
    seconds) count, each decayed by its age with ``popular_half_life_h``.
    """
    values = np.asarray(groups[column].to_numpy(zero_copy_only=False), dtype=object)
    sel = plays.positive & (plays.ts_s <= at_s)
    names, codes = codes_of(lookup(inputs.ids(groups["user_id"]), values, plays.user_id[sel]))
    has = codes >= 0
    g, v, s = compute.decayed_sums(
        codes[has], plays.video_id[sel][has], plays.ts_s[sel][has], at_s, p.popular_half_life_h
    )
    return {
        str(names[c]): lst for c, lst in compute.top_per_group(g, v, s, p.popular_top_n).items()
    }
