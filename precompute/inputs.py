"""What precompute reads: the feature stage's Parquet output, the model's embeddings, videos.

The feature stage's folder names are spelled here and nowhere else in this package.
Everything is read with pyarrow into NumPy arrays (no Spark, no features code).

The watched set, and its limitation: the feature stage publishes no complete list of
what each user played. The closest it holds, all over its window, is unioned here:
``examples`` (the positive plays, at most ``features.max_examples_per_user`` per user,
and each one's history of the ``history_len`` watches before it), ``user_features``'
``recent_history`` (the last ``history_len`` watches of the training span) and ``eval``
(every play of the hold-out span). A watch that was neither a positive nor among the
``history_len`` watches before a positive or the end of the training span, and plays
after the window's end, are missed. Issue 11 asks the feature stage for a ``watched/``
table (user_id, video_id, last_played_at) over the whole window up to the logical
date; when a features version holds it, it is read alone and the union is not needed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

FEATURES_ARTIFACT = "features"
EXAMPLES = "examples"  # user_id, video_id, ts, history: positive plays of the training span
EVAL = "eval"  # user_id, video_id, ts, is_positive: every play of the hold-out span
USER_FEATURES = "user_features"  # user_id, country, language, plays, recent_history
TRENDING = "trending"  # video_id, views_1h, views_24h, viewers_24h at the window's end
WATCHED = "watched"  # user_id, video_id, last_played_at: the complete set, once upstream has it


class InputError(ValueError):
    """An input table is missing or lacks a column; the message names the path."""


def read_columns(folder: Path, name: str, columns: list[str]) -> pa.Table:
    """``columns`` of the Parquet table ``folder/name`` (a Spark output folder or a file)."""
    path = folder / name
    if not path.exists():
        raise InputError(f"{path}: missing (the features version has no {name!r} table)")
    try:
        schema = pq.read_schema(next(iter(sorted(path.glob("*.parquet"))), path))
    except (OSError, pa.ArrowInvalid) as err:
        raise InputError(f"{path}: unreadable: {err}") from None
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise InputError(f"{path}: missing columns {missing}")
    return pq.read_table(path, columns=columns)


def epoch_s(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A timestamp column as (n,) float64 seconds since the epoch (UTC)."""
    unit_per_s = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[col.type.unit]
    return col.cast(pa.int64()).to_numpy(zero_copy_only=False) / unit_per_s


def ids(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)


@dataclass
class Plays:
    """Plays known to the features version, one row each: (m,) arrays."""

    user_id: np.ndarray  # int64
    video_id: np.ndarray  # int64
    ts_s: np.ndarray  # float64, seconds since the epoch
    positive: np.ndarray  # bool


def read_plays(fdir: Path) -> Plays:
    """The positive plays of the training span (examples) and every hold-out play (eval)."""
    ex = read_columns(fdir, EXAMPLES, ["user_id", "video_id", "ts"])
    ev = read_columns(fdir, EVAL, ["user_id", "video_id", "ts", "is_positive"])
    return Plays(
        user_id=np.concatenate([ids(ex["user_id"]), ids(ev["user_id"])]),
        video_id=np.concatenate([ids(ex["video_id"]), ids(ev["video_id"])]),
        ts_s=np.concatenate([epoch_s(ex["ts"]), epoch_s(ev["ts"])]),
        positive=np.concatenate(
            [np.ones(ex.num_rows, bool), ev["is_positive"].to_numpy(zero_copy_only=False)]
        ).astype(bool),
    )


def last_played(fdir: Path, plays: Plays, window_start_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(user ids (u,) sorted, last play (u,) float64 epoch seconds) per user who played.

    Users with plays in ``user_features`` but none in examples or eval (only skips or
    short watches) are known to have played inside the window, not when: they get the
    window's start, a lower bound.
    """
    uf = read_columns(fdir, USER_FEATURES, ["user_id", "plays"])
    quiet = ids(uf["user_id"])[np.asarray(uf["plays"].to_numpy(zero_copy_only=False)) > 0]
    users = np.concatenate([plays.user_id, quiet])
    ts = np.concatenate([plays.ts_s, np.full(len(quiet), window_start_s)])
    order = np.lexsort((ts, users))
    users, ts = users[order], ts[order]
    last = np.r_[users[1:] != users[:-1], True] if len(users) else np.zeros(0, bool)
    return users[last], ts[last]


def _flatten_history(t: pa.Table, col: str, row_ts: np.ndarray) -> tuple[np.ndarray, ...]:
    """(user, video, seen_at) for every item of list column ``col``."""
    lists = t[col].combine_chunks()
    parent = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    videos = ids(pc.list_flatten(lists))
    return ids(t["user_id"])[parent], videos, row_ts[parent]


def watched_pairs(fdir: Path, plays: Plays, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """(user ids (p,), video ids (p,)) watched, sorted by user then video; at most the
    ``cap`` most recently seen videos per user (see the module docstring for coverage)."""
    if (fdir / WATCHED).exists():
        w = read_columns(fdir, WATCHED, ["user_id", "video_id", "last_played_at"])
        u, v, t = ids(w["user_id"]), ids(w["video_id"]), epoch_s(w["last_played_at"])
    else:
        ex = read_columns(fdir, EXAMPLES, ["user_id", "ts", "history"])
        hu, hv, ht = _flatten_history(ex, "history", epoch_s(ex["ts"]))
        uf = read_columns(fdir, USER_FEATURES, ["user_id", "recent_history"])
        # recent_history is the end of the training span: as recent as anything known.
        ru, rv, rt = _flatten_history(uf, "recent_history", np.full(uf.num_rows, np.inf))
        u = np.concatenate([plays.user_id, hu, ru])
        v = np.concatenate([plays.video_id, hv, rv])
        t = np.concatenate([plays.ts_s, ht, rt])
    return cap_recent(u, v, t, cap)


def cap_recent(
    u: np.ndarray, v: np.ndarray, t: np.ndarray, cap: int
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, video) pairs, the ``cap`` most recent per user, sorted (user, video)."""
    order = np.lexsort((-t, v, u))  # per (user, video), the latest sighting first
    u, v, t = u[order], v[order], t[order]
    first = np.r_[True, (u[1:] != u[:-1]) | (v[1:] != v[:-1])] if len(u) else np.zeros(0, bool)
    u, v, t = u[first], v[first], t[first]
    order = np.lexsort((v, -t, u))  # per user, most recent first
    u, v = u[order], v[order]
    starts = np.r_[0, np.flatnonzero(u[1:] != u[:-1]) + 1] if len(u) else np.zeros(0, np.int64)
    rank = np.arange(len(u)) - np.repeat(starts, np.diff(np.r_[starts, len(u)]))
    keep = rank < cap
    u, v = u[keep], v[keep]
    order = np.lexsort((v, u))
    return u[order], v[order]


def user_groups(fdir: Path) -> pa.Table:
    """user_id, country, language of every user the features version knows."""
    return read_columns(fdir, USER_FEATURES, ["user_id", "country", "language"])


def trending_inputs(fdir: Path) -> pa.Table:
    """Per-video view counts in the hour and the day before the features window's end."""
    return read_columns(fdir, TRENDING, ["video_id", "views_1h", "views_24h", "viewers_24h"])


def window_of(manifest: dict) -> tuple[dt.datetime, dt.datetime]:
    """(window start, window end) of a features version, as aware UTC datetimes."""
    try:
        start, end = (
            dt.datetime.fromisoformat(manifest[k]) for k in ("window_start", "window_end")
        )
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"features manifest: no valid window_start/window_end ({err})") from None
    return (start.astimezone(dt.UTC), end.astimezone(dt.UTC))
