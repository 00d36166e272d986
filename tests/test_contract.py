from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest

from videorec.config import parse_config
from videorec.contract import (
    EVENT_RULES,
    REASON_COLUMN,
    SCHEMAS,
    TS,
    ContractViolation,
    Reason,
    conform,
    validate_dimension,
    validate_events,
)
from videorec.dataset import DatasetWriter, load_validated, read_manifest, read_quarantine

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


def test_airflow_logical_dates_are_accepted_as_as_of() -> None:
    """Airflow hands tasks a pendulum DateTime, not a datetime: the same instant must draw
    the same line, to the microsecond, whatever its time zone."""
    import pendulum

    rows = [_event(0, ts=AS_OF - dt.timedelta(microseconds=1)), _event(1, ts=AS_OF)]
    want = validate_events(_table(rows), [10], AS_OF).counts
    assert want == {"future_timestamp": 1}
    for as_of in (
        pendulum.instance(AS_OF),
        pendulum.instance(AS_OF).in_timezone("Asia/Kolkata"),
        pendulum.datetime(2026, 10, 31, 20, tz="America/New_York"),  # 00:00 UTC Nov 1
    ):
        assert validate_events(_table(rows), [10], as_of).counts == want


def test_impressions_and_clicks_are_events_but_not_plays() -> None:
    from videorec.contract import EVENT_TYPES, PLAYBACK_EVENT_TYPES

    assert {"impression", "click"} <= set(EVENT_TYPES)
    assert not {"impression", "click"} & set(PLAYBACK_EVENT_TYPES)
    served = {"request_id": "q1", "source": "personal", "watch_time_s": None}
    good = [
        _event(0, event_type="impression", position=0, **served),
        _event(1, event_type="impression", position=19, **served),
        _event(2, event_type="click", **served),  # no position: fine
        _event(3, event_type="impression", **{**served, "request_id": None}),  # all nullable
    ]
    bad = [
        (_event(10, event_type="impression", position=-1, **served), Reason.NEGATIVE_POSITION),
        (_event(11, event_type="click", position=-3, **served), Reason.NEGATIVE_POSITION),
        # The event-type rule comes first.
        (_event(12, event_type="shown", position=-1, **served), Reason.UNKNOWN_EVENT_TYPE),
    ]
    res = validate_events(_table(good + [r for r, _ in bad]), [10], AS_OF)
    assert res.valid["event_id"].to_pylist() == ["e0", "e1", "e2", "e3"]
    assert res.valid["position"].to_pylist() == [0, 19, None, None]
    assert res.quarantined[REASON_COLUMN].to_pylist() == [r.value for _, r in bad]


def test_rows_without_the_added_columns_still_conform() -> None:
    """Data written before request_id, position and source existed reads them as null."""
    from videorec.contract import ADDED_COLUMNS

    t = conform(pa.Table.from_pylist([_event(0)]), "watch_events")
    assert t.schema.names == SCHEMAS["watch_events"].names
    assert ADDED_COLUMNS["watch_events"] == ("request_id", "position", "source")
    assert t.select(list(ADDED_COLUMNS["watch_events"])).to_pylist() == [
        {"request_id": None, "position": None, "source": None}
    ]
    assert t.schema.field("position").type == pa.int32()
    # A producer's wider integer is cast; a value that does not fit is an error naming it.
    t = conform(pa.Table.from_pylist([{**_event(0), "position": 3}]), "watch_events")
    assert t["position"].to_pylist() == [3]
    with pytest.raises(ValueError, match="position"):
        conform(pa.Table.from_pylist([{**_event(0), "position": 2**40}]), "watch_events")


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
    # Every quarantine reason of a row-level rule is injected (and counted back exactly).
    assert set(injected) == {r.value for r in EVENT_RULES}
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


# ---- non-finite and unbounded watch times ------------------------------------------


def test_non_finite_and_unbounded_watch_times_are_quarantined() -> None:
    nan, inf = float("nan"), float("inf")
    good = [
        _event(0),
        _event(1, video_duration_s=None, watch_time_s=86_400.0),  # unknown duration, at the cap
        _event(2, event_type="like", watch_time_s=None, video_duration_s=None),
    ]
    bad = [
        (_event(10, watch_time_s=nan), "non_finite_watch_time"),
        (_event(11, watch_time_s=inf), "non_finite_watch_time"),
        (_event(12, watch_time_s=-inf), "non_finite_watch_time"),  # not "negative"
        # The browser case: NaN duration until the metadata loads.
        (_event(13, video_duration_s=nan), "invalid_duration"),
        (_event(14, video_duration_s=inf), "invalid_duration"),
        (_event(15, video_duration_s=0.0), "invalid_duration"),
        (_event(16, video_duration_s=-3.0), "invalid_duration"),
        (_event(17, event_type="like", watch_time_s=None, video_duration_s=nan), "invalid_duration"),
        (_event(18, video_duration_s=None, watch_time_s=86_400.5), "watch_time_over_cap"),
        (_event(19, video_duration_s=None, watch_time_s=1e12), "watch_time_over_cap"),
        # Garbage beside equally garbage: the 3x rule passes it, the caps do not.
        (_event(20, video_duration_s=1e12, watch_time_s=1e12), "invalid_duration"),
        (_event(21, video_duration_s=1e300, watch_time_s=1e300), "invalid_duration"),
        (_event(22, video_duration_s=40_000.0, watch_time_s=90_000.0), "watch_time_over_cap"),
    ]  # fmt: skip
    res = validate_events(_table(good + [r for r, _ in bad]), [10], AS_OF)
    assert res.valid["event_id"].to_pylist() == ["e0", "e1", "e2"]
    assert res.quarantined[REASON_COLUMN].to_pylist() == [r for _, r in bad]
    assert res.rows_in == res.valid.num_rows + res.rows_quarantined
    # The cap is the config's.
    strict = parse_config({"contract": {"max_watch_time_s": 3600}}).contract
    res = validate_events(_table(good), [10], AS_OF, limits=strict)
    assert res.counts == {"watch_time_over_cap": 1}


# ---- timestamp floor, partitions, unknown users, unknown channels -------------------


def test_timestamp_floor_is_configured() -> None:
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    rows = [_event(0), _event(1, ts=epoch), _event(2, ts=dt.datetime(1999, 6, 1, tzinfo=dt.UTC))]
    res = validate_events(_table(rows), [10], AS_OF)
    assert res.counts == {"timestamp_before_floor": 1}  # the default floor: 1995-01-01
    later = parse_config({"contract": {"min_timestamp": "2000-01-01"}}).contract
    res = validate_events(_table(rows), [10], AS_OF, limits=later)
    assert res.counts == {"timestamp_before_floor": 2}
    assert res.quarantined["event_id"].to_pylist() == ["e1", "e2"]


def _write_dataset(
    out: Path,
    events: list[dict[str, object]],
    arrival: list[dt.datetime],
    *,
    videos: list[dict[str, object]] | None = None,
    channels: list[dict[str, object]] | None = None,
    users: tuple[int, ...] = (1,),
) -> Path:
    """A data set whose events are filed (dt=) by ``arrival``, as ingestion files them."""

    def table(name: str, rows: list[dict[str, object]]) -> pa.Table:
        schema = SCHEMAS[name]
        return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema)

    with DatasetWriter(out) as w:
        w.write_events(_table(events), partition_ts=pa.array(arrival, type=TS))
        w.write_table("videos", table("videos", videos or [{"video_id": 10}]))
        if channels is not None:
            w.write_table("channels", table("channels", channels))
        w.write_table("users", table("users", [{"user_id": u, "country": "FR"} for u in users]))
        w.finish({"source": "test", "as_of": AS_OF.isoformat()})
    return out


def test_partition_rule_with_late_arrivals_and_future_skew(tmp_path: Path) -> None:
    day = dt.datetime(2026, 10, 30, tzinfo=dt.UTC)  # every row is filed under dt=2026-10-30
    h = dt.timedelta(hours=1)
    rows = {
        "same_day": day + 5 * h,
        "late_71h": day - 71 * h,  # a phone back online: within the 72 h tolerance
        "late_73h": day - 73 * h,  # too late for its partition
        "next_day": day + 25 * h,  # after the day it arrived, before AS_OF: a clock ahead
        "future": AS_OF + 2 * h,  # a future-skewed clock filed by arrival: future, not mismatch
    }
    events = [_event(i, event_id=k, ts=ts) for i, (k, ts) in enumerate(rows.items())]
    data = _write_dataset(tmp_path / "d", events, [day + 12 * h] * len(events))
    assert [p.name for p in (data / "watch_events").iterdir()] == ["dt=2026-10-30"]
    vd = load_validated(data, max_invalid_share=1.0, quarantine_dir=tmp_path / "q")
    res = vd.results["watch_events"]
    assert res.valid["event_id"].to_pylist() == ["same_day", "late_71h"]
    q = read_quarantine(tmp_path / "q", "watch_events")
    assert dict(zip(q["event_id"].to_pylist(), q[REASON_COLUMN].to_pylist(), strict=True)) == {
        "late_73h": "partition_mismatch",
        # Future as of its arrival, though its ts is before the data's as-of time: the
        # reason does not depend on the date the row is judged on.
        "next_day": "future_timestamp",
        "future": "future_timestamp",
    }
    # The tolerance is the config's.
    loose = parse_config({"contract": {"late_arrival_hours": 100}}).contract
    vd = load_validated(data, max_invalid_share=1.0, limits=loose)
    assert vd.results["watch_events"].counts == {"future_timestamp": 2}
    # Judged at a later as-of time, the same rows keep their reasons.
    later = load_validated(data, max_invalid_share=1.0, as_of=AS_OF + 10 * 24 * h)
    assert later.results["watch_events"].counts == {"partition_mismatch": 1, "future_timestamp": 2}


def test_events_of_unknown_users_are_kept_counted_and_get_a_minimal_user(tmp_path: Path) -> None:
    events = [
        _event(0, user_id=1),
        _event(1, user_id=7),
        _event(2, user_id=7),
        _event(3, user_id=8),
    ]
    data = _write_dataset(tmp_path / "d", events, [e["ts"] for e in events], users=[1, 2])
    vd = load_validated(data, max_invalid_share=0.0)  # kept: not one row quarantined
    ev = vd.results["watch_events"]
    assert ev.valid.num_rows == 4 and ev.counts == {}
    assert ev.summary()["accepted"] == {"unknown_user": 3}
    users = vd.tables["users"]
    assert users["user_id"].to_pylist() == [1, 2, 7, 8]
    assert (
        users.slice(2).drop_columns(["user_id"]).to_pylist()
        == [{c: None for c in SCHEMAS["users"].names if c != "user_id"}] * 2
    )  # nothing invented: the id alone
    assert vd.report()["users"]["rows_added"] == 2 and vd.report()["users"]["rows_valid"] == 2


def test_video_with_unknown_channel_is_quarantined_and_so_are_its_events(tmp_path: Path) -> None:
    videos = [
        {"video_id": 10, "channel_id": 1},
        {"video_id": 11, "channel_id": None},  # no channel: allowed (MovieLens has none)
        {"video_id": 12, "channel_id": 99},  # a channel the channels table does not have
        {"video_id": 12, "channel_id": 1},  # its fixed copy is kept, not judged a duplicate
        {"video_id": 13, "channel_id": 99},
    ]
    events = [_event(i, video_id=v) for i, v in enumerate([10, 11, 12, 13])]
    data = _write_dataset(
        tmp_path / "d",
        events,
        [e["ts"] for e in events],
        videos=videos,
        channels=[{"channel_id": 1, "name": "c"}],
    )
    vd = load_validated(data, max_invalid_share=1.0, quarantine_dir=tmp_path / "q")
    assert vd.results["videos"].counts == {"unknown_channel": 2}
    assert vd.tables["videos"]["video_id"].to_pylist() == [10, 11, 12]
    q = read_quarantine(tmp_path / "q", "videos")
    assert q["video_id"].to_pylist() == [12, 13] and set(q[REASON_COLUMN].to_pylist()) == {
        "unknown_channel"
    }
    assert vd.results["watch_events"].counts == {"unknown_video": 1}  # the event of video 13
    # The same rule from the evaluation harness's table selection (no users asked for).
    vd = load_validated(data, max_invalid_share=1.0, tables=("watch_events", "videos", "channels"))
    assert vd.results["videos"].counts == {"unknown_channel": 2}


def test_dimension_share_is_checked(tmp_path: Path) -> None:
    videos = [{"video_id": 10, "channel_id": 1}, {"video_id": 11, "channel_id": 5}]
    data = _write_dataset(
        tmp_path / "d", [_event(0)], [T0], videos=videos, channels=[{"channel_id": 1}]
    )
    with pytest.raises(ContractViolation, match=r"videos: 1 of 2 rows.*unknown_channel"):
        load_validated(data, max_invalid_share=0.4, quarantine_dir=tmp_path / "q")
    assert read_quarantine(tmp_path / "q", "videos").num_rows == 1


def test_docs_list_every_reason_in_rule_order() -> None:
    """docs/data-contract.md's reason table is the rule order the code applies."""
    from videorec.contract import DIMENSION_RULES

    doc = (Path(__file__).resolve().parents[1] / "docs" / "data-contract.md").read_text()
    section = doc.split("| reason | rule (watch_events) |", 1)[1].split("\n\n", 1)[0]
    listed = [line.split("`")[1] for line in section.splitlines() if line.startswith("| `")]
    assert listed == [r.value for r in EVENT_RULES]
    for name, rules in DIMENSION_RULES.items():
        for r in rules:
            assert f"`{r.value}`" in doc, (name, r)
