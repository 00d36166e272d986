"""videorec.examples: a features version's examples read by reference, and bad versions.

The end-to-end check (a reference reads the same rows as a full pass's table) is in
tests/test_features_incremental.py; these tests pin the rule row by row."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from videorec.dataset import DatasetError
from videorec.evaluation.interactions import split_from_features
from videorec.examples import (
    COLUMNS,
    CUTOFFS_DIR,
    LIKED_DIR,
    REFERENCE_DIR,
    REFERENCE_FILE,
    ExampleRule,
    ExamplesError,
    open_examples,
    read_examples,
)
from videorec.precompute.inputs import InputError, read_plays

UTC = dt.UTC
START = dt.datetime(2026, 10, 2, tzinfo=UTC)
END = dt.datetime(2026, 11, 1, tzinfo=UTC)
US = 1_000_000
RULE = ExampleRule(
    window_start_us=int(START.timestamp()) * US, window_end_us=int(END.timestamp()) * US,
    cap=2, positive_min_completion=0.5, weight_watch_time_cap_s=600.0,
    weight_watch_time_exp=0.5, weight_completion_exp=1.0, like_bonus=0.25,
)  # fmt: skip
TS = pa.timestamp("us", tz="UTC")


def _day_rows() -> pa.Table:
    """A day's plays with their history as the feature stage's day job writes them."""
    at = lambda d, h: dt.datetime(2026, 10, d, h, tzinfo=UTC)  # noqa: E731
    rows = [
        # (event, user, video, ts, completion, watch s, history, history ts)
        ("a", 1, 10, at(20, 9), 0.9, 90.0, [7, 8], [at(1, 1), at(3, 1)]),  # 7 is before START
        ("b", 1, 11, at(20, 10), 0.2, 20.0, [7, 8, 10], [at(1, 1), at(3, 1), at(20, 9)]),
        ("c", 1, 12, at(20, 11), None, None, [], []),  # no completion: positive, weight 1
        ("d", 1, 13, at(20, 12), 0.8, None, [10], [at(20, 9)]),  # no watch time: min skips
        ("e", 2, 10, at(21, 3), 0.1, 10.0, [], []),  # short, but liked before the split
        ("f", 2, 11, at(21, 4), 0.1, 10.0, [], []),  # short: not an example
    ]
    cols = list(zip(*rows, strict=True))
    return pa.table({
        "user_id": pa.array(cols[1], pa.int64()), "event_id": pa.array(cols[0]),
        "ts": pa.array(cols[3], TS), "video_id": pa.array(cols[2], pa.int64()),
        "device": pa.array(["tv"] * len(rows)), "country": pa.array(["FR"] * len(rows)),
        "watch_time_s": pa.array(cols[5], pa.float64()),
        "completion": pa.array(cols[4], pa.float64()),
        "history": pa.array(cols[6], pa.list_(pa.int64())),
        "history_ts": pa.array(cols[7], pa.list_(TS)),
    })  # fmt: skip


def _reference(root: Path, days: Path, cut: list[tuple[int, dt.datetime, str]]) -> Path:
    """A features version folder whose examples refer to the Parquet files in ``days``."""
    ref = root / REFERENCE_DIR
    (ref / LIKED_DIR).mkdir(parents=True)
    (ref / CUTOFFS_DIR).mkdir()
    # (3, 11) makes user 2's unliked play of video 11 a pair of known ids, not a like.
    liked = pa.table({"user_id": [2, 3], "video_id": [10, 11]})
    pq.write_table(liked, ref / LIKED_DIR / "p.parquet")
    pq.write_table(
        pa.table({
            "user_id": pa.array([c[0] for c in cut], pa.int64()),
            "cut_ts": pa.array([c[1] for c in cut], TS),
            "cut_id": pa.array([c[2] for c in cut], pa.string()),
        }),
        ref / CUTOFFS_DIR / "p.parquet",
    )  # fmt: skip
    files = sorted(p.name for p in days.glob("*.parquet"))
    spec = {"rule": RULE.__dict__, "days": [
        {"day": "2026-10-20", "name": "features-history", "version": "v1", "uri": str(days),
         "files": files},
    ]}  # fmt: skip
    (ref / REFERENCE_FILE).write_text(json.dumps(spec))
    return root


@pytest.fixture
def version(tmp_path: Path) -> Path:
    days = tmp_path / "history" / "examples"
    days.mkdir(parents=True)
    pq.write_table(_day_rows(), days / "part-0.parquet", row_group_size=4)
    # User 1 has 3 positives (a, c, d; b is short): the cap of 2 keeps c and d.
    return _reference(
        tmp_path / "features", days, [(1, dt.datetime(2026, 10, 20, 11, tzinfo=UTC), "c")]
    )


def test_a_reference_reads_the_rule_row_by_row(version: Path) -> None:
    t = read_examples(version, COLUMNS)
    assert t.schema.names == list(COLUMNS)
    got = {r["event_id"]: r for r in t.to_pylist()}
    assert sorted(got) == ["c", "d", "e"]  # a: capped out; b, f: short and not liked
    assert got["c"]["weight"] == 1.0 and got["c"]["history"] == []
    # 0.8 * (min(null, 600) / 600) ** 0.5: Spark's least() skips the null watch time.
    assert got["d"]["weight"] == pytest.approx(0.8) and got["d"]["history_len"] == 1
    assert got["e"]["liked"] and got["e"]["weight"] == pytest.approx(0.1 * (10 / 600) ** 0.5 + 0.25)
    assert got["d"]["hour"] == 12 and got["e"]["hour"] == 3
    assert got["e"]["example_age_days"] == pytest.approx(
        (END - dt.datetime(2026, 10, 21, 3, tzinfo=UTC)).total_seconds() / 86400
    )


def test_the_history_keeps_only_the_window(tmp_path: Path) -> None:
    days = tmp_path / "history"
    days.mkdir()
    pq.write_table(_day_rows(), days / "part-0.parquet")
    got = read_examples(
        _reference(tmp_path / "f", days, []), ["event_id", "history", "history_len"]
    )
    rows = {r["event_id"]: r for r in got.to_pylist()}
    assert rows["a"]["history"] == [8] and rows["a"]["history_len"] == 1  # 7 was before START
    assert rows["d"]["history"] == [10]


def test_row_groups_are_shards_and_batches_are_per_group(version: Path) -> None:
    src = open_examples(version)
    assert src.by_reference and src.row_groups(0) == [4, 2]  # stored rows, from the footer
    first = [e for t in src.batches(["event_id"], 0, [0]) for e in t["event_id"].to_pylist()]
    second = [e for t in src.batches(["event_id"], 0, [1]) for e in t["event_id"].to_pylist()]
    assert first == ["c", "d"] and second == ["e"]


def test_a_resolver_reads_the_local_copy_of_each_version(version: Path, tmp_path: Path) -> None:
    copy = tmp_path / "cache" / "v1"
    (copy).mkdir(parents=True)
    for p in (tmp_path / "history" / "examples").glob("*.parquet"):
        (copy / p.name).write_bytes(p.read_bytes())
    asked = []

    def resolve(name: str, v: str) -> Path:
        asked.append((name, v))
        return copy

    src = open_examples(version, resolve)
    assert asked == [("features-history", "v1")] and src.files == (str(copy / "part-0.parquet"),)
    assert src.read(["event_id"]).num_rows == 3


def test_bad_versions_are_named_not_tracebacks(version: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ExamplesError, match="no examples/ and no examples-ref"):
        open_examples(empty)
    with pytest.raises(DatasetError, match="no examples/ and no examples-ref"):
        split_from_features(empty)
    with pytest.raises(ExamplesError, match="no columns"):
        next(open_examples(version).batches(["nope"], 0))
    # A day file gone (a collected history version): the reader names it.
    (tmp_path / "history" / "examples" / "part-0.parquet").unlink()
    with pytest.raises(ExamplesError, match=r"part-0\.parquet: an examples file is unreadable"):
        read_examples(version, ["event_id"])
    with pytest.raises(InputError, match="examples unreadable"):
        read_plays(version)
    (version / REFERENCE_DIR / REFERENCE_FILE).write_text('{"rule": {}}')
    with pytest.raises(ExamplesError, match=r"reference\.json: malformed"):
        open_examples(version)


def test_an_examples_table_reads_as_stored(tmp_path: Path) -> None:
    table = tmp_path / "v" / "examples"
    table.mkdir(parents=True)
    stored = pa.table({"user_id": np.arange(5, dtype=np.int64), "event_id": list("abcde")})
    pq.write_table(stored, table / "part-0.parquet", row_group_size=2)
    src = open_examples(tmp_path / "v")
    assert not src.by_reference and src.row_groups(0) == [2, 2, 1]
    assert src.read(["event_id"])["event_id"].to_pylist() == list("abcde")
    assert open_examples(table).files == src.files  # the table's own folder opens it too


def test_one_scan_gives_the_reads_counts_and_values_of_separate_passes(version: Path) -> None:
    src = open_examples(version)
    scan = src.scan(["event_id", "weight"], ["device", "country"])
    assert scan.table.equals(src.read(["event_id", "weight"]))
    # The rule's examples per row group, not the stored rows of the footer ([4, 2]).
    assert scan.row_groups == [(0, 0, 2), (0, 1, 1)]
    assert scan.distinct == {"device": {"tv"}, "country": {"FR"}}
    counts_only = src.scan([])  # a pass for the counts alone still counts
    assert counts_only.row_groups == scan.row_groups and counts_only.table.num_columns == 0


def test_a_table_scans_as_stored_with_its_nulls_left_out(tmp_path: Path) -> None:
    table = tmp_path / "v" / "examples"
    table.mkdir(parents=True)
    stored = pa.table({
        "user_id": np.arange(5, dtype=np.int64),
        "device": ["tv", None, "web", "tv", "web"],
    })  # fmt: skip
    pq.write_table(stored, table / "part-0.parquet", row_group_size=2)
    scan = open_examples(tmp_path / "v").scan(["user_id"], ["device"])
    assert scan.row_groups == [(0, 0, 2), (0, 1, 2), (0, 2, 1)]
    assert scan.table["user_id"].to_pylist() == [0, 1, 2, 3, 4]
    assert scan.distinct == {"device": {"tv", "web"}}


def test_the_split_takes_examples_read_already(version: Path) -> None:
    eval_dir = version / "eval"
    eval_dir.mkdir()
    pq.write_table(
        pa.table({
            "user_id": pa.array([1], pa.int64()), "video_id": pa.array([99], pa.int64()),
            "ts": pa.array([dt.datetime(2026, 10, 31, tzinfo=UTC)], TS), "event_type": ["watch"],
        }),
        eval_dir / "p.parquet",
    )  # fmt: skip
    keys = ["user_id", "video_id", "ts"]
    read_here = split_from_features(version)
    given = split_from_features(version, train_examples=read_examples(version, COLUMNS))
    assert np.array_equal(given.train.user_ids, read_here.train.user_ids)
    assert np.array_equal(given.train.item_ids, read_here.train.item_ids)
    assert given.stats == read_here.stats
    with pytest.raises(DatasetError, match="train_examples lack a column"):
        split_from_features(version, train_examples=read_examples(version, keys[:2]))


def test_liked_pairs_beyond_the_int64_codes_are_refused_not_miscoded(
    version: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import videorec.examples as ex

    # The 2 users x 2 videos of the fixture's liked pairs need 4 codes; at the real
    # limit that is some 3e9 of each, beyond what a test can build.
    monkeypatch.setattr(ex, "_CODE_LIMIT", 3)
    with pytest.raises(ExamplesError, match="2 users x 2 videos among the liked pairs"):
        open_examples(version)
