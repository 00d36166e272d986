"""Training examples in bounded memory: shards, a seeded shard-and-buffer shuffle, batches.

A *shard* is one Parquet row group of the files that hold a features version's
examples, its ``examples/`` table or the day files its examples reference
(:func:`~videorec.training.data.example_shards`). :class:`ExampleStream` reads the
examples shard by shard, a record batch (:data:`READ_ROWS` rows) at a time, so that a
training process holds one record batch, the shuffle buffer and one training batch of
examples, whatever the number of examples; :class:`MemoryShards` serves the same
shards from examples already in memory (``training.data: memory``).

The shard-and-buffer order of one epoch, for seed ``s``, epoch ``e`` (1-based), W
processes of which this one is rank ``r``, and a buffer of ``K`` examples:

1. The shards that hold at least one example (after any filter, such as the
   validation phase's boundaries) are put in a random order drawn from
   ``default_rng([s, e, 0x5A4D])``.
2. With W > 1, the shards are dealt out in that order, each to the process with the
   fewest examples so far (ties to the lowest rank); every process computes the same
   deal and reads only its own shards. With W = 1 the one process takes them all.
3. The process reads its shards in that order, each shard's examples in stored order.
4. The first K examples fill the buffer. Each later example i draws ``u_i`` from
   ``default_rng([s, e, 0xB0F, r]).random()`` and takes slot ``floor(u_i K)`` of the
   buffer, whose example is emitted. When the shards are exhausted the examples left
   in the buffer are emitted in a random permutation (the same generator). With
   K >= the examples of the epoch the order is a uniform random permutation.
5. Emitted examples are cut into batches of ``batch_size / W``: with W = 1 the last,
   shorter batch is kept (as in the in-memory path); with W > 1 every process takes
   ``min over ranks of floor(examples_r / (batch_size / W))`` batches, so all take the
   same number of steps, and the rest of the epoch's examples is left out (a different
   rest each epoch, as the deal changes).

The order depends on the seed, the epoch, the shard sizes, W, r and K, not on how the
examples are chunked when read: the in-memory path with ``training.shuffle: shards``
sees the very batches the streamed path sees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from videorec.examples import ExampleSource
from videorec.training.data import (
    EXAMPLE_COLUMNS,
    Examples,
    ExampleShards,
    UserTable,
    VideoTable,
    example_shards,
    examples_from_table,
)
from videorec.training.model import TwoTowerConfig

READ_ROWS = 8192  # rows per record batch read from a shard (bounds the read's memory)
VIRTUAL_SHARD_ROWS = 8192  # in-memory examples without shard ids: contiguous blocks
_MASK64 = (1 << 64) - 1

# (user_ids (n,) int64, ts (n,) int64 UTC microseconds) -> (n,) bool: examples kept.
KeepFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng([int(w) & _MASK64 for w in words])


def shard_order(n_shards: int, seed: int, epoch: int) -> np.ndarray:
    """(n_shards,) int64: the epoch's random order of shard positions 0..n_shards-1."""
    return _rng(seed, epoch, 0x5A4D).permutation(n_shards)


def deal_shards(order: np.ndarray, rows: np.ndarray, world: int) -> list[np.ndarray]:
    """Shards (ids, in ``order``) dealt to ``world`` processes, each in turn to the one
    with the fewest rows so far (ties to the lowest rank). ``rows`` (S,) rows per shard
    id. Returns one int64 array of shard ids per rank, in reading order."""
    load = np.zeros(world, dtype=np.int64)
    dealt: list[list[int]] = [[] for _ in range(world)]
    for s in order:
        r = int(np.argmin(load))
        dealt[r].append(int(s))
        load[r] += int(rows[s])
    return [np.asarray(d, dtype=np.int64) for d in dealt]


class ShuffleBuffer:
    """A fixed-size shuffle buffer over :class:`Examples` (step 4 of the module docstring).

    Vectorised per pushed chunk: the draws of a chunk are resolved together (an example
    that lands in a slot an earlier example of the same chunk took is the one emitted
    by the next draw of that slot), so the emitted order is the one-example-at-a-time
    order whatever the chunk sizes. Memory: ``capacity`` examples.
    """

    def __init__(self, capacity: int, rng: np.random.Generator) -> None:
        if capacity < 1:
            raise ValueError(f"shuffle buffer capacity {capacity} < 1")
        self.capacity, self.rng = capacity, rng
        self.n = 0
        self._cols: dict[str, np.ndarray] | None = None
        self._none: list[str] = []

    def _allocate(self, chunk: Examples) -> None:
        fields = vars(chunk)
        self._cols = {
            k: np.empty((self.capacity, *v.shape[1:]), v.dtype)
            for k, v in fields.items()
            if v is not None
        }
        self._none = [k for k, v in fields.items() if v is None]

    def _examples(self, cols: dict[str, np.ndarray]) -> Examples:
        return Examples(**cols, **dict.fromkeys(self._none))

    def push(self, chunk: Examples) -> Examples | None:
        """Add ``chunk``; the examples it displaces, in emission order (None: none yet)."""
        if self._cols is None:
            self._allocate(chunk)
        cols, n_in = self._cols, len(chunk)
        m = min(self.capacity - self.n, n_in)
        for k, col in cols.items():
            col[self.n : self.n + m] = getattr(chunk, k)[:m]
        self.n += m
        k_in = n_in - m
        if k_in == 0:
            return None
        slots = np.minimum(
            (self.rng.random(k_in) * self.capacity).astype(np.int64), self.capacity - 1
        )
        order = np.argsort(slots, kind="stable")  # by slot, then arrival
        sj = slots[order]
        first = np.r_[True, sj[1:] != sj[:-1]]
        last = np.r_[sj[1:] != sj[:-1], True]
        from_buf = np.empty(k_in, dtype=bool)
        from_buf[order] = first
        # Emitted by draw order[p]: the buffer's example in slot sj[p] for the slot's
        # first draw, else the example that the previous draw of that slot put there.
        src = np.empty(k_in, dtype=np.int64)
        src[order] = np.where(first, sj, np.r_[0, order[:-1]])
        out = {}
        for k, col in cols.items():
            incoming = getattr(chunk, k)[m:]
            o = np.empty((k_in, *col.shape[1:]), col.dtype)
            o[from_buf] = col[src[from_buf]]
            o[~from_buf] = incoming[src[~from_buf]]
            col[sj[last]] = incoming[order[last]]
            out[k] = o
        return self._examples(out)

    def drain(self) -> Examples | None:
        """The examples left, in a random permutation; the buffer is empty after."""
        if self._cols is None or self.n == 0:
            return None
        perm = self.rng.permutation(self.n)
        out = self._examples({k: col[: self.n][perm] for k, col in self._cols.items()})
        self.n = 0
        return out


def rebatch(pieces: Iterable[Examples | None], size: int) -> Iterator[Examples]:
    """``pieces`` concatenated and cut into batches of ``size``; the last may be shorter."""
    held: list[Examples] = []
    have = 0
    for p in pieces:
        if p is None or len(p) == 0:
            continue
        held.append(p)
        have += len(p)
        if have < size:
            continue
        joined = Examples.concat(held)
        full = have - have % size
        for s in range(0, full, size):
            yield joined.subset(slice(s, s + size))
        held = [joined.subset(slice(full, have))] if full < have else []
        have -= full
    if have:
        yield Examples.concat(held)


class ShardSource(Protocol):
    """Examples grouped in shards: rows per shard, and a shard's examples in chunks."""

    @property
    def shard_rows(self) -> np.ndarray:
        """(S,) int64 examples per shard id."""
        ...

    def read_shard(self, s: int) -> Iterator[Examples]:
        """Shard ``s``'s examples in stored order, in chunks."""
        ...


def epoch_batches(
    source: ShardSource,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    buffer_size: int,
    rank: int = 0,
    world: int = 1,
) -> Iterator[Examples]:
    """This process's batches of one epoch in the shard-and-buffer order (module
    docstring): batches of ``batch_size // world`` examples."""
    rows = np.asarray(source.shard_rows, dtype=np.int64)
    live = np.flatnonzero(rows > 0)
    dealt = deal_shards(live[shard_order(len(live), seed, epoch)], rows, world)
    local = batch_size // world
    steps = None if world == 1 else min(int(rows[d].sum()) // local for d in dealt)
    buffer = ShuffleBuffer(buffer_size, _rng(seed, epoch, 0xB0F, rank))

    def emitted() -> Iterator[Examples | None]:
        for s in dealt[rank]:
            for chunk in source.read_shard(int(s)):
                yield buffer.push(chunk)
        yield buffer.drain()

    for i, batch in enumerate(rebatch(emitted(), local)):
        if steps is not None and i >= steps:
            return
        yield batch


def epoch_rows(
    source: ShardSource, *, batch_size: int, seed: int, epoch: int, rank: int, world: int
) -> int:
    """Examples this process trains on in the epoch (what :func:`epoch_batches` yields)."""
    rows = np.asarray(source.shard_rows, dtype=np.int64)
    if world == 1:
        return int(rows.sum())
    live = np.flatnonzero(rows > 0)
    dealt = deal_shards(live[shard_order(len(live), seed, epoch)], rows, world)
    local = batch_size // world
    return local * min(int(rows[d].sum()) // local for d in dealt)


class MemoryShards:
    """Examples in memory served as shards: by their ``shard`` ids (from
    :func:`~videorec.training.data.load_examples`), else blocks of
    :data:`VIRTUAL_SHARD_ROWS` consecutive examples."""

    def __init__(self, examples: Examples, read_rows: int = READ_ROWS) -> None:
        n = len(examples)
        shard = examples.shard
        if shard is None:
            shard = np.arange(n, dtype=np.int64) // VIRTUAL_SHARD_ROWS
        shard = np.asarray(shard, dtype=np.int64)
        self.examples, self.read_rows = examples, read_rows
        self._rows = np.bincount(shard, minlength=1).astype(np.int64)
        self._positions = np.argsort(shard, kind="stable")  # by shard, stored order within
        self._starts = np.r_[0, np.cumsum(self._rows)]

    @property
    def shard_rows(self) -> np.ndarray:
        return self._rows

    def read_shard(self, s: int) -> Iterator[Examples]:
        pos = self._positions[self._starts[s] : self._starts[s + 1]]
        for a in range(0, len(pos), self.read_rows):
            yield self.examples.subset(pos[a : a + self.read_rows])


class ExampleStream:
    """The feature stage's ``examples/`` read shard by shard (``training.data: stream``).

    ``keep`` (optional) filters examples by (user id, timestamp), e.g. the validation
    phase's per-user boundaries; the rows per shard and the examples per label video
    (for logQ) come from one pass over the ``user_id``, ``ts`` and ``video_id`` columns.
    Memory: one record batch of :data:`READ_ROWS` rows, plus (V + 1,) label counts.
    """

    def __init__(
        self,
        shards: ExampleShards,
        videos: VideoTable,
        users: UserTable,
        cfg: TwoTowerConfig,
        *,
        keep: KeepFn | None = None,
        read_rows: int = READ_ROWS,
    ) -> None:
        self.shards, self.videos, self.users, self.cfg = shards, videos, users, cfg
        self.keep, self.read_rows = keep, read_rows
        self._rows: np.ndarray | None = None if keep is not None else shards.rows.copy()
        self._labels: np.ndarray | None = None

    @classmethod
    def open(
        cls,
        examples: Path | ExampleSource | ExampleShards,
        videos: VideoTable,
        users: UserTable,
        cfg: TwoTowerConfig,
    ) -> ExampleStream:
        """The stream of a features version's examples (:func:`example_shards`: the
        footers of a table; a pass over the key columns of examples by reference),
        or of shards already counted (:func:`~videorec.training.data.scan_examples`)."""
        shards = examples if isinstance(examples, ExampleShards) else example_shards(examples)
        return cls(shards, videos, users, cfg)

    def where(self, keep: KeepFn) -> ExampleStream:
        """The same examples filtered by ``keep`` (counted on first use)."""
        return ExampleStream(
            self.shards, self.videos, self.users, self.cfg, keep=keep, read_rows=self.read_rows
        )

    def __len__(self) -> int:
        return int(self.shard_rows.sum())

    @property
    def shard_rows(self) -> np.ndarray:
        """(S,) int64 examples per shard (after the filter)."""
        if self._rows is None:
            self._count()
        return self._rows

    def label_counts(self) -> np.ndarray:
        """(V + 1,) int64 examples per label video row (after the filter)."""
        if self._labels is None:
            self._count()
        return self._labels

    def _batches(self, s: int, columns: list[str]) -> Iterator:
        i, g = int(self.shards.file_index[s]), int(self.shards.row_group[s])
        yield from self.shards.source.batches(columns, i, [g], self.read_rows)

    def _count(self) -> None:
        """One pass over three columns: kept rows per shard and per label video row."""
        import pyarrow as pa
        import pyarrow.compute as pc

        rows = np.zeros(len(self.shards), dtype=np.int64)
        labels = np.zeros(len(self.videos.video_ids) + 1, dtype=np.int64)
        for s in range(len(self.shards)):
            for b in self._batches(s, ["user_id", "ts", "video_id"]):
                label = self.videos.rows(b["video_id"].to_numpy())
                if self.keep is not None:
                    ts = pc.cast(b["ts"], pa.int64()).to_numpy(zero_copy_only=False)
                    mask = self.keep(b["user_id"].to_numpy().astype(np.int64), ts)
                    label = label[mask]
                rows[s] += len(label)
                labels += np.bincount(label, minlength=len(labels))
        self._rows, self._labels = rows, labels

    def read_shard(self, s: int) -> Iterator[Examples]:
        for b in self._batches(s, list(EXAMPLE_COLUMNS)):
            ex = examples_from_table(b, self.videos, self.users, self.cfg)
            if self.keep is not None:
                ex = ex.subset(np.flatnonzero(self.keep(ex.user_ids, ex.ts)))
            ex.shard = np.full(len(ex), s, dtype=np.int32)
            if len(ex):
                yield ex
