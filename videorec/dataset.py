"""Reading and writing a *data set directory*: the contract's tables plus a manifest.

Layout (what ``videorec generate`` and ``videorec import-movielens`` write, and
what every later stage reads with ``--data DIR``)::

    DIR/_dataset.json                       manifest: source, params, as_of, counts
    DIR/watch_events/dt=YYYY-MM-DD/*.parquet
    DIR/videos/*.parquet  DIR/channels/*.parquet  DIR/users/*.parquet
    DIR/ground_truth/...                    synthetic only: the latent preference model

A data set is written into a hidden sibling folder and renamed into place when
complete, so a reader never sees half of one. Readers go through
:func:`load_validated`, which applies the contract's validator and writes the
quarantine; ``DIR`` may be a local path or an ``s3://`` URI for reading.

**The event log grows by appended files.** :func:`append_events` adds one Parquet
file to a day partition (the event-log drain does, hourly) without touching the rest:
locally it writes a hidden temporary file in the partition and renames it; on S3 the
object appears whole when its upload completes. Every reader skips names starting
with ``.`` or ``_`` (pyarrow's and Spark's default, :data:`HIDDEN_PREFIXES`), so a
temporary file is never read. The manifest is not rewritten by an append: its
``counts`` are the counts the data set was created with, and its ``as_of`` the end of
the data it was created with; a reader of a growing log passes its own logical time
(``load_validated(as_of=...)``, the feature stage's window end). Which files a reader
saw is :func:`event_files`: paths and sizes, what the feature stage's version digests.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from videorec.config import ContractConfig
from videorec.contract import (
    SCHEMAS,
    ValidationResult,
    conform,
    validate_dimension,
    validate_events,
    with_minimal_users,
)

MANIFEST = "_dataset.json"
DIMENSION_TABLES: tuple[str, ...] = ("videos", "channels", "users")
# File and folder names every reader skips: temporary files of an append, markers.
HIDDEN_PREFIXES: tuple[str, ...] = (".", "_")
# A name an appended file may have: visible, plain, ``.parquet``.
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=-]*\.parquet")


class DatasetError(RuntimeError):
    """A data set directory is missing, incomplete or malformed; the message names it."""


def _fs(root: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    s = str(root)
    if "://" in s:
        return pafs.FileSystem.from_uri(s)
    return pafs.LocalFileSystem(), str(Path(s).resolve())


def filesystem(root: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """(the pyarrow filesystem of ``root``, its path there): a local folder, made absolute,
    or an ``s3://`` URI's bucket and prefix."""
    return _fs(root)


def read_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The data set's manifest; DatasetError naming the path if ``root`` is not a
    complete data set (missing, a file, no manifest, or a manifest that is a folder,
    not JSON, not an object, or without a valid ``as_of``)."""
    fs, base = _fs(root)
    hint = "create one with `videorec generate` or `videorec import-movielens`"
    kind = fs.get_file_info(base).type
    if kind == pafs.FileType.NotFound:
        raise DatasetError(f"{root}: no such data set directory; {hint}")
    if kind != pafs.FileType.Directory:
        raise DatasetError(f"{root}: not a data set directory (it is a file); {hint}")
    path = f"{base}/{MANIFEST}"
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.NotFound:
        raise DatasetError(f"{root}: not a data set directory (no {MANIFEST}); {hint}")
    if kind != pafs.FileType.File:
        raise DatasetError(f"{path}: the manifest is not a file")
    try:
        with fs.open_input_stream(path) as f:
            manifest = json.loads(f.read())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: unreadable manifest: {err}") from None
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path}: the manifest must be a JSON object")
    try:
        _as_of(manifest)
    except DatasetError as err:
        raise DatasetError(f"{path}: {err}") from None
    return manifest


def as_of(manifest: dict[str, Any]) -> dt.datetime:
    """The data set's exclusive end of time (UTC) from its manifest.

    DatasetError when ``as_of`` is missing or not an ISO-8601 time with a zone.
    """
    raw = manifest.get("as_of")
    if not isinstance(raw, str):
        raise DatasetError("the manifest has no 'as_of' (the data's exclusive end time)")
    try:
        t = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise DatasetError(f"'as_of' is not an ISO-8601 time: {raw!r}") from None
    if t.tzinfo is None:
        raise DatasetError(f"'as_of' has no time zone: {raw!r}")
    return t.astimezone(dt.UTC)


_as_of = as_of  # for functions whose ``as_of`` parameter shadows it


def read_table(
    root: str | os.PathLike[str], name: str, files: list[dict[str, Any]] | None = None
) -> pa.Table:
    """One dimension table, cast to the contract schema (not yet validated); ``files``
    (from :func:`table_files`): exactly those files, not what the folder holds now."""
    fs, base = _fs(root)
    path = f"{base}/{name}"
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise DatasetError(f"{root}: table {name!r} is missing")
    source: str | list[str] = path if files is None else [f"{path}/{f['path']}" for f in files]
    try:
        table = pads.dataset(source, filesystem=fs, format="parquet").to_table()
    except (OSError, pa.ArrowInvalid) as err:  # a corrupt, non-Parquet or vanished file
        raise DatasetError(f"{path}: unreadable table {name!r}: {err}") from None
    return conform(table, name)


def table_files(root: str | os.PathLike[str], name: str) -> list[dict[str, Any]]:
    """The files a read of table ``name`` reads, as ``{"path", "size"}`` relative to
    ``DIR/<name>``, sorted (hidden names left out, as readers leave them out). Files are
    added, never changed (:func:`append_videos`), so paths and sizes identify the content."""
    fs, base = _fs(root)
    path = f"{base}/{name}"
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise DatasetError(f"{root}: table {name!r} is missing")
    out = []
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        rel = info.path[len(path) + 1 :]
        if info.type == pafs.FileType.File and not any(
            p.startswith(HIDDEN_PREFIXES) for p in rel.split("/")
        ):
            out.append({"path": rel, "size": info.size})
    return sorted(out, key=lambda f: f["path"])


def read_events(
    root: str | os.PathLike[str], start: dt.date | None = None, end: dt.date | None = None
) -> pa.Table:
    """``watch_events`` rows from the day partitions in [start, end), not yet validated.

    Partitions outside the range are not read at all (pruned by their ``dt=`` name).
    """
    return read_events_with_partitions(root, start, end)[0]


@dataclass
class ValidatedData:
    """Contract-valid tables of a data set and the validator's result for each."""

    root: str
    manifest: dict[str, Any]
    tables: dict[str, pa.Table]
    results: dict[str, ValidationResult] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        """Per-table counts: rows in, valid, quarantined by reason."""
        return {name: r.summary() for name, r in self.results.items()}


def read_events_with_partitions(
    root: str | os.PathLike[str],
    start: dt.date | None = None,
    end: dt.date | None = None,
    files: list[str] | None = None,
) -> tuple[pa.Table, pa.ChunkedArray]:
    """Like :func:`read_events`, and each row's ``dt=`` partition value beside it.

    The validator needs the partition a row was filed under (the partition rule);
    the events table itself keeps only the contract's columns. ``files`` (paths as
    :func:`event_files` gives them): exactly those files, not what the folder holds
    by the time it is listed (a log the drain appends to).
    """
    fs, base = _fs(root)
    path = f"{base}/watch_events"
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise DatasetError(f"{root}: table 'watch_events' is missing")
    # The contract's schema, not each file's: files written before a column was added
    # read it as null, and narrower integer types are cast.
    ds = pads.dataset(
        path if files is None else [f"{path}/{f}" for f in files],
        filesystem=fs,
        format="parquet",
        schema=SCHEMAS["watch_events"].append(pa.field("dt", pa.string())),
        partitioning=pads.partitioning(pa.schema([("dt", pa.string())]), flavor="hive"),
        partition_base_dir=path,
        **({"ignore_prefixes": list(HIDDEN_PREFIXES)} if files is None else {}),
    )
    expr = None
    if start is not None:
        expr = pads.field("dt") >= start.isoformat()
    if end is not None:
        e = pads.field("dt") < end.isoformat()
        expr = e if expr is None else expr & e
    try:
        table = ds.to_table(filter=expr)
    except (OSError, pa.ArrowInvalid) as err:  # a corrupt or non-Parquet partition file
        raise DatasetError(f"{path}: unreadable table 'watch_events': {err}") from None
    return conform(table, "watch_events"), table["dt"]


def event_files(
    root: str | os.PathLike[str], start: dt.date | None = None, end: dt.date | None = None
) -> list[dict[str, Any]]:
    """The ``watch_events`` files a read of the day partitions in [start, end) reads.

    One ``{"path": "dt=YYYY-MM-DD/<name>", "size": bytes}`` per file, sorted by path,
    relative to ``DIR/watch_events``; hidden names (:data:`HIDDEN_PREFIXES`) are left
    out, as every reader leaves them out. Files are never changed once written (an
    append adds a file; a re-run of the same append rewrites identical content), so
    paths and sizes identify what was read.
    """
    fs, base = _fs(root)
    path = f"{base}/watch_events"
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise DatasetError(f"{root}: table 'watch_events' is missing")
    lo = start.isoformat() if start is not None else None
    hi = end.isoformat() if end is not None else None
    out = []
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        rel = info.path[len(path) + 1 :]
        parts = rel.split("/")
        if info.type != pafs.FileType.File or any(p.startswith(HIDDEN_PREFIXES) for p in parts):
            continue
        # A file outside a dt= folder has no partition value: a ranged read skips it.
        day = parts[0][3:] if len(parts) > 1 and parts[0].startswith("dt=") else None
        if (lo is not None or hi is not None) and day is None:
            continue
        if (lo is not None and day < lo) or (hi is not None and day >= hi):
            continue
        out.append({"path": rel, "size": info.size})
    return sorted(out, key=lambda f: f["path"])


def event_days(
    root: str | os.PathLike[str], paths: list[str], start: dt.date, end: dt.date
) -> dict[str, set[dt.date]]:
    """For each ``watch_events`` file (``paths`` as :func:`event_files` names them), the
    UTC days in [start, end) on which at least one of its rows' timestamps falls.

    Reads the footer first and the ``ts`` column only of row groups whose statistics
    reach into the range; a null timestamp falls on no day. A file that cannot be read
    this way (corrupt, or a ``ts`` that is not a timestamp) gets every day of the range:
    the answer may hold days with no rows, never miss one with rows.
    """
    fs, base = _fs(root)
    every = {start + dt.timedelta(days=i) for i in range((end - start).days)}
    lo = dt.datetime.combine(start, dt.time(), dt.UTC)
    hi = dt.datetime.combine(end, dt.time(), dt.UTC)
    out: dict[str, set[dt.date]] = {}
    for rel in paths:
        try:
            out[rel] = _file_days(fs, f"{base}/watch_events/{rel}", lo, hi)
        except (OSError, ValueError, TypeError, pa.ArrowException):
            out[rel] = set(every)
    return out


def _file_days(fs: pafs.FileSystem, path: str, lo: dt.datetime, hi: dt.datetime) -> set[dt.date]:
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        col = pf.schema_arrow.get_field_index("ts")
        if col < 0 or not pa.types.is_timestamp(pf.schema_arrow.field(col).type):
            raise TypeError(f"{path}: no timestamp column 'ts'")
        groups = []
        for g in range(pf.metadata.num_row_groups):
            stats = pf.metadata.row_group(g).column(col).statistics
            # Nulls fall on no day: the min and max of the non-null values decide.
            if stats is not None and stats.has_min_max:
                t_min, t_max = _aware(stats.min), _aware(stats.max)
                if t_max < lo or t_min >= hi:
                    continue  # no row of this group falls in the range
            groups.append(g)
        if not groups:
            return set()
        ts = pf.read_row_groups(groups, columns=["ts"])["ts"]
    us = pc.drop_null(ts).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    lo_us = int(lo.timestamp()) * 1_000_000
    rel = us[(us >= lo_us) & (us < int(hi.timestamp()) * 1_000_000)] - lo_us
    days = np.unique(rel // (86_400 * 1_000_000))
    return {lo.date() + dt.timedelta(days=int(d)) for d in days}


def _aware(t: Any) -> dt.datetime:
    """A Parquet statistic's timestamp as an aware UTC datetime (pyarrow gives naive
    datetimes for columns without a zone)."""
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def append_events(
    root: str | os.PathLike[str], day: dt.date, events: pa.Table, name: str
) -> dict[str, Any]:
    """Add ``events`` to the data set as one new file ``watch_events/dt=<day>/<name>``.

    Nothing else is read or rewritten. The file appears whole or not at all
    (:func:`write_parquet_atomic`); a file of the same name is replaced, which is how a
    re-run of the same append (the drain after a crash) stays a single copy. ``name``
    must be a visible ``*.parquet`` name. Returns {"path", "rows", "size"}.
    """
    if not _FILE_NAME.fullmatch(name):
        raise ValueError(f"{name!r}: an appended file is a visible name ending in .parquet")
    read_manifest(root)  # a data set, not any folder
    table = conform(events, "watch_events")
    fs, base = _fs(root)
    rel = f"dt={day.isoformat()}/{name}"
    target = f"{base}/watch_events/{rel}"
    size = write_parquet_atomic(fs, target, table)
    return {"path": rel, "rows": table.num_rows, "size": size}


def append_videos(root: str | os.PathLike[str], videos: pa.Table, name: str) -> dict[str, Any]:
    """Add newly uploaded ``videos`` (the contract's ``videos`` columns) to the data set
    as one new file ``videos/<name>``, whole or not at all, as :func:`append_events`
    does for events. A video id already in the table is the contract validator's
    ``duplicate_id`` (quarantined by the stages that read it), never a silent update.
    Returns {"path", "rows", "size"}."""
    if not _FILE_NAME.fullmatch(name):
        raise ValueError(f"{name!r}: an appended file is a visible name ending in .parquet")
    read_manifest(root)
    table = conform(videos, "videos")
    fs, base = _fs(root)
    size = write_parquet_atomic(fs, f"{base}/videos/{name}", table)
    return {"path": f"videos/{name}", "rows": table.num_rows, "size": size}


def write_parquet_atomic(fs: pafs.FileSystem, path: str, table: pa.Table) -> int:
    """Write ``table`` to ``path`` so that no reader sees part of it; returns its size.

    Locally: a hidden temporary file beside it, flushed to disk, then renamed over
    ``path`` (and the folder flushed, so the rename survives a power cut). On an object
    store a single upload is already atomic: the object appears when it completes.
    """
    folder, _, name = path.rpartition("/")
    if not isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(folder, recursive=True)
        pq.write_table(table, path, filesystem=fs, compression="zstd")
        return fs.get_file_info(path).size
    Path(folder).mkdir(parents=True, exist_ok=True)
    tmp = f"{folder}/.{name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        pq.write_table(table, tmp, compression="zstd")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return os.path.getsize(path)


def load_validated(
    root: str | os.PathLike[str],
    *,
    max_invalid_share: float,
    quarantine_dir: str | os.PathLike[str] | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
    tables: tuple[str, ...] = ("watch_events", *DIMENSION_TABLES),
    check: bool = True,
    limits: ContractConfig | None = None,
    as_of: dt.datetime | None = None,
    event_files: list[str] | None = None,
) -> ValidatedData:
    """Read tables through the contract's validator.

    Bad rows are written under ``quarantine_dir/<table>/`` (when given) with their
    reason before any share check can fail, so nothing is lost even when the read
    is refused. With ``check``, raises ContractViolation when a table's bad share
    exceeds ``max_invalid_share``. ``limits`` is the config's ``contract`` section
    (None: its defaults). Videos are validated against the *valid* channels, events
    against the *valid* videos and their ``dt=`` partitions. When ``users`` is read
    with the events, events of users missing from it are kept and counted
    (``accepted["unknown_user"]``) and each such user gets a minimal row in the
    returned ``users`` table (``rows_added``), as docs/data-contract.md explains.
    ``as_of``: the time the events are judged at (``future_timestamp``); default the
    manifest's ``as_of``, which a log that grows by appends has left behind, so a stage
    reading one passes its logical time. ``end``, when earlier, bounds it either way.
    ``event_files``: read exactly these event files (``read_events_with_partitions``).
    """
    manifest = read_manifest(root)
    cutoff = _as_of(manifest) if as_of is None else as_of.astimezone(dt.UTC)
    if end is not None:
        cutoff = min(cutoff, dt.datetime.combine(end, dt.time(), dt.UTC))
    out = ValidatedData(str(root), manifest, {})
    need_videos = "watch_events" in tables or "videos" in tables
    # Channels first: the videos' unknown-channel rule needs the valid channels.
    for name in ("channels", "videos", "users"):
        if name in tables or (name in ("channels", "videos") and need_videos):
            known_channels = out.tables["channels"]["channel_id"] if name == "videos" else None
            res = validate_dimension(read_table(root, name), name, known_channel_ids=known_channels)
            out.results[name], out.tables[name] = res, res.valid
    if "watch_events" in tables:
        events, partition_dt = read_events_with_partitions(root, start, end, event_files)
        known = out.tables["videos"]["video_id"].combine_chunks()
        users = out.tables.get("users")
        res = validate_events(
            events,
            known,
            cutoff,
            limits=limits,
            partition_dt=partition_dt,
            known_user_ids=None if users is None else users["user_id"],
        )
        out.results["watch_events"], out.tables["watch_events"] = res, res.valid
        if users is not None:
            completed = with_minimal_users(users, res.valid["user_id"])
            out.results["users"].rows_added = completed.num_rows - users.num_rows
            out.tables["users"] = completed
    # Keep the contract's table order in results (reports and the quarantine folder).
    order = ("watch_events", *DIMENSION_TABLES)
    out.results = {n: out.results[n] for n in order if n in out.results}
    out.tables = {n: out.tables[n] for n in order if n in out.tables}
    if quarantine_dir is not None:
        write_quarantine(quarantine_dir, out.results)
    if check:
        for res in out.results.values():
            res.check(max_invalid_share)
    return out


def write_quarantine(folder: str | os.PathLike[str], results: dict[str, ValidationResult]) -> Path:
    """Write each table's quarantined rows (with their reason) to ``folder/<table>.parquet``.

    Idempotent: a re-run replaces the files atomically with identical content.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, res in results.items():
            target = folder / f"{name}.parquet"
            tmp = folder / f".{name}-{uuid.uuid4().hex[:8]}.parquet"
            pq.write_table(res.quarantined, tmp)
            os.replace(tmp, target)
    except OSError as err:  # a path under a file, no permission, ...: name the folder
        raise DatasetError(f"{folder}: cannot write the quarantine there: {err}") from None
    return folder


def read_quarantine(folder: str | os.PathLike[str], name: str) -> pa.Table:
    """The quarantined rows of one table, with the ``quarantine_reason`` column."""
    return pq.read_table(Path(folder) / f"{name}.parquet")


def check_target(out_dir: str | os.PathLike[str], overwrite: bool) -> None:
    """DatasetError unless a data set may be written at ``out_dir``: nothing is there,
    or ``overwrite`` is given and it is a data set (it holds the manifest) or an empty
    folder. Any other folder or file is never replaced, with or without ``overwrite``."""
    out = Path(out_dir)
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise DatasetError(f"{out}: already exists (pass overwrite to replace it)")
    is_dir = out.is_dir() and not out.is_symlink()
    if is_dir and ((out / MANIFEST).is_file() or not any(out.iterdir())):
        return
    raise DatasetError(
        f"{out}: not a data set (no {MANIFEST}): refusing to replace it, even with overwrite"
    )


class DatasetWriter:
    """Writes a data set directory incrementally and publishes it atomically.

    Use as a context manager; :meth:`finish` must be called with the manifest.
    Until then everything lives in a hidden sibling folder, removed on error.
    """

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        if "://" in str(out_dir):
            raise DatasetError(f"{out_dir}: data sets are written locally; upload the folder after")
        self.out = Path(out_dir).resolve()
        self.tmp = self.out.with_name(f".{self.out.name}.tmp-{uuid.uuid4().hex[:8]}")
        self._parts: dict[str, int] = {}
        self._finished = False

    def __enter__(self) -> DatasetWriter:
        try:
            self.tmp.mkdir(parents=True)
        except OSError as err:  # the parent is a file, not writable, ...: name the target
            raise DatasetError(f"{self.out}: cannot write a data set there: {err}") from None
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)
        if exc_type is None and not self._finished:
            raise DatasetError(
                f"{self.out}: DatasetWriter closed without finish(); nothing written"
            )

    def _next_part(self, key: str) -> int:
        n = self._parts.get(key, 0)
        self._parts[key] = n + 1
        return n

    def write_events(
        self, events: pa.Table, partition_ts: pa.Array | pa.ChunkedArray | None = None
    ) -> None:
        """Append events, split into ``dt=`` partitions by the UTC date of ``partition_ts``.

        ``partition_ts`` is when each row arrived (default: its ``ts``). Ingestion files
        rows by arrival, so a row with a skewed future ``ts`` still lands in the day it
        arrived, where the validator of that day's readers catches it.
        """
        events = conform(events, "watch_events")
        if events.num_rows == 0:
            return
        by = events["ts"] if partition_ts is None else partition_ts
        # Integer days, not strings: sorting and splitting stay vectorised.
        days = pc.cast(pc.cast(by, pa.date32()), pa.int32()).to_numpy(zero_copy_only=False)
        order = np.argsort(days, kind="stable")
        days_sorted = days[order]
        uniq, starts = np.unique(days_sorted, return_index=True)
        bounds = [*starts.tolist(), len(days_sorted)]
        for i, day_num in enumerate(uniq):
            day = (dt.date(1970, 1, 1) + dt.timedelta(days=int(day_num))).isoformat()
            idx = order[bounds[i] : bounds[i + 1]]
            part = events.take(pa.array(idx))
            folder = self.tmp / "watch_events" / f"dt={day}"
            folder.mkdir(parents=True, exist_ok=True)
            n = self._next_part(f"watch_events/{day}")
            pq.write_table(part, folder / f"part-{n:05d}.parquet", compression="zstd")

    def write_table(self, name: str, table: pa.Table) -> None:
        """Append rows to a contract table (dimension tables) or, for names not in the
        contract (``ground_truth/users`` ...), write the table as given."""
        if name in SCHEMAS:
            table = conform(table, name)
        folder = self.tmp / name
        folder.mkdir(parents=True, exist_ok=True)
        n = self._next_part(name)
        pq.write_table(table, folder / f"part-{n:05d}.parquet", compression="zstd")

    def finish(self, manifest: dict[str, Any], overwrite: bool = False) -> Path:
        """Write the manifest and publish the folder at ``out_dir`` in one rename."""
        # Every contract table exists in a finished data set, empty if the source has none.
        for name in DIMENSION_TABLES:
            if not (self.tmp / name).exists():
                self.write_table(name, SCHEMAS[name].empty_table())
        (self.tmp / "watch_events").mkdir(exist_ok=True)
        (self.tmp / MANIFEST).write_text(
            json.dumps(manifest, indent=1, sort_keys=True, default=str)
        )
        self.out.parent.mkdir(parents=True, exist_ok=True)
        old = None
        check_target(self.out, overwrite)
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(self.out, old)
        os.rename(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self._finished = True
        return self.out
