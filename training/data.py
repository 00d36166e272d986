"""From the feature stage's Parquet to the model's tensors, without Python lists per event.

A *row* is a position in a lookup table: row 0 means unknown or padding, row r >= 1
the r-th id in sorted order. Histories become right-aligned (N, history_len) row
matrices built from the Arrow list offsets in one vectorised step.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from videorec.contract import AGE_BUCKETS, with_minimal_users
from videorec.dataset import DIMENSION_TABLES, load_validated
from videorec.examples import ExampleSource, open_examples
from videorec.ids import index_in_sorted
from videorec.training.model import (
    AGE_EDGES_DAYS,
    DURATION_EDGES_S,
    N_HASHES,
    TwoTowerConfig,
    bucketize,
    hash_ids,
    vocab_index,
)

LOG_Q_FLOOR = 1e-7  # sampling probability given to videos never seen in training


def _rows_of(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row of each id in a sorted id array (1-based); 0 where the id is absent."""
    return index_in_sorted(sorted_ids, ids) + 1


def _hashed(ids: np.ndarray, buckets: int) -> np.ndarray:
    """(n, N_HASHES) buckets; padding row 0 stays 0."""
    return np.stack([hash_ids(ids, buckets, s) for s in range(N_HASHES)], axis=1)


def right_aligned(
    lists: pa.ListArray | pa.ChunkedArray, rows_of_values: np.ndarray, width: int
) -> np.ndarray:
    """A list column as an (n, width) int64 matrix, each list's last ``width`` values
    right-aligned and left-padded with 0. ``rows_of_values`` maps the flattened values."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    offsets = lists.offsets.to_numpy()
    lengths = np.diff(offsets)
    n = len(lengths)
    out = np.zeros((n, width), dtype=np.int64)
    keep = np.minimum(lengths, width)
    total = int(keep.sum())
    if total == 0:
        return out
    example = np.repeat(np.arange(n), keep)
    # Position within the kept tail of each list, then its column in the output.
    start_in_list = lengths - keep
    idx_in_tail = np.arange(total) - np.repeat(np.cumsum(keep) - keep, keep)
    src = np.repeat(offsets[:-1] + start_in_list, keep) + idx_in_tail - offsets[0]
    col = np.repeat(width - keep, keep) + idx_in_tail
    out[example, col] = rows_of_values[src]
    return out


@dataclass
class VideoTable:
    """Per-video model inputs; index by row (0 = unknown)."""

    video_ids: np.ndarray  # (V,) sorted
    id_buckets: np.ndarray  # (V+1, N_HASHES)
    category: np.ndarray  # (V+1,)
    channel_buckets: np.ndarray  # (V+1, N_HASHES)
    duration: np.ndarray  # (V+1,)
    age: np.ndarray  # (V+1,)
    text: np.ndarray  # (V+1, text_dim) float32
    log_q: np.ndarray  # (V+1,) log sampling probability in training
    channel_ids: np.ndarray | None = None  # (V+1,) int64 contract channel id, -1 unknown
    id_mask: np.ndarray | None = None  # (V+1,) float32: 1 embed with the id, 0 content mode
    channel_mask: np.ndarray | None = None  # (V+1,) float32: 0 embeds without the channel

    def __post_init__(self) -> None:
        n = len(self.video_ids) + 1
        if self.channel_ids is None:
            self.channel_ids = np.full(n, -1, np.int64)
        if self.id_mask is None:
            self.id_mask = np.ones(n, np.float32)
        if self.channel_mask is None:
            self.channel_mask = np.ones(n, np.float32)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return _rows_of(self.video_ids, np.asarray(ids, dtype=np.int64))

    def content_mode(self, trained_ids: np.ndarray, known_channels: np.ndarray) -> VideoTable:
        """A copy that embeds every video outside ``trained_ids`` (int64 video ids with
        training examples) from its content alone, and drops the channel of every video
        whose channel is outside ``known_channels`` (int64 channel ids seen in training):
        what a model trained with id dropout does for a video it never saw."""
        trained = np.isin(self.video_ids, np.asarray(trained_ids, np.int64))
        known = np.isin(self.channel_ids[1:], np.asarray(known_channels, np.int64))
        return dataclasses.replace(
            self,
            id_mask=np.r_[1.0, trained].astype(np.float32),
            channel_mask=np.r_[1.0, known].astype(np.float32),
        )

    def tensors(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        return {
            "id_mask": torch.as_tensor(self.id_mask, device=device),
            "channel_mask": torch.as_tensor(self.channel_mask, device=device),
            "id_buckets": torch.as_tensor(self.id_buckets, device=device),
            "category": torch.as_tensor(self.category, device=device),
            "channel_buckets": torch.as_tensor(self.channel_buckets, device=device),
            "duration": torch.as_tensor(self.duration, device=device),
            "age": torch.as_tensor(self.age, device=device),
            "text": torch.as_tensor(self.text, device=device),
        }


@dataclass
class UserTable:
    """Per-user static inputs; index by row (0 = unknown user)."""

    user_ids: np.ndarray  # (U,) sorted
    buckets: np.ndarray  # (U+1, N_HASHES)
    country: np.ndarray  # (U+1,)
    language: np.ndarray  # (U+1,)
    age_bucket: np.ndarray  # (U+1,)
    interests: np.ndarray  # (U+1, n_categories) float32, declared interests

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return _rows_of(self.user_ids, np.asarray(ids, dtype=np.int64))


@dataclass
class Examples:
    """N training examples as arrays (rows into the tables).

    ``user_ids`` keeps the raw contract id beside ``user_rows``: a user missing from the
    users table has row 0 (the shared "unknown" row), so anything per user (validation
    boundaries) must be looked up by id, not by row.
    """

    user_ids: np.ndarray  # (N,) int64 contract user ids
    user_rows: np.ndarray  # (N,) rows into the users table, 0 = not in the table
    history: np.ndarray  # (N, L) video rows, right-aligned
    label_rows: np.ndarray  # (N,) video rows
    weights: np.ndarray  # (N,) float32
    device: np.ndarray  # (N,)
    hour: np.ndarray  # (N,) 1..24, 0 unknown
    country: np.ndarray  # (N,)
    example_age: np.ndarray  # (N,) float32 days
    ts: np.ndarray  # (N,) int64 microseconds
    # (N,) int32: the shard (Parquet row group, see ``training/stream.py``) each example
    # was read from, in the order of :func:`example_shards`; None when not read from one.
    shard: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.label_rows)

    def subset(self, idx: np.ndarray) -> Examples:
        """The examples at positions ``idx`` (an int array or a boolean mask), in that order."""
        return Examples(**{k: None if v is None else v[idx] for k, v in self.__dict__.items()})

    @staticmethod
    def concat(parts: list[Examples]) -> Examples:
        """The examples of ``parts`` one after the other (at least one part)."""
        keys = parts[0].__dict__
        return Examples(
            **{
                k: None if keys[k] is None else np.concatenate([getattr(p, k) for p in parts])
                for k in keys
            }
        )


def trained_vocabulary(ex: Examples, videos: VideoTable) -> tuple[np.ndarray, np.ndarray]:
    """(video ids, channel ids), sorted int64: the videos that are the label of at least
    one example in ``ex`` and their channels, i.e. whose id and channel embeddings the
    candidate tower trained on. Everything else is embedded in content mode.

    ``ex`` may also be an :class:`~videorec.training.stream.ExampleStream` (its streamed
    label counts are used)."""
    if hasattr(ex, "label_counts"):
        rows = np.flatnonzero(ex.label_counts()[1:]) + 1
    else:
        rows = np.unique(ex.label_rows[ex.label_rows > 0])
    channels = np.unique(videos.channel_ids[rows])
    return videos.video_ids[rows - 1], channels[channels >= 0]


def sampling_log_q(label_rows: np.ndarray, n_videos: int) -> np.ndarray:
    """(n_videos + 1,) float32 log sampling probability: each video row's share of the
    examples ``label_rows`` (N,), the same definition as the feature stage's
    ``sampling_prob`` (example count / all examples), for an arbitrary subset of them.

    Videos with no example get ``log(LOG_Q_FLOOR)``; row 0 (unknown) keeps 0 as in
    :func:`video_table`.
    """
    counts = np.bincount(np.asarray(label_rows, np.int64), minlength=n_videos + 1)
    return log_q_from_counts(counts)


def log_q_from_counts(counts: np.ndarray) -> np.ndarray:
    """(V + 1,) float32 log sampling probability from (V + 1,) example counts per video
    row (row 0 = unknown, counted among the examples but given 0): what
    :func:`sampling_log_q` computes from the label rows, from a streamed count instead."""
    counts = np.asarray(counts, np.int64)
    prob = counts[1:] / max(int(counts.sum()), 1)
    out = np.zeros(len(counts), dtype=np.float32)
    out[1:] = np.log(np.where(prob > 0, prob, LOG_Q_FLOOR))
    return out


def _strings(col: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(col.to_pylist(), dtype=object)


def build_vocab(values: np.ndarray) -> list[str]:
    """Sorted distinct non-null strings."""
    return sorted({v for v in values if isinstance(v, str) and v})


def video_table(
    videos: pa.Table,
    video_features: pa.Table | None,
    cfg: TwoTowerConfig,
    text: np.ndarray | None,
    as_of: dt.datetime,
) -> VideoTable:
    """The table for every catalogue video. ``video_features`` gives sampling_prob
    (from the feature stage); ``text`` (V, text_dim) is aligned with ``videos`` rows."""
    order = np.argsort(videos["video_id"].to_numpy(), kind="stable")
    v = videos.take(pa.array(order))
    ids = v["video_id"].to_numpy()
    n = len(ids)

    def pad(a: np.ndarray) -> np.ndarray:
        return np.concatenate([np.zeros((1, *a.shape[1:]), dtype=a.dtype), a])

    cat = vocab_index(_strings(v["category"]), cfg.categories)
    ch = v["channel_id"].to_numpy(zero_copy_only=False)
    ch_b = np.where(
        np.isnan(ch.astype(float))[:, None],
        0,
        _hashed(np.nan_to_num(ch).astype(np.int64), cfg.channel_buckets),
    )
    dur = bucketize(v["duration_s"].to_numpy(zero_copy_only=False).astype(float), DURATION_EDGES_S)
    pub = pc.cast(v["published_at"], pa.int64()).to_numpy(zero_copy_only=False).astype(float)
    age_days = (as_of.timestamp() * 1e6 - pub) / 86_400e6
    age = bucketize(np.maximum(age_days, 0), AGE_EDGES_DAYS)
    tx = np.zeros((n, cfg.text_dim), dtype=np.float32)
    if text is not None and cfg.text_dim:
        tx = text[order]
    log_q = np.full(n, np.log(LOG_Q_FLOOR), dtype=np.float32)
    if video_features is not None:
        vf_ids = video_features["video_id"].to_numpy()
        prob = video_features["sampling_prob"].to_numpy(zero_copy_only=False).astype(float)
        r = _rows_of(ids, vf_ids)
        ok = (r > 0) & (prob > 0)
        log_q[r[ok] - 1] = np.log(prob[ok])
    return VideoTable(
        video_ids=ids,
        id_buckets=pad(_hashed(ids, cfg.video_buckets)),
        category=pad(cat),
        channel_buckets=pad(ch_b.astype(np.int64)),
        duration=pad(dur),
        age=pad(age),
        text=pad(tx),
        log_q=pad(log_q),
        channel_ids=pad(
            np.where(np.isnan(ch.astype(float)), -1, np.nan_to_num(ch)).astype(np.int64)
        ),
    )


def user_table(users: pa.Table, cfg: TwoTowerConfig) -> UserTable:
    """The table for every user in the users dimension."""
    order = np.argsort(users["user_id"].to_numpy(), kind="stable")
    u = users.take(pa.array(order))
    ids = u["user_id"].to_numpy()

    def pad(a: np.ndarray) -> np.ndarray:
        return np.concatenate([np.zeros((1, *a.shape[1:]), dtype=a.dtype), a])

    interests = np.zeros((len(ids), len(cfg.categories)), dtype=np.float32)
    lookup = {c: i for i, c in enumerate(cfg.categories)}
    for i, declared in enumerate(u["declared_interests"].to_pylist()):
        idx = [lookup[c] for c in declared or [] if c in lookup]
        if idx:
            interests[i, idx] = 1.0 / len(idx)
    return UserTable(
        user_ids=ids,
        buckets=pad(_hashed(ids, cfg.user_buckets)),
        country=pad(vocab_index(_strings(u["country"]), cfg.countries)),
        language=pad(vocab_index(_strings(u["language"]), cfg.languages)),
        age_bucket=pad(vocab_index(_strings(u["age_bucket"]), cfg.age_buckets)),
        interests=pad(interests),
    )


# What the training task reads of the feature stage's examples/.
EXAMPLE_COLUMNS = (
    "user_id", "video_id", "history", "weight", "device", "hour", "country",
    "example_age_days", "ts",
)  # fmt: skip
# The examples' string columns whose distinct values the vocabularies take.
VOCAB_COLUMNS = ("device", "country")


def examples_from_table(
    t: pa.Table, videos: VideoTable, users: UserTable, cfg: TwoTowerConfig
) -> Examples:
    """Rows of the feature stage's ``examples/`` (:data:`EXAMPLE_COLUMNS`) as arrays."""
    hist_values = t["history"].combine_chunks().values.to_numpy(zero_copy_only=False)
    history = right_aligned(t["history"], videos.rows(hist_values), cfg.history_len)
    hour = t["hour"].to_numpy(zero_copy_only=False)
    user_ids = t["user_id"].to_numpy().astype(np.int64, copy=False)
    return Examples(
        user_ids=user_ids,
        user_rows=users.rows(user_ids),
        history=history,
        label_rows=videos.rows(t["video_id"].to_numpy()),
        weights=t["weight"].to_numpy(zero_copy_only=False).astype(np.float32),
        device=vocab_index(_strings(t["device"]), cfg.devices),
        hour=np.where(np.isnan(hour.astype(float)), 0, hour + 1).astype(np.int64),
        country=vocab_index(_strings(t["country"]), cfg.countries),
        example_age=t["example_age_days"].to_numpy(zero_copy_only=False).astype(np.float32),
        ts=pc.cast(t["ts"], pa.int64()).to_numpy(zero_copy_only=False),
    )


@dataclass(frozen=True)
class ExampleShards:
    """The layout of a features version's examples: one shard per Parquet row group of
    its files (:class:`~videorec.examples.ExampleSource`).

    Files are in the order the source lists them (for an ``examples/`` table, the order
    ``pq.read_table`` concatenates them in), row groups in file order: the shards one
    after the other are the whole table. A table's counts come from its footers;
    examples by reference are counted in one pass over their key columns.
    """

    source: ExampleSource
    file_index: np.ndarray  # (S,) int64: the file of each shard
    row_group: np.ndarray  # (S,) int64: its row group within that file
    rows: np.ndarray  # (S,) int64: its examples

    @property
    def files(self) -> tuple[str, ...]:
        return self.source.files

    def __len__(self) -> int:
        return len(self.rows)


def example_shards(examples: Path | ExampleSource) -> ExampleShards:
    """The shards of a features version's examples (``examples`` a version folder, an
    ``examples/`` folder, or an opened source)."""
    src = examples if isinstance(examples, ExampleSource) else open_examples(examples)
    if src.by_reference:  # counted by the rule: one pass over the key columns
        return scan_examples(src, []).shards
    f_idx, rg, rows = [], [], []
    for i in range(len(src.files)):
        for g, stored in enumerate(src.row_groups(i)):
            f_idx.append(i)
            rg.append(g)
            rows.append(stored)
    return _shards(src, f_idx, rg, rows)


def _shards(src: ExampleSource, f_idx: list[int], rg: list[int], rows: list[int]) -> ExampleShards:
    as_int = lambda a: np.asarray(a, dtype=np.int64)  # noqa: E731
    return ExampleShards(src, as_int(f_idx), as_int(rg), as_int(rows))


@dataclass(frozen=True)
class ScannedExamples:
    """What one pass over a features version's examples gives a training run: their
    shards with counts, the ``columns`` read (every example, in shard order) and the
    distinct :data:`VOCAB_COLUMNS` values the model's vocabularies need."""

    shards: ExampleShards
    table: pa.Table  # (N examples) x the columns asked for
    values: dict[str, set[str]]  # VOCAB_COLUMNS -> distinct non-null values


def scan_examples(
    examples: Path | ExampleSource, columns: list[str] | tuple[str, ...] = EXAMPLE_COLUMNS
) -> ScannedExamples:
    """One pass over the examples for everything a run needs before its first epoch:
    by reference, every pass re-applies the rule to each watch play of the training
    days, so one scan replaces four (``bench/training_reads.py``). Streamed runs ask
    for the split's key columns alone."""
    src = examples if isinstance(examples, ExampleSource) else open_examples(examples)
    scan = src.scan(columns, VOCAB_COLUMNS)
    f_idx = [i for i, _, _ in scan.row_groups]
    rg = [g for _, g, _ in scan.row_groups]
    rows = [n for _, _, n in scan.row_groups]
    return ScannedExamples(_shards(src, f_idx, rg, rows), scan.table, scan.distinct)


def load_examples(
    examples: Path | ExampleSource | ScannedExamples,
    videos: VideoTable,
    users: UserTable,
    cfg: TwoTowerConfig,
) -> Examples:
    """A features version's examples as arrays, all in memory, each example tagged with
    its shard (:func:`example_shards`) so that the shard-and-buffer order of
    ``training/stream.py`` can be applied to it."""
    scanned = examples if isinstance(examples, ScannedExamples) else scan_examples(examples)
    t, shards = scanned.table, scanned.shards
    missing = [c for c in EXAMPLE_COLUMNS if c not in t.column_names]
    if missing:
        raise ValueError(f"the scanned examples lack {missing}: scan EXAMPLE_COLUMNS to train")
    ex = examples_from_table(t, videos, users, cfg)
    ex.shard = np.repeat(np.arange(len(shards), dtype=np.int32), shards.rows)
    return ex


def query_inputs(
    user_rows: np.ndarray,
    history: np.ndarray,
    users: UserTable,
    device: torch.device | str,
    *,
    device_idx: np.ndarray | None = None,
    hour: np.ndarray | None = None,
    country: np.ndarray | None = None,
    example_age: np.ndarray | None = None,
) -> dict[str, torch.Tensor]:
    """The query tower's input dict for a batch. Context not given is 'unknown' (0), the
    country falls back to the user's own, and example age to 0 (serving time)."""
    n = len(user_rows)
    zeros = np.zeros(n, dtype=np.int64)
    ctry = (
        users.country[user_rows]
        if country is None
        else np.where(country > 0, country, users.country[user_rows])
    )

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, device=device)

    return {
        "history": t(history),
        "user_buckets": t(users.buckets[user_rows]),
        "country": t(ctry),
        "language": t(users.language[user_rows]),
        "age_bucket": t(users.age_bucket[user_rows]),
        "interests": t(users.interests[user_rows]),
        "device": t(zeros if device_idx is None else device_idx),
        "hour": t(zeros if hour is None else hour),
        "example_age": t(np.zeros(n, np.float32) if example_age is None else example_age),
    }


def load_dimensions(
    data_dir: str, event_user_ids: np.ndarray | None = None
) -> tuple[pa.Table, pa.Table]:
    """Contract-valid videos and users of a data set, validated as the feature stage does.

    Videos whose channel is unknown are left out (the feature stage quarantined them
    and their events). Users seen in ``event_user_ids`` (the examples' users) but
    missing from the users table get a minimal row of their own, as in the feature
    stage, instead of sharing row 0 with every other unknown user.
    """
    vd = load_validated(data_dir, max_invalid_share=1.0, tables=DIMENSION_TABLES, check=False)
    users = vd.tables["users"]
    if event_user_ids is not None:
        users = with_minimal_users(users, event_user_ids)
    return vd.tables["videos"], users


def vocabularies(
    videos: pa.Table, users: pa.Table, examples: Path | ExampleSource | ScannedExamples
) -> dict[str, list[str]]:
    """The categorical vocabularies the model config records."""
    if isinstance(examples, ScannedExamples):
        seen = examples.values
    else:  # memory bounded by the distinct values, not the examples
        seen = scan_examples(examples, []).values
    return {
        "categories": build_vocab(_strings(videos["category"])),
        "countries": build_vocab(
            np.concatenate([_strings(users["country"]), np.array(list(seen["country"]), object)])
        ),
        "languages": build_vocab(_strings(users["language"])),
        "devices": build_vocab(np.array(list(seen["device"]), dtype=object)),
        "age_buckets": list(AGE_BUCKETS),
    }
