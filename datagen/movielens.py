"""Import a public MovieLens data set into a videorec data set directory.

MovieLens (GroupLens, https://grouplens.org/datasets/movielens/) records star
ratings of films, not video plays. Two layouts are read:

* the ml-latest family (ml-latest-small, ml-latest, ml-25m, ml-32m):
  ``ratings.csv`` (userId,movieId,rating,timestamp), ``movies.csv``
  (movieId,title,genres with genres ``|``-separated) and optionally ``tags.csv``
  (userId,movieId,tag,timestamp);
* ml-100k: ``u.data`` (tab-separated user, item, rating, timestamp), ``u.item``
  (``|``-separated, Latin-1: id, title, release date, video release date, IMDb
  URL, then one 0/1 flag per genre of ``u.genre``), ``u.genre`` and ``u.user``.

The mapping onto the event contract (:mod:`videorec.contract`):

* every rating is one ``watch`` event at the rating's timestamp: a rating is the
  only evidence MovieLens has that the user saw the film;
* a rating of 4 stars or more adds a ``like`` event and one of 2 stars or less a
  ``dislike`` event at the same timestamp; 2.5 to 3.5 stars add nothing;
* films become ``videos``: the id is the movieId, the category the first genre,
  the tags the genres followed (ml-latest only) by the film's most used user
  tags, and ``published_at`` the release date (ml-100k) or Jan 1 of the year in
  the title's trailing ``(YYYY)``;
* raters become ``users``; ml-100k's age becomes an age bucket. There are no
  channels.

Nothing is invented. MovieLens has no watch time, video duration, session,
device, country, channel, description or language, so those fields stay null:
a plausible made-up value would be learnt from by every later stage as if it
were an observation, and could not be told apart from real data afterwards. The
genre "(no genres listed)" (ml-latest) and ml-100k's "unknown" genre flag mean
"no genre", so such films get no category and no genre tags.

Event ids are ``ml-<row>``, ``ml-<row>-like`` and ``ml-<row>-dislike`` where
``row`` is the rating's 0-based position in the ratings file (header excluded),
so the same input always gives the same events, and a re-import can be compared
with an earlier one row for row.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from videorec.contract import AGE_BUCKETS, SCHEMAS, TS
from videorec.dataset import DatasetWriter, check_target

ML_LATEST = "ml-latest"
ML_100K = "ml-100k"
# Files whose presence identifies each layout; the others are optional.
FORMAT_FILES: dict[str, tuple[str, ...]] = {
    ML_LATEST: ("ratings.csv", "movies.csv"),
    ML_100K: ("u.data", "u.item"),
}

LIKE_MIN_RATING = 4.0
DISLIKE_MAX_RATING = 2.0
MAX_USER_TAGS = 10

_GENERATOR = "videorec.datagen.movielens"
_NO_GENRES = "(no genres listed)"
_ML100K_NO_GENRE = "unknown"
_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")
# Lower edges of AGE_BUCKETS; an age under the first edge has no bucket.
_AGE_EDGES = np.array([13, 18, 25, 35, 45, 55])
assert len(_AGE_EDGES) == len(AGE_BUCKETS)
# Bounds the per-call memory of DatasetWriter.write_events, which turns every
# row's day into a Python string: ml-32m has ~45M events.
_EVENTS_PER_WRITE = 1_000_000
_RATING_COLUMNS = ("user_id", "video_id", "rating", "ts")
_MAX_UNIX_S = 10_000_000_000  # 2286-11-20: past it, the numbers are not seconds


def detect_format(path: str | os.PathLike[str]) -> str:
    """``"ml-latest"`` or ``"ml-100k"`` for a MovieLens folder; ValueError otherwise."""
    folder = Path(path)
    if folder.is_dir():
        for fmt, files in FORMAT_FILES.items():
            if all((folder / f).is_file() for f in files):
                return fmt
        problem = "has neither layout's files"
    else:
        problem = "is not a folder"
    raise ValueError(
        f"{folder}: not a MovieLens data set ({problem}); expected ratings.csv and "
        "movies.csv (ml-latest, ml-latest-small, ml-25m, ml-32m) or u.data and u.item "
        "(ml-100k, with u.genre and u.user)"
    )


def import_movielens(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    config_digest: str,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert the MovieLens folder ``path`` into a data set directory at ``out_dir``.

    ``config_digest`` is recorded in the manifest (see ``Config.digest``). An
    existing ``out_dir`` is replaced only with ``overwrite``; otherwise
    :class:`~videorec.dataset.DatasetError` is raised before anything is read.

    Units: source timestamps are Unix seconds and become UTC microsecond
    timestamps; ratings are stars (0.5 to 5). The manifest's ``as_of`` is the
    latest rating's time plus one second (the exclusive end of the data).

    Returns a JSON-able summary: ``out`` (the data set path), ``format``,
    ``counts`` (rows per table), ``events_by_type`` and ``as_of`` (ISO-8601 UTC).
    """
    src = Path(path).resolve()
    fmt = detect_format(src)
    out = Path(out_dir).resolve()
    # Replacing the input (or a folder holding it) would delete the source data.
    if out == src or out in src.parents:
        raise ValueError(f"{out}: the output folder must not be or contain the input {src}")
    # Fail before a possibly long read rather than at finish(), as the writer would.
    check_target(out, overwrite)

    if fmt == ML_LATEST:
        ratings = _read_ratings(src / "ratings.csv", header=True, delimiter=",")
        videos = _ml_latest_videos(src / "movies.csv", src / "tags.csv")
        users = _users_table(_unique_users(ratings), {})
    else:
        ratings = _read_ratings(src / "u.data", header=False, delimiter="\t")
        videos = _ml_100k_videos(src / "u.item", src / "u.genre")
        buckets = _ml_100k_age_buckets(src / "u.user")
        ids = np.union1d(_unique_users(ratings), np.fromiter(buckets, np.int64, len(buckets)))
        users = _users_table(ids, buckets)
    if ratings.num_rows == 0:
        raise ValueError(f"{src}: the ratings file has no rows; there is nothing to import")

    events, events_by_type = _events(ratings)
    last_s = pc.max(ratings["ts"]).as_py()
    as_of = dt.datetime.fromtimestamp(last_s + 1, dt.UTC).isoformat()
    counts = {
        "watch_events": events.num_rows,
        "videos": videos.num_rows,
        "channels": 0,
        "users": users.num_rows,
    }
    manifest = {
        "source": "movielens",
        "format": fmt,
        "path": str(src),
        "as_of": as_of,
        "config_digest": config_digest,
        "counts": counts,
        "generator": _GENERATOR,
    }
    with DatasetWriter(out) as writer:
        for start in range(0, events.num_rows, _EVENTS_PER_WRITE):
            writer.write_events(events.slice(start, _EVENTS_PER_WRITE))
        writer.write_table("videos", videos)
        writer.write_table("users", users)
        written = writer.finish(manifest, overwrite=overwrite)
    return {
        "out": str(written),
        "format": fmt,
        "counts": counts,
        "events_by_type": events_by_type,
        "as_of": as_of,
        # MovieLens spans decades: the default 30-day window would hold almost none of
        # it, so the next step names the profile made for such data.
        "next_command": f"videorec train --profile movielens --data {shlex.quote(str(written))}",
    }


def _read_ratings(file: Path, *, header: bool, delimiter: str) -> pa.Table:
    """Ratings as int64 user_id, video_id, ts (Unix seconds) and float64 rating."""
    names = ["userId", "movieId", "rating", "timestamp"] if header else list(_RATING_COLUMNS)
    types = dict(zip(names, [pa.int64(), pa.int64(), pa.float64(), pa.int64()], strict=True))
    try:
        table = pacsv.read_csv(
            file,
            read_options=pacsv.ReadOptions(column_names=None if header else names),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=names),
        )
    except (pa.ArrowInvalid, pa.ArrowKeyError) as err:
        raise ValueError(f"{file}: cannot read ratings as {', '.join(names)}: {err}") from None
    table = table.rename_columns(list(_RATING_COLUMNS)).combine_chunks()
    for name in _RATING_COLUMNS:
        if table[name].null_count:
            raise ValueError(f"{file}: {table[name].null_count} ratings have an empty {name}")
    # MovieLens rates 0.5 to 5 stars at Unix seconds; anything else is another file (or a
    # corrupt one), which would otherwise import as likes, dislikes or years past 9999.
    checks = (
        ("rating", (0.5, 5.0), "stars outside 0.5..5"),
        ("ts", (0, _MAX_UNIX_S), "timestamp that is not Unix seconds of 1970..2286 (milliseconds?)"),
    )  # fmt: skip
    for column, (lo, hi), what in checks:
        bad = pc.or_(pc.less(table[column], lo), pc.greater(table[column], hi))
        n = pc.sum(bad).as_py() or 0
        if n:
            first = table[column][pc.index(bad, True).as_py()].as_py()
            raise ValueError(f"{file}: {n} ratings have a {what}, e.g. {first}")
    return table


def _events(ratings: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    """The watch/like/dislike events of all ratings, sorted by ts then event_id,
    and the number of events of each type."""
    n = ratings.num_rows
    row = pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string())
    base = pa.table(
        {
            "event_id": pc.binary_join_element_wise("ml-", row, ""),
            "ts": pc.multiply_checked(ratings["ts"], 1_000_000).cast(TS),
            "user_id": ratings["user_id"],
            "video_id": ratings["video_id"],
        }
    )
    rating = ratings["rating"]
    kinds = (
        ("watch", None),
        ("like", pc.greater_equal(rating, LIKE_MIN_RATING)),
        ("dislike", pc.less_equal(rating, DISLIKE_MAX_RATING)),
    )
    parts = []
    counts: dict[str, int] = {}
    for event_type, mask in kinds:
        part = base if mask is None else base.filter(mask)
        if mask is not None:
            ids = pc.binary_join_element_wise(part["event_id"], f"-{event_type}", "")
            part = part.set_column(0, "event_id", ids)
        k = counts[event_type] = part.num_rows
        part = part.append_column("event_type", pa.repeat(event_type, k))
        for field in SCHEMAS["watch_events"]:  # what MovieLens does not know: null
            if field.name not in part.column_names:
                part = part.append_column(field.name, pa.nulls(k, field.type))
        parts.append(part)
    events = pa.concat_tables(parts).select(SCHEMAS["watch_events"].names)
    events = events.sort_by([("ts", "ascending"), ("event_id", "ascending")]).combine_chunks()
    return events, counts


def _unique_users(ratings: pa.Table) -> np.ndarray:
    return np.unique(ratings["user_id"].to_numpy())


def _title_year(title: str) -> dt.datetime | None:
    """Jan 1 (UTC) of the year in a title's trailing ``(YYYY)``, if it has one."""
    m = _TITLE_YEAR.search(title)
    if m is None or int(m.group(1)) < 1:
        return None
    return dt.datetime(int(m.group(1)), 1, 1, tzinfo=dt.UTC)


def _read_text_table(file: Path, *, sep: str, encoding: str, **kwargs: Any) -> pd.DataFrame:
    """A delimited file as strings; ValueError naming the file when it cannot be parsed."""
    try:
        return pd.read_csv(
            file, sep=sep, encoding=encoding, dtype=str, keep_default_na=False, **kwargs
        )
    except (ValueError, pd.errors.ParserError) as err:
        raise ValueError(f"{file}: cannot read: {err}") from None


def _ids(file: Path, column: pd.Series) -> np.ndarray:
    try:
        return pd.to_numeric(column.str.strip(), errors="raise").astype(np.int64).to_numpy()
    except (ValueError, TypeError) as err:
        raise ValueError(f"{file}: an id is not an integer: {err}") from None


def _ml_latest_videos(movies_file: Path, tags_file: Path) -> pa.Table:
    movies = _read_text_table(movies_file, sep=",", encoding="utf-8")
    missing = {"movieId", "title", "genres"} - set(movies.columns)
    if missing:
        raise ValueError(f"{movies_file}: missing columns {sorted(missing)}")
    ids = _ids(movies_file, movies["movieId"])
    titles = movies["title"].str.strip().tolist()
    genres = [
        [g for g in s.split("|") if g] if s.strip() not in ("", _NO_GENRES) else []
        for s in movies["genres"]
    ]
    user_tags = _top_user_tags(tags_file)
    tags = [_merge_tags(g, user_tags.get(int(i), ())) for g, i in zip(genres, ids, strict=True)]
    published = [_title_year(t) for t in titles]
    return _videos_table(ids, titles, genres, tags, published)


def _top_user_tags(file: Path) -> dict[int, list[str]]:
    """Per movie, its MAX_USER_TAGS most used tags (lower-cased), by count then name."""
    if not file.is_file():
        return {}
    raw = _read_text_table(file, sep=",", encoding="utf-8")
    missing = {"movieId", "tag"} - set(raw.columns)
    if missing:
        raise ValueError(f"{file}: missing columns {sorted(missing)}")
    # Users spell the same tag with different case and padding; counting them as
    # one tag is what makes "most frequent" meaningful.
    df = pd.DataFrame({"movieId": _ids(file, raw["movieId"]), "tag": raw["tag"].str.strip()})
    df["tag"] = df["tag"].str.lower()
    df = df[df["tag"] != ""]
    counted = df.groupby(["movieId", "tag"]).size().reset_index(name="n")
    counted = counted.sort_values(
        ["movieId", "n", "tag"], ascending=[True, False, True], kind="stable"
    )
    top = counted.groupby("movieId").head(MAX_USER_TAGS)
    return {int(k): list(v) for k, v in top.groupby("movieId")["tag"]}


def _merge_tags(genres: list[str], user_tags: Sequence[str]) -> list[str]:
    # A user tag "comedy" on a Comedy film says nothing the genre does not.
    seen = {g.casefold() for g in genres}
    return [*genres, *(t for t in user_tags if t.casefold() not in seen)]


def _ml_100k_genres(file: Path) -> list[str]:
    """Genre names of u.genre in flag order (the index after the ``|``)."""
    if not file.is_file():
        raise ValueError(f"{file}: missing; ml-100k needs u.genre to name u.item's genre flags")
    by_index: dict[int, str] = {}
    for line in file.read_text(encoding="latin-1").splitlines():
        if not line.strip():
            continue
        name, _, index = line.rpartition("|")
        try:
            by_index[int(index)] = name.strip()
        except ValueError:
            raise ValueError(f"{file}: line {line!r} is not 'name|index'") from None
    if sorted(by_index) != list(range(len(by_index))):
        raise ValueError(f"{file}: genre indexes are not 0..{len(by_index) - 1}")
    return [by_index[i] for i in range(len(by_index))]


def _ml_100k_videos(item_file: Path, genre_file: Path) -> pa.Table:
    genre_names = _ml_100k_genres(genre_file)
    items = _read_text_table(
        item_file, sep="|", encoding="latin-1", header=None, quoting=csv.QUOTE_NONE
    )
    if items.shape[1] != 5 + len(genre_names):
        raise ValueError(
            f"{item_file}: {items.shape[1]} columns, expected 5 + {len(genre_names)} genre flags "
            f"(id|title|release date|video release date|IMDb URL|flags in u.genre order)"
        )
    ids = _ids(item_file, items[0])
    titles = items[1].str.strip().tolist()
    try:
        flags = items.iloc[:, 5:].astype(np.int64).to_numpy() == 1
    except ValueError as err:
        raise ValueError(f"{item_file}: a genre flag is not 0/1: {err}") from None
    keep = np.array([g != _ML100K_NO_GENRE for g in genre_names])
    names = np.array(genre_names, dtype=object)
    genres = [names[row & keep].tolist() for row in flags]
    released = pd.to_datetime(items[2].str.strip(), format="%d-%b-%Y", errors="coerce")
    published = [
        _title_year(t) if pd.isna(r) else dt.datetime(r.year, r.month, r.day, tzinfo=dt.UTC)
        for t, r in zip(titles, released, strict=True)
    ]
    return _videos_table(ids, titles, genres, genres, published)


def _ml_100k_age_buckets(file: Path) -> dict[int, str | None]:
    """user id -> age bucket from u.user (missing file: no demographics)."""
    if not file.is_file():
        return {}
    users = _read_text_table(file, sep="|", encoding="latin-1", header=None, quoting=csv.QUOTE_NONE)
    ids = _ids(file, users[0])
    try:
        ages = users[1].str.strip().astype(np.int64).to_numpy()
    except ValueError as err:
        raise ValueError(f"{file}: an age is not an integer: {err}") from None
    slot = np.searchsorted(_AGE_EDGES, ages, side="right")
    labels = np.array([None, *AGE_BUCKETS], dtype=object)[slot]
    out: dict[int, str | None] = {}
    for i, label in zip(ids.tolist(), labels.tolist(), strict=True):
        # The first row of a repeated id wins, as in the contract's validator.
        out.setdefault(i, label)
    return out


def _videos_table(
    ids: np.ndarray,
    titles: list[str],
    genres: list[list[str]],
    tags: list[list[str]],
    published: list[dt.datetime | None],
) -> pa.Table:
    n = len(ids)
    schema = SCHEMAS["videos"]
    columns = {
        "video_id": pa.array(ids, pa.int64()),
        "title": pa.array(titles, pa.string()),
        "description": pa.nulls(n, pa.string()),
        "tags": pa.array(tags, schema.field("tags").type),
        "category": pa.array([g[0] if g else None for g in genres], pa.string()),
        "channel_id": pa.nulls(n, pa.int64()),
        "duration_s": pa.nulls(n, pa.float64()),
        "published_at": pa.array(published, TS),
        "language": pa.nulls(n, pa.string()),
    }
    return pa.table([columns[name] for name in schema.names], names=schema.names)


def _users_table(ids: np.ndarray, buckets: dict[int, str | None]) -> pa.Table:
    n = len(ids)
    schema = SCHEMAS["users"]
    columns = {
        "user_id": pa.array(ids, pa.int64()),
        "country": pa.nulls(n, pa.string()),
        "language": pa.nulls(n, pa.string()),
        "signup_ts": pa.nulls(n, TS),
        "age_bucket": pa.array([buckets.get(int(i)) for i in ids], pa.string()),
        "declared_interests": pa.nulls(n, schema.field("declared_interests").type),
    }
    return pa.table([columns[name] for name in schema.names], names=schema.names)
