"""What precompute reads: the feature stage's Parquet output, the model's embeddings, videos.

The feature stage's folder names are spelled here and nowhere else in this package.
Everything is read with pyarrow into NumPy arrays (no Spark, no features code).

The watched set is the feature stage's ``watched`` table: every distinct video each
user played (watches and skips) over the whole window up to the logical date, the
hold-out span included, the ``features.max_watched_per_user`` most recent per user.
It is bounded by the window (30 days by default) and by that cap: a video watched
before the window, or beyond a heavy user's cap, can be recommended again.

The online features are the ``online_user_features`` and ``online_video_features``
tables, computed over the same whole window (the training-span tables stop at the
hold-out boundary, to keep the evaluation clean; serving needs the latest state).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from videorec import artifact_names as names
from videorec.examples import ExamplesError, Resolver, read_examples


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
    """Positive plays known to the features version, one row each: (m,) arrays."""

    user_id: np.ndarray  # int64
    video_id: np.ndarray  # int64
    ts_s: np.ndarray  # float64, seconds since the epoch
    positive: np.ndarray  # bool


def read_plays(fdir: Path, resolve: Resolver | None = None) -> Plays:
    """The positive plays of the training span (examples) and every hold-out play (eval):
    the timestamped plays popular-per-country lists decay by age."""
    try:  # a full pass's examples/ or an incremental version's references
        ex = read_examples(fdir, ["user_id", "video_id", "ts"], resolve)
    except (ExamplesError, OSError, pa.ArrowInvalid) as err:
        raise InputError(f"{fdir}: examples unreadable: {err}") from None
    ev = read_columns(fdir, names.EVAL, ["user_id", "video_id", "ts", "is_positive"])
    return Plays(
        user_id=np.concatenate([ids(ex["user_id"]), ids(ev["user_id"])]),
        video_id=np.concatenate([ids(ex["video_id"]), ids(ev["video_id"])]),
        ts_s=np.concatenate([epoch_s(ex["ts"]), epoch_s(ev["ts"])]),
        positive=np.concatenate(
            [np.ones(ex.num_rows, bool), ev["is_positive"].to_numpy(zero_copy_only=False)]
        ).astype(bool),
    )


@dataclass
class Watched:
    """The watched set: (p,) pairs sorted by (user, video), each pair's last play."""

    user_id: np.ndarray  # int64
    video_id: np.ndarray  # int64
    last_played_s: np.ndarray  # float64, seconds since the epoch

    def last_played_per_user(self) -> tuple[np.ndarray, np.ndarray]:
        """(user ids (u,) sorted, each one's last play (u,) in epoch seconds)."""
        starts = np.r_[0, np.flatnonzero(self.user_id[1:] != self.user_id[:-1]) + 1]
        if not len(self.user_id):
            return self.user_id, self.last_played_s
        return self.user_id[starts], np.maximum.reduceat(self.last_played_s, starts)


def read_watched(fdir: Path) -> Watched:
    """The features version's ``watched`` table, sorted by (user, video)."""
    w = read_columns(fdir, names.WATCHED, ["user_id", "video_id", "last_played_at"])
    u, v, t = ids(w["user_id"]), ids(w["video_id"]), epoch_s(w["last_played_at"])
    order = np.lexsort((v, u))
    return Watched(user_id=u[order], video_id=v[order], last_played_s=t[order])


def user_groups(fdir: Path) -> pa.Table:
    """user_id, country, language of every user the features version knows."""
    return read_columns(fdir, names.ONLINE_USER_FEATURES, ["user_id", "country", "language"])


def trending_inputs(fdir: Path) -> pa.Table:
    """Per-video view counts in the hour and the day before the features window's end."""
    return read_columns(fdir, names.TRENDING, ["video_id", "views_1h", "views_24h", "viewers_24h"])


def window_of(manifest: dict) -> tuple[dt.datetime, dt.datetime]:
    """(window start, window end) of a features version, as aware UTC datetimes."""
    try:
        start, end = (
            dt.datetime.fromisoformat(manifest[k]) for k in ("window_start", "window_end")
        )
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"features manifest: no valid window_start/window_end ({err})") from None
    return (start.astimezone(dt.UTC), end.astimezone(dt.UTC))
