from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest

from videorec.contract import (
    REASON_COLUMN,
    ContractViolation,
    Reason,
    conform,
    validate_dimension,
    validate_events,
)
from videorec.dataset import load_validated, read_manifest, read_quarantine

AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
T0 = dt.datetime(2026, 10, 30, 12, tzinfo=dt.UTC)


def _event(i: int, **over: object) -> dict[str, object]:
    row: dict[str, object] = {
        "event_id": f"e{i}",
        "ts": T0 + dt.timedelta(minutes=i),
        "user_id": 1,
        "video_id": 10,
        "event_type": "watch",
        "watch_time_s": 60.0,
        "video_duration_s": 100.0,
        "session_id": "s1",
        "device": "mobile",
        "country": "US",
    }
    row.update(over)
    return row


def _table(rows: list[dict[str, object]]) -> pa.Table:
    return conform(pa.Table.from_pylist(rows), "watch_events")


def test_each_kind_of_bad_row_gets_its_reason() -> None:
    good = [
        _event(0),
        _event(1, event_type="like", watch_time_s=None),
        _event(2, watch_time_s=300.0),  # exactly 3x the duration is allowed
        _event(3, video_duration_s=None),  # unknown duration: the 3x rule cannot apply
        _event(4, ts=AS_OF - dt.timedelta(microseconds=1)),
    ]
    bad = [
        (_event(10, user_id=None), Reason.NULL_ID),
        (_event(11, video_id=None), Reason.NULL_ID),
        (_event(12, event_id=None), Reason.NULL_ID),
        (_event(13, ts=None), Reason.NULL_TIMESTAMP),
        (_event(14, event_type="view"), Reason.UNKNOWN_EVENT_TYPE),
        (_event(15, event_type=None), Reason.UNKNOWN_EVENT_TYPE),
        (_event(16, watch_time_s=-1.0), Reason.NEGATIVE_WATCH_TIME),
        (_event(17, watch_time_s=300.5), Reason.WATCH_TIME_OVER_3X_DURATION),
        (_event(18, ts=AS_OF), Reason.FUTURE_TIMESTAMP),
        (_event(19, video_id=999), Reason.UNKNOWN_VIDEO),
        # Same id as good row 0, later in time: the copy is the duplicate.
        (_event(0, ts=T0 + dt.timedelta(hours=1)), Reason.DUPLICATE_ID),
        # Two problems: the first rule in order wins.
        (_event(20, user_id=None, event_type="view"), Reason.NULL_ID),
    ]
    rows = good[:2] + [r for r, _ in bad[:6]] + good[2:] + [r for r, _ in bad[6:]]
    res = validate_events(_table(rows), [10, 11], AS_OF)
    assert res.rows_in == len(rows)
    assert res.valid.to_pylist() == _table(good).to_pylist()  # good rows untouched, in order
    reasons = res.quarantined[REASON_COLUMN].to_pylist()
    assert reasons == [r.value for _, r in bad]
    assert res.counts == {
        "null_id": 4,
        "null_timestamp": 1,
        "unknown_event_type": 2,
        "negative_watch_time": 1,
        "watch_time_over_3x_duration": 1,
        "future_timestamp": 1,
        "unknown_video": 1,
        "duplicate_id": 1,
    }
    # The quarantined rows keep every original column.
    assert (
        res.quarantined.drop_columns([REASON_COLUMN]).to_pylist()
        == _table([r for r, _ in bad]).to_pylist()
    )


def test_duplicate_keeps_the_earliest_even_when_it_comes_later_in_the_file() -> None:
    late = _event(0, ts=T0 + dt.timedelta(hours=2), session_id="late")
    early = _event(0, ts=T0, session_id="early")
    res = validate_events(_table([late, early]), [10], AS_OF)
    assert res.valid["session_id"].to_pylist() == ["early"]
    assert res.counts == {"duplicate_id": 1}


def test_copy_of_a_bad_row_does_not_evict_its_good_twin() -> None:
    bad_first = _event(0, ts=T0, watch_time_s=-5.0)
    good_later = _event(0, ts=T0 + dt.timedelta(hours=1))
    res = validate_events(_table([bad_first, good_later]), [10], AS_OF)
    assert res.valid.num_rows == 1 and res.counts == {"negative_watch_time": 1}


def test_share_check() -> None:
    res = validate_events(_table([_event(0), _event(1, watch_time_s=-1.0)]), [10], AS_OF)
    assert res.invalid_share == 0.5
    res.check(0.5)
    with pytest.raises(ContractViolation, match=r"1 of 2 rows.*negative_watch_time"):
        res.check(0.49)


def test_naive_as_of_and_wrong_columns_are_errors() -> None:
    with pytest.raises(ValueError, match="timezone"):
        validate_events(_table([_event(0)]), [10], dt.datetime(2026, 11, 1))
    t = pa.Table.from_pylist([_event(0)]).drop_columns(["country"])
    with pytest.raises(ValueError, match=r"missing \['country'\]"):
        conform(t, "watch_events")
    t = pa.Table.from_pylist([{**_event(0), "rating": 5}])
    with pytest.raises(ValueError, match=r"unknown \['rating'\]"):
        conform(t, "watch_events")
    t = pa.Table.from_pylist([{**_event(0), "user_id": "alice"}])
    with pytest.raises(ValueError, match="user_id"):
        conform(t, "watch_events")


def test_dimension_tables() -> None:
    videos = pa.Table.from_pylist(
        [
            {"video_id": 1, "title": "a"},
            {"video_id": None, "title": "no id"},
            {"video_id": 1, "title": "dup"},
            {"video_id": 2, "title": "b"},
        ]
    )
    for col in (
        "description",
        "tags",
        "category",
        "channel_id",
        "duration_s",
        "published_at",
        "language",
    ):
        videos = videos.append_column(col, pa.nulls(4))
    res = validate_dimension(videos, "videos")
    assert res.valid["title"].to_pylist() == ["a", "b"]
    assert res.counts == {"null_id": 1, "duplicate_id": 1}
    with pytest.raises(ValueError, match="not a dimension table"):
        validate_dimension(videos, "watch_events")


def test_generated_corruption_is_quarantined_exactly(
    corrupt_platform: Path, tmp_path: Path
) -> None:
    injected = read_manifest(corrupt_platform)["injected_corruption"]
    assert set(injected) == {
        "null_id", "unknown_event_type", "negative_watch_time", "watch_time_over_3x_duration",
        "future_timestamp", "unknown_video", "duplicate_id",
    }  # fmt: skip
    vd = load_validated(corrupt_platform, max_invalid_share=0.05, quarantine_dir=tmp_path / "q")
    assert vd.results["watch_events"].counts == injected
    q = read_quarantine(tmp_path / "q", "watch_events")
    assert q.num_rows == sum(injected.values())
    by_reason = {r: q[REASON_COLUMN].to_pylist().count(r) for r in injected}
    assert by_reason == injected
    # Nothing lost: valid + quarantined = everything read.
    res = vd.results["watch_events"]
    assert res.valid.num_rows + res.rows_quarantined == res.rows_in


def test_too_many_bad_rows_fails_but_quarantine_is_written(
    corrupt_platform: Path, tmp_path: Path
) -> None:
    with pytest.raises(ContractViolation, match="watch_events"):
        load_validated(corrupt_platform, max_invalid_share=0.001, quarantine_dir=tmp_path / "q")
    assert read_quarantine(tmp_path / "q", "watch_events").num_rows > 0
