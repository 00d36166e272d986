"""The training examples of a features version, as every reader sees them.

A full pass writes the window's examples as a table (``examples/``, Parquet). The
incremental stage writes no copy of them: its ``examples-ref/`` holds ``reference.json``,
which lists the window's training-day files (``features-history`` versions: each watch
play of a day with the last ``history_len`` watches before it, any window) and the
rule that makes them the window's examples when they are read, as the full pass
defines them:

- ``liked``: the user liked the video before the split (the pairs in ``liked/``);
- a play is an example when positive: no completion (MovieLens), completion at least
  ``positive_min_completion``, or liked;
- each user keeps the ``cap`` most recent by (ts, event_id): for the users over the cap,
  the rows at or after their cut-off key (``cutoffs/``: ``user_id``, ``cut_ts``,
  ``cut_id``);
- the history keeps the watches at or after the window's start;
- ``weight``, ``hour`` and ``example_age_days`` as the full pass computes them.

So a daily run writes two small tables instead of rewriting every example with its two
50-long arrays, and readers of either form call :func:`open_examples`. Memory for a
reference: the liked pairs and the over-cap users' cut-offs (16 to 24 bytes each),
independent of the number of examples.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from videorec import artifact_names as names

REFERENCE_DIR = "examples-ref"  # an incremental features version's examples, by reference
REFERENCE_FILE = "reference.json"
LIKED_DIR = "liked"  # (user_id, video_id): liked before the split
CUTOFFS_DIR = "cutoffs"  # (user_id, cut_ts, cut_id): over-cap users' oldest kept key
READ_ROWS = 65_536

# The examples table's schema (as the full pass's Spark job writes it).
SCHEMA = pa.schema([
    ("user_id", pa.int64()), ("event_id", pa.string()), ("ts", pa.timestamp("us", tz="UTC")),
    ("video_id", pa.int64()), ("device", pa.string()), ("country", pa.string()),
    ("watch_time_s", pa.float64()), ("completion", pa.float64()), ("liked", pa.bool_()),
    ("weight", pa.float64()), ("history", pa.list_(pa.int64())), ("history_len", pa.int32()),
    ("hour", pa.int32()), ("example_age_days", pa.float64()),
])  # fmt: skip
COLUMNS = tuple(SCHEMA.names)
# Who played what when: what the evaluation split takes of each training example.
KEY_COLUMNS = ("user_id", "video_id", "ts")
# What a day file holds of each column the rule derives (the rest are stored as is).
_DERIVED_FROM = {
    "liked": ("user_id", "video_id"),
    "weight": ("user_id", "video_id", "completion", "watch_time_s"),
    "history": ("history", "history_ts"),
    "history_len": ("history", "history_ts"),
    "hour": ("ts",),
    "example_age_days": ("ts",),
}
_FILTER_COLUMNS = ("user_id", "video_id", "ts", "event_id", "completion")
_US = 1_000_000
_CODE_LIMIT = int(np.iinfo(np.int64).max)  # liked-pair codes: users x videos below it


class ExamplesError(ValueError):
    """A features version's examples are missing or malformed (the message says which)."""


@dataclass(frozen=True)
class ExampleRule:
    """What turns a day's plays into the window's examples (module docstring)."""

    window_start_us: int  # history watches before it are dropped (epoch microseconds)
    window_end_us: int  # example age is measured from it (epoch microseconds)
    cap: int  # examples kept per user, the most recent
    positive_min_completion: float
    weight_watch_time_cap_s: float
    weight_watch_time_exp: float
    weight_completion_exp: float
    like_bonus: float

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ExampleRule:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


class WeightParams(Protocol):
    """The weight's parameters: ``cfg.features`` in the job, :class:`ExampleRule` here."""

    weight_watch_time_cap_s: float  # seconds; longer watches count as this long
    weight_watch_time_exp: float
    weight_completion_exp: float
    like_bonus: float


class WeightOps(Protocol):
    """What an engine gives :func:`example_weight` beyond Python's operators (``*``,
    ``/``, ``+`` on its column expressions): Spark's ``Column`` in the feature job
    (``features.session.SparkExampleOps``), ``pyarrow.compute`` expressions here."""

    def num(self, name: str) -> Any:
        """The column ``name`` as a float64 (a bool as 0 or 1), null where it is null."""

    def least(self, x: Any, cap: float) -> Any:
        """min(x, cap); ``cap`` where ``x`` is null (Spark's ``least`` skips nulls)."""

    def power(self, x: Any, exp: float) -> Any:
        """x ** exp, null where ``x`` is null."""

    def if_null(self, x: Any, value: float) -> Any:
        """``x``, with ``value`` where it is null."""


def example_weight(ops: WeightOps, p: WeightParams) -> Any:
    """An example's training weight as a column expression of ``ops``'s engine, written
    once for the full pass (Spark) and the examples read by reference (Arrow):
    completion^a x (min(watch time, cap) / cap)^b, 1 for a play without a completion
    (MovieLens has no watch time), plus ``like_bonus`` when ``liked``. Unitless, >= 0."""
    cap = p.weight_watch_time_cap_s
    watch_term = ops.power(ops.least(ops.num("watch_time_s"), cap) / cap, p.weight_watch_time_exp)
    base = ops.power(ops.num("completion"), p.weight_completion_exp) * watch_term
    return ops.if_null(base, 1.0) + ops.num("liked") * p.like_bonus


class PlayParams(Protocol):
    """The positive-play threshold: ``cfg.features`` in the job, :class:`ExampleRule` here."""

    positive_min_completion: float  # share of the video watched, 0..1


class PlayOps(Protocol):
    """What an engine gives :func:`played_enough`: Spark's ``Column`` in the feature job
    (``features.session.SparkExampleOps``), ``pyarrow.compute`` expressions here."""

    def num(self, name: str) -> Any:
        """The column ``name`` as a float64, null where it is null."""

    def is_null(self, x: Any) -> Any:
        """True where ``x`` is null (NaN is not null)."""

    def is_watch(self) -> Any:
        """True where the play is a ``watch`` (not a ``skip``)."""

    def at_least(self, x: Any, bound: float) -> Any:
        """x >= bound, with NaN above every number (Spark's order); null where ``x`` is."""

    def if_else(self, cond: Any, then: Any, otherwise: Any) -> Any:
        """``then`` where ``cond`` is true, else ``otherwise``."""


def played_enough(ops: PlayOps, p: PlayParams) -> Any:
    """A play that is a positive example without a like, as a boolean column expression
    of ``ops``'s engine, written once for the feature job (Spark: the full pass, the
    day tables) and the examples read by reference (Arrow): a watch without a
    completion (no duration to divide by, as in MovieLens), or any play completed to at
    least ``p.positive_min_completion``."""
    completion = ops.num("completion")
    return ops.if_else(
        ops.is_null(completion),
        ops.is_watch(),
        ops.at_least(completion, p.positive_min_completion),
    )


class _ArrowExampleOps:
    """:class:`WeightOps` and :class:`PlayOps` over ``pyarrow.compute`` expressions,
    evaluated by Acero on the day history files' rows."""

    @staticmethod
    def num(name: str) -> pc.Expression:
        return pc.field(name).cast(pa.float64())

    @staticmethod
    def least(x: pc.Expression, cap: float) -> pc.Expression:
        return pc.min_element_wise(x, pa.scalar(float(cap)), skip_nulls=True)

    @staticmethod
    def power(x: pc.Expression, exp: float) -> pc.Expression:
        return pc.power(x, pa.scalar(float(exp)))

    @staticmethod
    def if_null(x: pc.Expression, value: float) -> pc.Expression:
        return pc.coalesce(x, pa.scalar(float(value)))

    @staticmethod
    def is_null(x: pc.Expression) -> pc.Expression:
        return x.is_null()

    @staticmethod
    def is_watch() -> pc.Expression:
        # The day history files hold the day's watch plays only (features.incremental
        # writes no other type there), so they carry no event type to test.
        return pc.scalar(True)

    @staticmethod
    def at_least(x: pc.Expression, bound: float) -> pc.Expression:
        # Arrow's comparisons are false for NaN; Spark orders NaN above every number.
        return (x >= pa.scalar(float(bound))) | pc.is_nan(x)

    @staticmethod
    def if_else(
        cond: pc.Expression, then: pc.Expression, otherwise: pc.Expression
    ) -> pc.Expression:
        return pc.if_else(cond, then, otherwise)


def arrow_weights(t: pa.Table, p: WeightParams) -> pa.ChunkedArray:
    """:func:`example_weight` of each row of ``t`` (float64), which needs the columns
    ``watch_time_s``, ``completion`` and ``liked``."""
    cols = t.select(["watch_time_s", "completion", "liked"])
    weight = example_weight(_ArrowExampleOps(), p)
    return pads.dataset(cols).to_table(columns={"weight": weight})["weight"]


def arrow_played_enough(t: pa.Table, p: PlayParams) -> np.ndarray:
    """(n,) bool: :func:`played_enough` of each row of ``t``, day history rows (watch
    plays) with a ``completion`` column."""
    enough = played_enough(_ArrowExampleOps(), p)
    col = pads.dataset(t.select(["completion"])).to_table(columns={"e": enough})["e"]
    return col.to_numpy(zero_copy_only=False).astype(bool, copy=False)


@contextmanager
def _open_parquet(uri: str) -> Iterator[pq.ParquetFile]:
    """The Parquet file at ``uri``, closed on exit (a reader may hold many open)."""
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        source = fs.open_input_file(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise ExamplesError(f"{uri}: an examples file is unreadable: {err}") from None
    try:
        try:
            f = pq.ParquetFile(source)
        except (OSError, pa.ArrowInvalid) as err:
            raise ExamplesError(f"{uri}: an examples file is unreadable: {err}") from None
        yield f
    finally:
        source.close()


class _Cutoffs:
    """The over-cap users' cut-off keys, sorted by user id."""

    def __init__(self, cutoffs: pa.Table) -> None:
        users = cutoffs["user_id"].to_numpy().astype(np.int64, copy=False)
        order = np.argsort(users, kind="stable")
        self.users, self.ts = users[order], _epoch_us(cutoffs["cut_ts"])[order]
        self.ids = cutoffs["cut_id"].combine_chunks().take(pa.array(order))

    def keep(self, user: np.ndarray, ts: np.ndarray, event_id: pa.Array) -> np.ndarray:
        """(n,) bool: rows of users under the cap, and rows at or after their user's
        cut-off (ts, event_id); event ids compare by their UTF-8 bytes, as Spark's do."""
        keep = np.ones(len(user), bool)
        if not len(self.users):
            return keep
        at = np.minimum(np.searchsorted(self.users, user), len(self.users) - 1)
        over = np.flatnonzero(self.users[at] == user)
        if len(over):
            cut_ts, ts_over = self.ts[at[over]], ts[over]
            id_after = pc.greater_equal(
                event_id.take(pa.array(over)), self.ids.take(pa.array(at[over]))
            ).to_numpy(zero_copy_only=False)
            keep[over] = (ts_over > cut_ts) | ((ts_over == cut_ts) & id_after)
        return keep


class _LikedPairs:
    """The liked (user, video) pairs as sorted int64 codes: each id by its rank among
    the pairs' distinct users (videos), the pair as user rank x videos + video rank.
    Built once; a batch is then three int64 searches (a hash join per batch rebuilt
    its table each time: 85 ms a batch for the 20M platform's pairs)."""

    def __init__(self, liked: pa.Table) -> None:
        users = liked["user_id"].to_numpy().astype(np.int64, copy=False)
        videos = liked["video_id"].to_numpy().astype(np.int64, copy=False)
        self.users, self.videos = np.unique(users), np.unique(videos)
        if len(self.users) * len(self.videos) > _CODE_LIMIT:  # Python ints: no overflow
            raise ExamplesError(
                f"{len(self.users):,} users x {len(self.videos):,} videos among the liked "
                "pairs do not fit the int64 pair codes"
            )
        self.codes = np.unique(self._code(users, videos)[0])

    def _code(self, users: np.ndarray, videos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(codes (n,), known (n,) bool: both ids occur among the pairs)."""
        if not len(self.users):
            return np.zeros(len(users), np.int64), np.zeros(len(users), bool)
        u = np.minimum(np.searchsorted(self.users, users), len(self.users) - 1)
        v = np.minimum(np.searchsorted(self.videos, videos), len(self.videos) - 1)
        known = (self.users[u] == users) & (self.videos[v] == videos)
        return u.astype(np.int64) * len(self.videos) + v, known

    def contains(self, users: np.ndarray, videos: np.ndarray) -> np.ndarray:
        """(n,) bool: the rows whose (user, video) pair was liked."""
        codes, known = self._code(users, videos)
        if not len(self.codes):
            return known
        at = np.minimum(np.searchsorted(self.codes, codes), len(self.codes) - 1)
        return known & (self.codes[at] == codes)


def _epoch_us(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return (
        pc.cast(col, pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    )


def _trimmed_history(
    history: pa.ChunkedArray | pa.Array, history_ts: pa.ChunkedArray | pa.Array, start_us: int
) -> pa.ListArray:
    """The history lists without the watches before ``start_us`` (order kept)."""
    if isinstance(history, pa.ChunkedArray):
        history, history_ts = history.combine_chunks(), history_ts.combine_chunks()
    n = len(history)
    keep = _epoch_us(pc.list_flatten(history_ts)) >= start_us
    parent = pc.list_parent_indices(history).to_numpy(zero_copy_only=False)
    lengths = np.bincount(parent[keep], minlength=n)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    values = pc.list_flatten(history).filter(pa.array(keep))
    return pa.ListArray.from_arrays(pa.array(offsets), values)


class ExampleSource:
    """The examples of one features version: Parquet files read in a fixed order, each
    row group a unit (a training shard); :meth:`batches` yields the examples."""

    def __init__(
        self,
        files: tuple[str, ...],
        rule: ExampleRule | None = None,
        liked: pa.Table | None = None,
        cutoffs: pa.Table | None = None,
    ) -> None:
        self.files, self.rule = files, rule
        if rule is not None:
            self._liked = _LikedPairs(liked)
            self._cutoffs = _Cutoffs(cutoffs)

    @property
    def by_reference(self) -> bool:
        return self.rule is not None

    def row_groups(self, i: int) -> list[int]:
        """(stored rows) of each row group of file ``i``, from its footer."""
        with _open_parquet(self.files[i]) as f:
            meta = f.metadata
        return [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]

    def batches(
        self,
        columns: list[str] | tuple[str, ...],
        i: int,
        row_groups: list[int] | None = None,
        batch_size: int = READ_ROWS,
    ) -> Iterator[pa.Table]:
        """File ``i``'s examples (``columns`` of :data:`COLUMNS`), a batch at a time."""
        with _open_parquet(self.files[i]) as f:
            groups = range(f.metadata.num_row_groups) if row_groups is None else row_groups
            yield from self._batches_of(f, columns, list(groups), batch_size)

    def _batches_of(
        self,
        f: pq.ParquetFile,
        columns: list[str] | tuple[str, ...],
        row_groups: list[int],
        batch_size: int = READ_ROWS,
    ) -> Iterator[pa.Table]:
        bad = [c for c in columns if c not in COLUMNS]
        if bad:
            raise ExamplesError(f"examples have no columns {bad}; they have {list(COLUMNS)}")
        stored = list(columns)
        if self.rule is not None:
            need = set(_FILTER_COLUMNS).union(*(_DERIVED_FROM.get(c, (c,)) for c in columns))
            stored = sorted(need)
        for b in f.iter_batches(batch_size=batch_size, row_groups=row_groups, columns=stored):
            t = pa.Table.from_batches([b])
            yield t.select(list(columns)) if self.rule is None else self._apply(t, columns)

    def read(self, columns: list[str] | tuple[str, ...] = COLUMNS) -> pa.Table:
        """Every example, ``columns`` of them, in file order."""
        parts = [t for i in range(len(self.files)) for t in self.batches(columns, i)]
        return _concat(parts, columns)

    def scan(
        self, columns: list[str] | tuple[str, ...], distinct: list[str] | tuple[str, ...] = ()
    ) -> Scan:
        """One pass, a row group at a time: ``columns`` of every example in file order,
        the examples of each row group, and the distinct values of ``distinct``
        (columns read for their values alone, not kept)."""
        # A pass for the counts alone still reads a column: a batch of none has no rows.
        read = list(dict.fromkeys([*columns, *distinct])) or ["user_id"]
        parts: list[pa.Table] = []
        counts: list[tuple[int, int, int]] = []
        seen: dict[str, set[Any]] = {c: set() for c in distinct}
        for i in range(len(self.files)):
            with _open_parquet(self.files[i]) as f:
                for g in range(f.metadata.num_row_groups):
                    n = 0
                    for t in self._batches_of(f, read, [g]):
                        n += t.num_rows
                        for c in distinct:
                            seen[c].update(pc.unique(t[c]).drop_null().to_pylist())
                        if columns:
                            parts.append(t.select(list(columns)))
                    counts.append((i, g, n))
        return Scan(_concat(parts, columns), counts, seen)

    def _apply(self, t: pa.Table, columns: list[str] | tuple[str, ...]) -> pa.Table:
        """The rule on a batch of day rows: the examples among them, ``columns``."""
        r = self.rule
        user = t["user_id"].to_numpy().astype(np.int64, copy=False)
        video = t["video_id"].to_numpy().astype(np.int64, copy=False)
        liked = self._liked.contains(user, video)
        ts = _epoch_us(t["ts"])
        keep = (arrow_played_enough(t, r) | liked) & self._cutoffs.keep(
            user, ts, t["event_id"].combine_chunks()
        )
        t, liked, ts = t.filter(pa.array(keep)), liked[keep], ts[keep]
        out: dict[str, pa.Array] = {}
        if "history" in columns or "history_len" in columns:
            h = _trimmed_history(t["history"], t["history_ts"], r.window_start_us)
            out["history"] = h
            out["history_len"] = pa.array(pc.list_value_length(h), pa.int32())
        for c in columns:
            if c in out:
                continue
            if c == "liked":
                out[c] = pa.array(liked)
            elif c == "weight":
                out[c] = arrow_weights(t.append_column("liked", pa.array(liked)), r)
            elif c == "hour":
                out[c] = pa.array((ts // (3600 * _US)) % 24, pa.int32())
            elif c == "example_age_days":
                age = (r.window_end_us / _US - ts / _US) / 86400.0
                out[c] = pa.array(age, pa.float64())
            else:
                out[c] = t[c]
        return pa.table({c: out[c] for c in columns})


def _concat(parts: list[pa.Table], columns: list[str] | tuple[str, ...]) -> pa.Table:
    if parts:
        return pa.concat_tables(parts)
    return pa.schema([SCHEMA.field(c) for c in columns]).empty_table()


@dataclass(frozen=True)
class Scan:
    """What :meth:`ExampleSource.scan` read in one pass."""

    table: pa.Table  # (N examples) x the columns asked for, in file order
    row_groups: list[tuple[int, int, int]]  # (file, row group, examples), file order
    distinct: dict[str, set[Any]]  # column -> its distinct non-null values


def _parquet_files(folder: Path) -> tuple[str, ...]:
    return tuple(pads.dataset(str(folder.resolve()), format="parquet").files)


# (artifact name, version) -> the version's local folder (``ArtifactStore.local_path``).
Resolver = Callable[[str, str], Path]


def open_examples(path: Path | str, resolve: Resolver | None = None) -> ExampleSource:
    """The examples of the features version in folder ``path``: its ``examples/``
    table, or the day files and rule its ``examples-ref/`` names (module docstring).
    ``path`` may also be an examples table's own folder.

    Referenced day files are read where they were written (a path or an ``s3://``
    URI), or, given ``resolve``, from the local copies of their versions it returns.
    """
    root = Path(path)
    table, ref = root / names.EXAMPLES, root / REFERENCE_DIR
    if table.is_dir():
        return ExampleSource(_parquet_files(table))
    if not (ref / REFERENCE_FILE).is_file():
        if root.is_dir() and any(root.glob("*.parquet")):
            return ExampleSource(_parquet_files(root))
        raise ExamplesError(
            f"{root}: no {names.EXAMPLES}/ and no {REFERENCE_DIR}/{REFERENCE_FILE}: "
            "not a features version"
        )
    try:
        spec = json.loads((ref / REFERENCE_FILE).read_text())
        rule = ExampleRule.from_json(spec["rule"])
        files = tuple(
            str(resolve(d["name"], d["version"]) / rel) if resolve else f"{d['uri']}/{rel}"
            for d in spec["days"]
            for rel in d["files"]
        )
    except (ValueError, KeyError, TypeError) as err:
        raise ExamplesError(f"{ref / REFERENCE_FILE}: malformed: {err!r}") from None
    liked = pq.read_table(ref / LIKED_DIR, columns=["user_id", "video_id"])
    cutoffs = pq.read_table(ref / CUTOFFS_DIR, columns=["user_id", "cut_ts", "cut_id"])
    return ExampleSource(files, rule, liked, cutoffs)


def read_examples(
    features_dir: Path | str, columns: list[str] | tuple[str, ...], resolve: Resolver | None = None
) -> pa.Table:
    """``columns`` of every example of the features version in ``features_dir``."""
    return open_examples(features_dir, resolve).read(columns)
