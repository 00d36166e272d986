"""Interactions, temporal hold-outs and item metadata: what every recommender is judged on.

An *interaction* is a ``watch`` event (a play; on MovieLens, one per rating). Skips,
likes and the other reactions are signals a model may use, never extra interactions.

:class:`Interactions` is the training side that every :class:`~videorec.evaluation.
recommenders.Recommender` fits on: sorted user and video ids (the row and column index
maps), a binary CSR user × item matrix, and every training event (row, column, time)
in time order, so a sequence model can rebuild each user's history.

:class:`EvalSplit` pairs it with a :class:`HeldOut` (the hold-out the model must rank)
and the catalogue's :class:`ItemMeta`. The catalogue is the set of videos seen in
training: a model cannot rank a video it has never seen, but held-out videos outside
the catalogue still count in each user's number of held-out items (they are misses).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import scipy.sparse as sp

from videorec.config import ContractConfig
from videorec.dataset import DatasetError, load_validated, read_manifest
from videorec.examples import KEY_COLUMNS, ExamplesError, Resolver, read_examples
from videorec.ids import index_in_sorted as _index

PER_USER_TEMPORAL = "per-user-temporal"
SPLITS: tuple[str, ...] = (PER_USER_TEMPORAL,)
DEFAULT_HOLDOUT_FRACTION = 0.2
INTERACTION_EVENT = "watch"
_NULL_TS = np.iinfo(np.int64).min  # "unknown time" in int64 microsecond arrays


@dataclass(frozen=True, eq=False)
class Events:
    """Interaction events as parallel arrays, each of shape (n_events,).

    ``user_id`` and ``video_id`` are int64 contract ids; ``ts`` is int64 UTC
    microseconds since the epoch.
    """

    user_id: np.ndarray
    video_id: np.ndarray
    ts: np.ndarray

    @classmethod
    def from_table(cls, table: pa.Table) -> Events:
        """Events from an Arrow table with ``user_id``, ``video_id`` and ``ts`` columns."""
        return cls(
            table["user_id"].to_numpy().astype(np.int64, copy=False),
            table["video_id"].to_numpy().astype(np.int64, copy=False),
            _ts_us(table["ts"]),
        )

    def take(self, mask_or_idx: np.ndarray) -> Events:
        """The subset selected by a boolean mask or an index array."""
        return Events(self.user_id[mask_or_idx], self.video_id[mask_or_idx], self.ts[mask_or_idx])

    def __len__(self) -> int:
        return len(self.user_id)


def _ts_us(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A timestamp column as int64 microseconds (nulls become ``_NULL_TS``)."""
    if pa.types.is_timestamp(col.type):
        col = pc.cast(col, pa.timestamp("us", tz="UTC")) if col.type.unit != "us" else col
        col = col.cast(pa.int64())
    return pc.fill_null(col, _NULL_TS).to_numpy().astype(np.int64, copy=False)


@dataclass(frozen=True, eq=False)
class Interactions:
    """Training interactions: id maps, a binary user × item CSR matrix, time-ordered events.

    - ``user_ids`` (n_users,) int64, sorted and unique: row ``r`` is user ``user_ids[r]``.
    - ``item_ids`` (n_items,) int64 video ids, sorted and unique: column ``c`` is video
      ``item_ids[c]``. These are the catalogue a model ranks.
    - ``matrix`` (n_users, n_items) float32 CSR, 1.0 where the user watched the video at
      least once (repeat watches collapse; the events keep them).
    - ``event_rows``, ``event_cols`` (n_events,) int32 and ``event_ts`` (n_events,) int64
      UTC microseconds: every interaction, sorted by (row, ts, video id), so user ``r``'s
      time-ordered history is ``event_cols[history_indptr[r]:history_indptr[r + 1]]``.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    matrix: sp.csr_matrix
    event_rows: np.ndarray
    event_cols: np.ndarray
    event_ts: np.ndarray

    @classmethod
    def from_events(cls, events: Events, *, user_ids: np.ndarray | None = None) -> Interactions:
        """Build from interaction events; the catalogue is every video in ``events``.

        ``user_ids`` (optional, int64) adds rows for users without events (empty rows);
        it must contain every user in ``events``.
        """
        users = np.unique(events.user_id if user_ids is None else user_ids).astype(np.int64)
        items = np.unique(events.video_id).astype(np.int64)
        rows = _index(users, events.user_id)
        if (rows < 0).any():
            raise ValueError("user_ids must contain every user that has events")
        cols = _index(items, events.video_id)
        order = np.lexsort((events.video_id, events.ts, rows))
        rows, cols, ts = (
            rows[order].astype(np.int32),
            cols[order].astype(np.int32),
            events.ts[order],
        )
        data = np.ones(len(rows), dtype=np.float32)
        m = sp.csr_matrix((data, (rows, cols)), shape=(len(users), len(items)))
        m.sum_duplicates()
        m.data[:] = 1.0  # binary: a repeat watch is not a stronger preference here
        return cls(users, items, m, rows, cols, ts.astype(np.int64))

    @property
    def n_users(self) -> int:
        """Number of users (rows)."""
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        """Number of catalogue videos (columns)."""
        return len(self.item_ids)

    @property
    def n_events(self) -> int:
        """Number of interaction events (repeat watches included)."""
        return len(self.event_rows)

    def user_rows(self, user_ids: np.ndarray) -> np.ndarray:
        """Row index of each user id, (n,) int64; -1 for users not in the set."""
        return _index(self.user_ids, user_ids)

    def item_cols(self, video_ids: np.ndarray) -> np.ndarray:
        """Column index of each video id, (n,) int64; -1 for videos outside the catalogue."""
        return _index(self.item_ids, video_ids)

    @cached_property
    def history_indptr(self) -> np.ndarray:
        """(n_users + 1,) int64 offsets of each user's events in the ``event_*`` arrays."""
        counts = np.bincount(self.event_rows, minlength=self.n_users)
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    @cached_property
    def item_popularity(self) -> np.ndarray:
        """(n_items,) int64: number of distinct training users of each video."""
        return np.bincount(self.matrix.indices, minlength=self.n_items).astype(np.int64)

    def recency_positions(self) -> sp.csr_matrix:
        """(n_users, n_items) CSR of each watched item's position from the end of the history.

        The history is the user's distinct videos ordered by their *last* watch (ties by
        video id); the most recent video has position 0. Stored as position + 1 so that
        position 0 is not an implicit zero; subtract 1 from ``.data``.
        """
        # Events are sorted by (row, ts, id); keep each (row, col)'s last occurrence.
        key = self.event_rows.astype(np.int64) * self.n_items + self.event_cols
        last = np.ones(len(key), dtype=bool)
        if len(key):
            rev_unique = np.unique(key[::-1], return_index=True)[1]
            last[:] = False
            last[len(key) - 1 - rev_unique] = True
        rows, cols = self.event_rows[last], self.event_cols[last]
        # A subsequence of (row, ts, id)-sorted events is still in that order.
        counts = np.bincount(rows, minlength=self.n_users)
        starts = np.concatenate([[0], np.cumsum(counts)])
        rank = np.arange(len(rows)) - starts[rows]  # 0 = oldest
        pos_from_end = counts[rows] - 1 - rank
        return sp.csr_matrix(
            ((pos_from_end + 1).astype(np.float64), (rows, cols)),
            shape=(self.n_users, self.n_items),
        )

    def events(self) -> Events:
        """The training events with contract ids, in (user, ts, video) order."""
        return Events(self.user_ids[self.event_rows], self.item_ids[self.event_cols], self.event_ts)


@dataclass(frozen=True, eq=False)
class HeldOut:
    """The hold-out of the evaluated users, aligned with a training :class:`Interactions`.

    - ``rows`` (n_eval,) int64: training rows of the users evaluated (those with at least
      one held-out video they had not watched in training, and a training history).
    - ``relevant`` (n_eval, n_items) float32 CSR: held-out videos inside the catalogue.
    - ``n_relevant`` (n_eval,) int64: the user's number of distinct held-out videos,
      *including* those outside the catalogue (the recall denominator).
    - ``serve_ts`` (n_eval,) int64 UTC microseconds: the user's first held-out event, when
      the list would have been served (freshness metrics are measured at this time).
    """

    rows: np.ndarray
    relevant: sp.csr_matrix
    n_relevant: np.ndarray
    serve_ts: np.ndarray

    @property
    def n_users(self) -> int:
        """Number of evaluated users."""
        return len(self.rows)


@dataclass(frozen=True, eq=False)
class ItemMeta:
    """Catalogue metadata aligned with ``Interactions.item_ids`` (all arrays (n_items,)).

    ``channel`` and ``category`` are int32 codes (-1 = unknown); ``published_us`` and
    ``channel_created_us`` are int64 UTC microseconds (``_NULL_TS`` = unknown). A field
    the source lacks entirely (MovieLens has no channels) makes the metric that needs
    it null rather than a guess. ``window_start_us`` is the first event of the data.
    """

    channel: np.ndarray
    category: np.ndarray
    published_us: np.ndarray
    channel_created_us: np.ndarray
    window_start_us: int

    @classmethod
    def unknown(cls, n_items: int, window_start_us: int = _NULL_TS) -> ItemMeta:
        """Metadata where every field is unknown."""
        codes = np.full(n_items, -1, dtype=np.int32)
        times = np.full(n_items, _NULL_TS, dtype=np.int64)
        return cls(codes, codes.copy(), times, times.copy(), window_start_us)

    @classmethod
    def from_tables(
        cls,
        item_ids: np.ndarray,
        videos: pa.Table | None,
        channels: pa.Table | None,
        window_start_us: int,
    ) -> ItemMeta:
        """Align ``videos`` (video_id, category, channel_id, published_at) and ``channels``
        (channel_id, created_at) with the catalogue ``item_ids``."""
        meta = cls.unknown(len(item_ids), window_start_us)
        if videos is None or videos.num_rows == 0:
            return meta
        vid = videos["video_id"].to_numpy().astype(np.int64)
        pos = _index(np.asarray(item_ids, np.int64), vid)
        ok = pos >= 0
        p = pos[ok]
        if "category" in videos.column_names:
            cat = pc.dictionary_encode(videos["category"].combine_chunks())
            codes = pc.fill_null(cat.indices, -1).to_numpy().astype(np.int32)
            meta.category[p] = codes[ok]
        if "published_at" in videos.column_names:
            meta.published_us[p] = _ts_us(videos["published_at"])[ok]
        if "channel_id" in videos.column_names:
            ch = pc.fill_null(videos["channel_id"], -1).to_numpy().astype(np.int64)
            ch_ids = np.unique(ch[ch >= 0])
            ch_code = np.where(ch >= 0, _index(ch_ids, ch), -1).astype(np.int32)
            meta.channel[p] = ch_code[ok]
            if channels is not None and channels.num_rows and len(ch_ids):
                created = np.full(len(ch_ids), _NULL_TS, dtype=np.int64)
                cpos = _index(ch_ids, channels["channel_id"].to_numpy().astype(np.int64))
                cts = _ts_us(channels["created_at"])
                created[cpos[cpos >= 0]] = cts[cpos >= 0]
                has = meta.channel >= 0
                meta.channel_created_us[has] = created[meta.channel[has]]
        return meta

    def take(self, cols: np.ndarray) -> ItemMeta:
        """Metadata re-aligned to a sub-catalogue given by column indices of this one."""
        return ItemMeta(
            self.channel[cols],
            self.category[cols],
            self.published_us[cols],
            self.channel_created_us[cols],
            self.window_start_us,
        )


@dataclass(frozen=True, eq=False)
class EvalSplit:
    """A training set, its hold-out and catalogue metadata, plus how they were made.

    ``protocol`` describes the split (JSON-able); ``stats`` counts users and events, and
    what was left out of the evaluation and why.
    """

    train: Interactions
    test: HeldOut
    items: ItemMeta
    protocol: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def validation(self) -> EvalSplit:
        """A validation split carved out of ``train`` the same way the test was made.

        The last ``holdout_fraction`` of each user's training interactions (by time, ties
        by video id) become the validation hold-out; hyper-parameters are tuned on it
        and never on the test split.
        """
        fraction = float(self.protocol.get("holdout_fraction", DEFAULT_HOLDOUT_FRACTION))
        ev = self.train.events()
        held = per_user_temporal_holdout(ev, fraction)
        train_ev, test_ev = ev.take(~held), ev.take(held)
        sub = build_split(
            train_ev,
            test_ev,
            items=None,
            protocol={**self.protocol, "carved_from": "train", "role": "validation"},
        )
        cols = self.train.item_cols(sub.train.item_ids)
        return EvalSplit(sub.train, sub.test, self.items.take(cols), sub.protocol, sub.stats)


def per_user_temporal_holdout(events: Events, fraction: float) -> np.ndarray:
    """Boolean mask (n_events,): each user's last ``max(1, floor(fraction·n))`` events.

    Events are ordered by time with ties broken by video id (the same order as the
    feature stage's per-user split), so the result does not depend on input order.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1); got {fraction}")
    n = len(events)
    if n == 0:
        return np.zeros(0, dtype=bool)
    order = np.lexsort((events.video_id, events.ts, events.user_id))
    users = events.user_id[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    counts = np.diff(np.r_[starts, n])
    # floor(n * fraction) in float64, exactly as the Spark feature stage computes it.
    n_held = np.maximum(1, np.floor(counts * fraction).astype(np.int64))
    rank = np.arange(n) - np.repeat(starts, counts)
    held_sorted = rank >= np.repeat(counts - n_held, counts)
    held = np.empty(n, dtype=bool)
    held[order] = held_sorted
    return held


def build_split(
    train_events: Events,
    test_events: Events,
    *,
    items: ItemMeta | None,
    protocol: dict[str, Any],
) -> EvalSplit:
    """Build an :class:`EvalSplit` from training and hold-out interaction events.

    Evaluated users have a training history and at least one held-out video they did
    not already watch in training (re-watches are dropped from the hold-out: training
    videos are never recommended, so they could only ever be misses). Users with a
    hold-out but no training history (cold start) are counted in ``stats`` and left
    out. ``items`` must be aligned with the catalogue (the training videos); None means
    unknown metadata.
    """
    test_users = np.unique(test_events.user_id)
    train = Interactions.from_events(train_events)
    rows = train.user_rows(test_events.user_id)
    warm = rows >= 0
    cols = train.item_cols(test_events.video_id)
    # Distinct (user, video) pairs of the hold-out; the earliest event gives serve time.
    key_user, key_video = test_events.user_id, test_events.video_id
    order = np.lexsort((test_events.ts, key_video, key_user))
    u_s, v_s = key_user[order], key_video[order]
    first = np.r_[True, (u_s[1:] != u_s[:-1]) | (v_s[1:] != v_s[:-1])]
    pair_idx = order[first]
    # Re-watches: the (row, col) pair is already in the training matrix.
    p_rows, p_cols = rows[pair_idx], cols[pair_idx]
    in_cat = (p_rows >= 0) & (p_cols >= 0)
    seen = np.zeros(len(pair_idx), dtype=bool)
    if in_cat.any():
        m = train.matrix
        seen[in_cat] = np.asarray(m[p_rows[in_cat], p_cols[in_cat]]).ravel() > 0
    keep = (p_rows >= 0) & ~seen
    k_rows, k_cols = p_rows[keep], p_cols[keep]
    eval_rows, inv = np.unique(k_rows, return_inverse=True)
    n_relevant = np.bincount(inv, minlength=len(eval_rows)).astype(np.int64)
    kc = k_cols >= 0
    relevant = sp.csr_matrix(
        (np.ones(int(kc.sum()), np.float32), (inv[kc], k_cols[kc])),
        shape=(len(eval_rows), train.n_items),
    )
    serve = np.full(train.n_users, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(serve, rows[warm], test_events.ts[warm])
    held = HeldOut(eval_rows.astype(np.int64), relevant, n_relevant, serve[eval_rows])
    stats = {
        "train_users": train.n_users,
        "train_items": train.n_items,
        "train_interactions": train.n_events,
        "train_pairs": int(train.matrix.nnz),
        "heldout_users": len(test_users),
        "heldout_interactions": len(test_events),
        "evaluated_users": held.n_users,
        "evaluated_heldout_items": int(n_relevant.sum()),
        "heldout_items_outside_catalogue": int((~kc).sum()),
        "cold_start_users_left_out": len(np.unique(test_events.user_id[~warm])),
        "rewatch_pairs_dropped": int(seen.sum()),
        "users_left_with_only_rewatches": int(len(np.unique(p_rows[p_rows >= 0])) - held.n_users),
    }
    meta = items if items is not None else ItemMeta.unknown(train.n_items)
    return EvalSplit(train, held, meta, dict(protocol), stats)


def _window_start(events: Events) -> int:
    return int(events.ts.min()) if len(events) else _NULL_TS


def _dimension_tables(data: str | os.PathLike[str]) -> tuple[pa.Table | None, pa.Table | None]:
    from videorec.dataset import read_table

    videos = read_table(data, "videos")
    channels = read_table(data, "channels")
    return videos, channels if channels.num_rows else None


def split_from_dataset(
    data: str | os.PathLike[str],
    *,
    split: str = PER_USER_TEMPORAL,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    max_invalid_share: float = 0.05,
    limits: ContractConfig | None = None,
) -> EvalSplit:
    """Build the temporal split straight from a data set directory's contract tables.

    Reads ``watch_events`` through the contract's validator (bad rows are left out;
    more than ``max_invalid_share`` bad rows is a ContractViolation; ``limits`` is the
    config's ``contract`` section, None for its defaults) and keeps the
    ``watch`` events as interactions. ``split`` is ``"per-user-temporal"``: each user's
    last ``holdout_fraction`` of interactions by time (ties by video id) are held out.
    Raises DatasetError if ``data`` is not a data set, ValueError for an unknown split.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    manifest = read_manifest(data)
    loaded = load_validated(
        data,
        max_invalid_share=max_invalid_share,
        tables=("watch_events", "videos", "channels"),
        limits=limits,
    )
    ev = loaded.tables["watch_events"]
    ev = ev.filter(pc.equal(ev["event_type"], INTERACTION_EVENT))
    events = Events.from_table(ev)
    if len(events) == 0:
        raise DatasetError(f"{data}: no watch events; there is nothing to evaluate")
    held = per_user_temporal_holdout(events, holdout_fraction)
    protocol = {
        "source": str(data),
        "dataset": manifest.get("source", "unknown"),
        "split": split,
        "holdout_fraction": holdout_fraction,
        "interactions": "watch events",
        "tie_break": "time, then video id",
    }
    out = build_split(events.take(~held), events.take(held), items=None, protocol=protocol)
    channels = loaded.tables.get("channels")
    meta = ItemMeta.from_tables(
        out.train.item_ids,
        loaded.tables["videos"],
        channels if channels is not None and channels.num_rows else None,
        _window_start(events),
    )
    return EvalSplit(out.train, out.test, meta, out.protocol, out.stats)


def _read_parquet_dir(path: Path, columns: list[str]) -> pa.Table:
    if not path.exists():
        raise DatasetError(f"{path}: missing; a feature-stage version has examples/ and eval/")
    table = pads.dataset(str(path), format="parquet").to_table()
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DatasetError(f"{path}: columns {missing} are missing")
    return table.select(columns)


def split_from_features(
    version_dir: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str] | None = None,
    resolve: Resolver | None = None,
    train_examples: pa.Table | None = None,
) -> EvalSplit:
    """The split a feature-stage version made: ``examples/`` for training, ``eval/`` to test.

    Training interactions are the version's training examples (positive watches, at most
    ``features.max_examples_per_user`` per user); the hold-out is the ``watch`` plays of
    ``eval/``. Catalogue metadata comes from ``data`` if given, else from the data set
    the version was built from (its manifest's ``data``) when it can be read, else from
    ``video_features/`` (no channel creation times then). ``train_examples`` (with
    ``user_id``, ``video_id``, ``ts``) are the version's examples when the caller has
    read them already (a training run's one pass), else they are read here.
    """
    import json

    root = Path(version_dir)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; expected a feature-stage version folder")
    manifest: dict[str, Any] = {}
    if (root / "_manifest.json").is_file():
        manifest = json.loads((root / "_manifest.json").read_text())
    keys = list(KEY_COLUMNS)
    try:  # a full pass's examples/ or an incremental version's references
        train_t = (
            read_examples(root, keys, resolve)
            if train_examples is None
            else train_examples.select(keys)
        )
    except ExamplesError as err:
        raise DatasetError(str(err)) from None
    except KeyError as err:
        raise DatasetError(f"train_examples lack a column {err}; they need {keys}") from None
    eval_t = _read_parquet_dir(root / "eval", ["user_id", "video_id", "ts", "event_type"])
    eval_t = eval_t.filter(pc.equal(eval_t["event_type"], INTERACTION_EVENT))
    train_ev, test_ev = Events.from_table(train_t), Events.from_table(eval_t)
    if len(train_ev) == 0 or len(test_ev) == 0:
        raise DatasetError(f"{root}: examples/ or eval/ holds no watch interactions")
    fraction = manifest.get("features_config", {}).get("eval_fraction", DEFAULT_HOLDOUT_FRACTION)
    protocol = {
        "source": str(root),
        "dataset": manifest.get("data_manifest", {}).get("source", "unknown"),
        "split": f"features:{manifest.get('split', 'unknown')}",
        "holdout_fraction": fraction,
        "interactions": "training examples (positive watches) / hold-out watch plays",
        "features_version": manifest.get("features_version") or root.name,
    }
    out = build_split(train_ev, test_ev, items=None, protocol=protocol)
    start = min(_window_start(train_ev), _window_start(test_ev))
    videos = channels = None
    src = data or manifest.get("data")
    if src is not None:
        try:
            videos, channels = _dimension_tables(src)
        except (DatasetError, OSError):
            if data is not None:
                raise
    if videos is None and (root / "video_features").exists():
        videos = pads.dataset(str(root / "video_features"), format="parquet").to_table()
    meta = ItemMeta.from_tables(out.train.item_ids, videos, channels, start)
    return EvalSplit(out.train, out.test, meta, out.protocol, out.stats)
