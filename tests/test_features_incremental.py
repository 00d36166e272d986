"""The incremental feature stage (features/incremental.py) against the full pass.

The full pass (``features.incremental: false``) is an independent implementation of the
same tables: one Spark pass over the window. Every check here builds both over the same
event log and asserts the tables are equal, row for row (floats to 1e-9): on a
hand-built log whose days cross the window's start, and on a small synthetic platform
built day by day with a late event, a too-late event and a backfilled day.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from videorec import artifact_names as names
from videorec.artifacts import open_store
from videorec.config import Config, parse_config
from videorec.contract import REASON_COLUMN, SCHEMAS
from videorec.dataset import (
    DatasetWriter,
    append_events,
    append_videos,
    event_days,
    read_manifest,
    read_table,
)
from videorec.examples import COLUMNS, read_examples
from videorec.features import job as features_job
from videorec.features.incremental import collect_day_caches, earlier_ids, plan_days
from videorec.features.job import PlanError, build_features, plan_features, quarantined_events
from videorec.features.job import main as job_main

pytestmark = pytest.mark.slow

DATE = dt.date(2026, 11, 1)
TABLE_KEYS = {
    names.EXAMPLES: ["event_id"],
    names.EVAL: ["user_id", "video_id", "ts", "event_type"],
    names.VIDEO_FEATURES: ["video_id"],
    names.USER_FEATURES: ["user_id"],
    names.TRENDING: ["video_id"],
    names.WATCHED: ["user_id", "video_id"],
    names.ONLINE_USER_FEATURES: ["user_id"],
    names.ONLINE_VIDEO_FEATURES: ["video_id"],
}


def _cfg(
    root: Path, incremental: bool, window_days: int, horizon: int = 3, history_len: int = 50
) -> Config:
    # A cap the heavy users pass, so the equality tests cover it.
    features = {"incremental": incremental, "window_days": window_days,
                "max_examples_per_user": 30, "history_len": history_len}  # fmt: skip
    return parse_config(
        {
            "artifacts": {"root": str(root)},
            "spark": {"master": "local[2]", "shuffle_partitions": 4},
            "features": {**features, "late_horizon_days": horizon},
        }
    )


def _norm(v: Any) -> Any:
    """A comparable form: lists as tuples, maps as sorted entries, floats to 1e-9."""
    if isinstance(v, (list, np.ndarray)):
        items = [_norm(x) for x in v]
        if items and all(isinstance(x, tuple) and len(x) == 2 for x in items):
            return tuple(sorted(items, key=str))  # a map's entries: order is not data
        return tuple(items)
    if isinstance(v, dict):
        return tuple(sorted((k, _norm(x)) for k, x in v.items()))
    if v is None or (not isinstance(v, (str, bytes, tuple)) and pd.isna(v)):
        return None
    if isinstance(v, float):
        return round(v, 9)
    return v


def _table(uri: str, name: str) -> pd.DataFrame:
    # The examples as every reader reads them: a full pass's table, an incremental
    # version's day files under its rule.
    df = (
        read_examples(uri, COLUMNS) if name == names.EXAMPLES else pq.read_table(f"{uri}/{name}")
    ).to_pandas()
    return df[sorted(df.columns)].sort_values(TABLE_KEYS[name]).reset_index(drop=True)


def assert_same_tables(full_uri: str, inc_uri: str) -> None:
    """Every table of the two features versions holds the same rows."""
    for name in TABLE_KEYS:
        a, b = _table(full_uri, name), _table(inc_uri, name)
        assert list(a.columns) == list(b.columns), name
        assert len(a) == len(b), f"{name}: {len(a)} rows vs {len(b)}"
        assert len(a) > 0 or name == names.TRENDING, f"{name} is empty: the check proves nothing"
        for col in a.columns:
            x = [_norm(v) for v in a[col].tolist()]
            y = [_norm(v) for v in b[col].tolist()]
            bad = [i for i, (p, q) in enumerate(zip(x, y, strict=True)) if p != q]
            assert not bad, (
                f"{name}.{col}: {len(bad)} rows differ, first {x[bad[0]]} vs {y[bad[0]]}"
            )


def assert_same_report(full: dict[str, Any], inc: dict[str, Any]) -> None:
    """The quality reports agree on what both passes count (the incremental one counts
    from the merged partials, the full pass from the events)."""
    for key in ("valid_events", "null_rate", "coverage", "split", "outputs"):
        assert inc["report"][key] == full["report"][key], key


def assert_same_quarantine(cfgs: tuple[Config, Config], runs: tuple[Any, Any]) -> None:
    """Both versions refused the same rows for the same reasons (the incremental one
    lists its days' quarantine versions, each validated once, maybe by an earlier run)."""

    def refused(cfg: Config, run: dict[str, Any]) -> list[tuple[str, str]]:
        q = quarantined_events(open_store(cfg), run["version"])
        return sorted(zip(q["event_id"].to_pylist(), q[REASON_COLUMN].to_pylist(), strict=True))

    (cfg_a, cfg_b), (a, b) = cfgs, runs
    assert refused(cfg_a, a) == refused(cfg_b, b)
    reasons = [r["report"]["validation"]["watch_events"]["by_reason"] for r in runs]
    assert reasons[0] == reasons[1]


def _ev(eid: str, ts: dt.datetime, user: int, video: int, etype: str = "watch",
        watch: float | None = 60.0, dur: float = 100.0) -> dict[str, Any]:  # fmt: skip
    return {
        "event_id": eid, "ts": ts, "user_id": user, "video_id": video, "event_type": etype,
        "watch_time_s": watch if etype in ("watch", "skip") else None, "video_duration_s": dur,
        "session_id": "s", "device": "tv", "country": "FR",
    }  # fmt: skip


def _events(rows: list[dict[str, Any]]) -> pa.Table:
    schema = SCHEMAS["watch_events"]
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema)


@pytest.fixture(scope="module")
def hand_built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five days, a 3-day window: histories that start before the window, a like on a
    later day than its play, a duplicate, a re-send on the next day, a play filed a day
    late, and a heavy user."""
    out = tmp_path_factory.mktemp("inc_hand") / "data"
    day = [
        dt.datetime.combine(DATE - dt.timedelta(days=5 - i), dt.time(), dt.UTC) for i in range(5)
    ]
    h = dt.timedelta(hours=1)
    rows = [
        _ev("u1-a", day[0] + 9 * h, 1, 1, watch=90.0),  # before the window: history only
        _ev("u1-b", day[1] + 9 * h, 1, 2, watch=30.0),  # before the window too
        _ev("u1-c", day[2] + 9 * h, 1, 3, watch=95.0),  # window's first day
        _ev("u1-c", day[2] + 9 * h, 1, 3, watch=95.0),  # a duplicate copy
        _ev("u1-d", day[2] + 9 * h, 1, 4, watch=80.0),  # same second: shares the history
        _ev("u1-x", day[2] + 10 * h, 1, 8, watch=20.0),  # 20%: history, not an example
        _ev("u1-e", day[2] + 23.5 * h, 1, 5, watch=40.0),  # liked the next day: positive
        _ev("u1-el", day[3] + 1 * h, 1, 5, "like"),
        _ev("u1-f", day[4] + 12 * h, 1, 6, watch=100.0),  # the hold-out day
        _ev("u1-g", day[4] + 23.5 * h, 1, 7, "skip", watch=3.0),  # trending's last hour
        _ev("u2-a", day[3] + 2 * h, 2, 1, watch=80.0),
        _ev("u2-i", day[3] + 3 * h, 2, 2, "impression"),
        _ev("u2-c", day[3] + 3 * h, 2, 2, "click"),
        # Impressions that keep the refused rows under the contract's 5% share.
        *[_ev(f"u2-i{i}", day[3] + 4 * h, 2, 1, "impression") for i in range(45)],
        # A re-send whose timestamp crossed midnight: filed on two days, the first kept.
        _ev("u2-m", day[4] - dt.timedelta(seconds=10), 2, 2, watch=50.0),
        _ev("u2-m", day[4] + dt.timedelta(seconds=10), 2, 2, watch=70.0),
        *[
            _ev(
                f"u3-{i}", day[2] + 10 * h + i * dt.timedelta(seconds=1), 3, 100 + i % 9, watch=70.0
            )
            for i in range(40)
        ],
    ]
    late = _ev("u2-late", day[2] + 20 * h, 2, 3, watch=99.0)  # happened on day 2, filed on day 3
    videos = [
        {"video_id": v, "category": "Music" if v % 2 else "News", "channel_id": 10 + v % 3,
         "duration_s": 100.0, "published_at": day[0] - 30 * 24 * h} for v in (*range(1, 10), *range(100, 109))
    ]  # fmt: skip
    channels = [{"channel_id": c} for c in (10, 11, 12)]
    # User 3 is unknown: kept. User 4 and video 9 have no event: in the tables, not
    # among the report's users and videos with events.
    users = [{"user_id": 1, "country": "FR"}, {"user_id": 2}, {"user_id": 4}]
    with DatasetWriter(out) as w:
        w.write_events(_events(rows))
        for name, t in (("videos", videos), ("channels", channels), ("users", users)):
            schema = SCHEMAS[name]
            w.write_table(name, pa.Table.from_pylist(
                [{f.name: r.get(f.name) for f in schema} for r in t], schema))  # fmt: skip
        w.finish({"source": "test", "as_of": day[4].isoformat()})
    append_events(out, day[3].date(), _events([late]), "late-0.parquet")
    # A clock a day and a half ahead, filed on day 2: future when it arrived, though its
    # ts is before DATE. The run of DATE - 1 validates day 2 and DATE's reuses it.
    skew = _ev("skewed", day[4] + 6 * h, 2, 5, watch=60.0)
    append_events(out, day[2].date(), _events([skew]), "skew-0.parquet")
    # A producer's typo in a partition folder: its rows are partition_mismatch.
    typo = out / "watch_events" / f"dt={day[3].date().isoformat()}T00"
    typo.mkdir()
    # Its second row's ts is after DATE - 1: the reason must not depend on the run's date.
    typo_rows = [_ev("misfiled", day[3] + 5 * h, 2, 4, watch=90.0),
                 _ev("misfiled-2", day[4] + 7 * h, 2, 4, watch=90.0)]  # fmt: skip
    pq.write_table(_events(typo_rows), typo / "x.parquet")
    return out


# A history length the hand-built log's heavy user (40 watches on one day) exceeds.
HAND_HISTORY = 5


@pytest.fixture(scope="module")
def hand_built_runs(
    hand_built: Path, spark: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The full pass and the incremental stage (every day computed) over the hand-built
    log for DATE, with their configs."""
    root = tmp_path_factory.mktemp("inc_hand_runs")
    cfgs = {
        "full": _cfg(root / "full", False, 3, history_len=HAND_HISTORY),
        "inc": _cfg(root / "inc", True, 3, history_len=HAND_HISTORY),
    }
    runs = {k: build_features(c, str(hand_built), DATE, spark=spark) for k, c in cfgs.items()}
    return {"cfg": cfgs, **runs}


def test_hand_built_log_incremental_equals_the_full_pass(hand_built_runs: dict[str, Any]) -> None:
    full, inc = hand_built_runs["full"], hand_built_runs["inc"]
    assert "days" not in full["report"] and inc["report"]["days"]["days_computed"]
    assert inc["report"]["days"]["histories_from"] == "tails"
    assert_same_tables(full["uri"], inc["uri"])
    assert_same_report(full, inc)
    cfg = hand_built_runs["cfg"]
    assert_same_quarantine((cfg["full"], cfg["inc"]), (full, inc))
    ex = _table(inc["uri"], names.EXAMPLES).set_index("event_id")
    # The window starts on day 2: u1's history there holds nothing from days 0 and 1.
    assert list(ex.loc["u1-c", "history"]) == [] and list(ex.loc["u1-d", "history"]) == []
    assert list(ex.loc["u1-e", "history"]) == [3, 4, 8] and "u1-x" not in ex.index
    assert bool(ex.loc["u1-e", "liked"])  # its like came the next day, before the split
    assert ex.loc["u2-a", "history"].tolist() == [3]  # the late play, filed a day after
    counts = inc["report"]["validation"]["watch_events"]
    assert counts["by_reason"] == {
        "duplicate_id": 2, "partition_mismatch": 2, "future_timestamp": 1
    }  # fmt: skip
    assert counts["too_late"] == 0
    assert ex.loc["u2-m", "ts"].hour == 23  # the re-send's first copy, the day before
    assert (ex.index.str.startswith("u3-")).sum() == 30  # the cap: the 30 most recent
    assert "u3-9" not in ex.index and "u3-10" in ex.index
    assert full["report"]["coverage"] == {
        "users_with_events": 3, "users_in_table": 3, "users_added": 1,
        "videos_with_events": 17, "videos_in_catalogue": 18,
    }  # fmt: skip


def test_the_day_befores_ids_from_its_version_equal_those_from_its_files(
    hand_built: Path, hand_built_runs: dict[str, Any], spark: Any
) -> None:
    """A day's duplicates are judged against the day before's valid event ids: read
    from that day's stored version where the plan names one, else from its files (the
    first planned day's day before). Both give the same ids."""
    cfg = hand_built_runs["cfg"]["inc"]
    store = open_store(cfg)
    plans = plan_days(cfg, str(hand_built), DATE)
    last = [p for p in plans if p.day == DATE - dt.timedelta(days=1)]
    before = next(p for p in plans if p.day == DATE - dt.timedelta(days=2))
    assert last[0].previous_files == before.files and store.exists(names.FEATURES_DAY,
                                                                   before.version)  # fmt: skip
    known = (read_table(hand_built, "videos")["video_id"].to_numpy(),
             read_table(hand_built, "users")["user_id"].to_numpy())  # fmt: skip

    def ids(plan: list[Any]) -> list[tuple[Any, ...]]:
        df = earlier_ids(spark, cfg, str(hand_built), DATE, last, plan, store, *known)
        return sorted(tuple(r) for r in df.collect())

    from_version, from_files = ids(plans), ids(last)
    assert from_version == from_files
    assert [r[1] for r in from_version].count("u2-m") == 1  # the re-send's first copy
    assert {r[0] for r in from_version} == {before.day}
    # Not the day before's row that the day's partition holds (filed late), nor a
    # refused one (the typo folder's).
    assert "u2-late" not in {r[1] for r in from_version} and "u2-a" in {r[1] for r in from_version}
    assert not {"misfiled", "misfiled-2"} & {r[1] for r in from_version}


def test_key_sets_past_the_broadcast_limit_are_joined_by_shuffle_to_the_same_tables(
    hand_built: Path,
    hand_built_runs: dict[str, Any],
    spark: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a cluster's window the liked pairs and the users over the cap can be millions:
    past ``BROADCAST_ROWS`` they are joined by shuffle, and the tables stay the same."""
    monkeypatch.setattr(features_job, "BROADCAST_ROWS", 0)
    # Spark would broadcast the small sides on its own: only the hints may.
    off = {"spark.sql.autoBroadcastJoinThreshold": "-1",
           "spark.sql.adaptive.autoBroadcastJoinThreshold": "-1"}  # fmt: skip
    before = {k: spark.conf.get(k, None) for k in off}
    for k, v in off.items():
        spark.conf.set(k, v)
    try:
        cfgs = {
            k: _cfg(tmp_path / k, k == "inc", 3, history_len=HAND_HISTORY) for k in ("full", "inc")
        }
        runs = {k: build_features(c, str(hand_built), DATE, spark=spark) for k, c in cfgs.items()}
    finally:
        for k, v in before.items():
            spark.conf.unset(k) if v is None else spark.conf.set(k, v)
    assert_same_tables(runs["full"]["uri"], runs["inc"]["uri"])
    assert_same_tables(hand_built_runs["full"]["uri"], runs["full"]["uri"])
    assert_same_report(runs["full"], runs["inc"])


def test_a_daily_run_chains_the_recent_watches_and_equals_the_full_pass(
    hand_built: Path, hand_built_runs: dict[str, Any], spark: Any, tmp_path: Path
) -> None:
    """The day before's run publishes its last day's recent watches (from the tails);
    the daily run builds the new day's histories and the user tables from them, and
    publishes the new day's. With 5 as the history length, u3's 40 watches are cut,
    and u1's list as of day 3 holds a watch of day 1, which day 4's lookback and the
    training days (2 and 3) no longer hold."""
    inc = _cfg(tmp_path / "inc", True, 3, history_len=HAND_HISTORY)
    yesterday = DATE - dt.timedelta(days=1)
    before = build_features(inc, str(hand_built), yesterday, spark=spark)
    assert before["report"]["days"]["recent"] == "tails"
    store = open_store(inc)
    plans = {p.day: p for p in plan_days(inc, str(hand_built), DATE)}
    last_before = plans[yesterday - dt.timedelta(days=1)]
    assert store.exists(names.FEATURES_RECENT, last_before.history_version)
    lists = pd.read_parquet(
        f"{store.files_uri(names.FEATURES_RECENT, last_before.history_version)}/recent"
    ).set_index("user_id")["items"]
    assert [x["video_id"] for x in lists[1]] == [2, 3, 4, 8, 5] and len(lists[3]) == 5

    # Through a saved plan, as the DAG runs it: the new day alone, judged against the
    # day before's stored ids (the re-send's second copy is on the new day).
    planned = plan_features(inc, str(hand_built), DATE)["features_version"]
    daily = build_features(inc, str(hand_built), DATE, spark=spark, planned=planned)
    days = daily["report"]["days"]
    assert days["days_computed"] == [yesterday.isoformat()]
    assert days["histories_from"] == "recent" and days["recent"] == "recent"
    assert store.exists(names.FEATURES_RECENT, plans[yesterday].history_version)
    assert_same_tables(hand_built_runs["full"]["uri"], daily["uri"])
    assert_same_report(hand_built_runs["full"], daily)
    # Day 2 was validated by the run of DATE - 1, when the skewed row's ts was still
    # ahead of the logical date: it has the reason the full pass of DATE gives it.
    assert days["days_reused"] and (DATE - dt.timedelta(days=3)).isoformat() in days["days_reused"]
    assert_same_quarantine((hand_built_runs["cfg"]["full"], inc), (hand_built_runs["full"], daily))
    # The new day's histories (training examples once the window moves on) are those
    # the run without the lists built from the tails.
    assert hand_built_runs["inc"]["report"]["days"]["recent"] == "tails"

    def history(cfg: Config) -> pd.DataFrame:
        uri = open_store(cfg).files_uri(names.FEATURES_HISTORY, plans[yesterday].history_version)
        return pd.read_parquet(f"{uri}/examples").sort_values("event_id", ignore_index=True)

    chained, from_tails = history(inc), history(hand_built_runs["cfg"]["inc"])
    assert len(chained) > 0
    assert [_norm(r) for r in chained.to_numpy()] == [_norm(r) for r in from_tails.to_numpy()]
    h = chained.set_index("event_id")["history"]
    assert list(h["u1-f"]) == [3, 4, 8, 5]  # day 1's watch of 2 has left the lookback

    # The new day's list, chained (the day's watchers' lists grown, the others kept),
    # is the one the run without lists grouped from the tails.
    def recent_list(cfg: Config) -> dict[int, list[tuple[Any, int]]]:
        uri = open_store(cfg).files_uri(names.FEATURES_RECENT, plans[yesterday].history_version)
        df = pd.read_parquet(f"{uri}/recent")
        return {
            int(u): [(x["ts"], int(x["video_id"])) for x in items]
            for u, items in zip(df["user_id"], df["items"], strict=True)
        }

    chained_list = recent_list(inc)
    assert len(chained_list) == 3 and chained_list == recent_list(hand_built_runs["cfg"]["inc"])
    uf = _table(daily["uri"], names.USER_FEATURES).set_index("user_id")
    assert list(uf.loc[1, "recent_history"]) == [3, 4, 8, 5]  # training days 2 and 3
    assert len(uf.loc[3, "recent_history"]) == HAND_HISTORY

    # Each run collects the day caches no later run reads, but none just written.
    none = {names.FEATURES_DAY: [], names.FEATURES_RECENT: [], names.FEATURES_PLAN: []}
    assert before["collected"] == daily["collected"] == none
    # The GC of a run two days later, without the grace (it reads day caches from
    # DATE - 3 and lists from DATE - 1): days DATE - 5 and - 4 and the list of DATE - 2
    # go; the histories the features versions reference stay, and the daily version's
    # examples still read.
    gone = collect_day_caches(store, inc, DATE + dt.timedelta(days=2), grace_s=0.0)
    day = lambda k: (DATE - dt.timedelta(days=k)).isoformat()  # noqa: E731
    assert [v.split("_")[0] for v in gone[names.FEATURES_DAY]] == [day(5), day(4)]
    assert [v.split("_")[0] for v in gone[names.FEATURES_RECENT]] == [day(2)]
    assert [v.split("_")[0] for v in store.list_versions(names.FEATURES_DAY)] == [
        day(3), day(2), day(1)
    ]  # fmt: skip
    assert [v.split("_")[0] for v in store.list_versions(names.FEATURES_RECENT)] == [day(1)]
    assert store.list_versions(names.FEATURES_HISTORY) and all(
        store.exists(names.FEATURES_HISTORY, p.history_version)
        for p in plans.values() if p.history_version
    )  # fmt: skip
    assert read_examples(daily["uri"], ["event_id"]).num_rows == len(
        _table(daily["uri"], names.EXAMPLES)
    )


@pytest.mark.parametrize("incremental", [True, False], ids=["incremental", "one-pass"])
def test_a_planned_version_reads_the_planned_files_not_one_filed_since(
    incremental: bool, hand_built: Path, spark: Any, tmp_path: Path
) -> None:
    """The DAG plans, then Spark builds: a file the drain files in between (here a play
    on a training day) must not change the version training was promised. The build
    reads the plan's files; the next plan takes the new file."""
    data = tmp_path / "data"
    shutil.copytree(hand_built, data)
    cfg = _cfg(tmp_path / "store", incremental, 3, history_len=HAND_HISTORY)
    planned = plan_features(cfg, str(data), DATE)["features_version"]
    assert plan_features(cfg, str(data), DATE)["features_version"] == planned  # a twin
    new_day = dt.datetime.combine(DATE - dt.timedelta(days=2), dt.time(12), dt.UTC)
    append_events(data, new_day.date(), _events([_ev("u2-new", new_day, 2, 4, watch=95.0)]),
                  "drained-0.parquet")  # fmt: skip
    assert plan_features(cfg, str(data), DATE)["features_version"] != planned
    res = build_features(cfg, str(data), DATE, spark=spark, planned=planned)
    assert res["version"] == planned and not res["skipped"]
    ex = _table(res["uri"], names.EXAMPLES)
    assert len(ex) and "u2-new" not in set(ex["event_id"])
    unplanned = build_features(cfg, str(data), DATE, spark=spark)  # lists the files now
    assert unplanned["version"] != planned
    assert "u2-new" in set(_table(unplanned["uri"], names.EXAMPLES)["event_id"])


@pytest.mark.parametrize("incremental", [True, False], ids=["incremental", "one-pass"])
def test_an_upload_makes_a_new_version_and_a_plan_keeps_its_catalogue(
    incremental: bool, hand_built: Path, tmp_path: Path
) -> None:
    """A video appended to the catalogue changes the version (it changes the tables:
    its events stop being unknown_video); a plan made before reads its own catalogue."""
    data = tmp_path / "data"
    shutil.copytree(hand_built, data)
    cfg = _cfg(tmp_path / "store", incremental, 3, history_len=HAND_HISTORY)
    planned = plan_features(cfg, str(data), DATE)["features_version"]
    upload = {"video_id": 50, "category": "Music", "channel_id": 10, "duration_s": 100.0}
    videos = pa.Table.from_pylist([{f.name: upload.get(f.name) for f in SCHEMAS["videos"]}],
                                  SCHEMAS["videos"])  # fmt: skip
    append_videos(data, videos, "upload-0.parquet")
    assert plan_features(cfg, str(data), DATE)["features_version"] != planned
    manifest = read_manifest(data)
    _, _, dims = features_job.load_plan(cfg, open_store(cfg), planned, str(data), DATE, manifest)
    assert 50 not in read_table(data, "videos", dims["videos"])["video_id"].to_pylist()
    assert 50 in read_table(data, "videos")["video_id"].to_pylist()


def test_the_one_pass_version_ignores_the_late_event_horizon(
    hand_built: Path, tmp_path: Path
) -> None:
    """Only the incremental stage reads late_horizon_days: the full pass's version (and
    output) do not change with it; a setting it reads does change it."""

    def version(**kw: Any) -> str:
        cfg = _cfg(tmp_path / "store", False, 3, **kw)
        return plan_features(cfg, str(hand_built), DATE)["features_version"]

    assert version(horizon=3) == version(horizon=1) != version(history_len=7)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_plan_that_no_longer_fits_is_refused_by_name(
    kind: str,
    hand_built: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    """Checked before any Spark work: a plan never made, another date's plan, and a
    plan made under another config; on the local and the S3 (moto) store."""
    cfg = _cfg(tmp_path / "store", True, 3, history_len=HAND_HISTORY)
    store = open_store(cfg) if kind == "local" else request.getfixturevalue("s3_store")
    planned = plan_features(cfg, str(hand_built), DATE, store=store)["features_version"]
    assert store.exists(names.FEATURES_PLAN, planned)

    def build(c: Config, date: dt.date, version: str) -> None:
        build_features(c, str(hand_built), date, store=store, planned=version)

    with pytest.raises(PlanError, match="no features plan 2026-11-01_nope"):
        build(cfg, DATE, "2026-11-01_nope")
    with pytest.raises(PlanError, match=f"is for data .* and date {DATE}, not .* and 2026-10-31"):
        build(cfg, DATE - dt.timedelta(days=1), planned)
    longer = _cfg(tmp_path / "store", True, 3, history_len=HAND_HISTORY + 1)
    with pytest.raises(PlanError, match=f"plan {planned} no longer matches the config"):
        build(longer, DATE, planned)
    with pytest.raises(PlanError, match="no longer matches"):
        build(_cfg(tmp_path / "store", False, 3, history_len=HAND_HISTORY), DATE, planned)
    if kind == "local":  # a plan saved before its days named the day before's files
        path = store.local_path(names.FEATURES_PLAN, planned) / features_job.PLAN_FILE
        plan = json.loads(path.read_text())
        for d in plan["days"]:
            del d["previous_files"]
        path.write_text(json.dumps(plan))
        with pytest.raises(PlanError, match=f"plan {planned} was made by an older version"):
            build(cfg, DATE, planned)
    if kind == "local":  # the spark-submit entry point (the DAG's features task): exit 2
        conf = tmp_path / "c.yaml"
        conf.write_text(f"artifacts:\n  root: {tmp_path / 'store'}\n")
        argv = ["--date", DATE.isoformat(), "--data", str(hand_built), "--config", str(conf)]
        assert job_main([*argv, "--plan", "2026-11-01_nope"]) == 2
        assert "no features plan 2026-11-01_nope" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_day_caches_no_later_run_reads_are_collected_after_their_grace(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """With a 3-day window, a run of DATE (or later) reads day caches from DATE - 5 and
    recent lists from DATE - 3, and the plan of DATE: older ones are deleted once out
    of their grace; the first day read's, the histories and versions named otherwise
    stay."""
    cfg = _cfg(tmp_path, True, 3)
    store = open_store(cfg) if kind == "local" else request.getfixturevalue("s3_store")
    first = {names.FEATURES_DAY: 5, names.FEATURES_RECENT: 3, names.FEATURES_PLAN: 0,
             names.FEATURES_HISTORY: 5}  # fmt: skip
    versions = {}
    for name, k in first.items():
        old, kept = (DATE - dt.timedelta(days=d) for d in (k + 1, k))
        versions[name] = {
            "old": [f"{old}_aaaa", f"{old}_bbbb"],
            "kept": [f"{kept}_aaaa", "by-hand"],
        }
        for version in versions[name]["old"] + versions[name]["kept"]:
            with store.write_version(name, version) as out:
                (out / "part.parquet").write_bytes(b"x")
    caches = (names.FEATURES_DAY, names.FEATURES_RECENT, names.FEATURES_PLAN)
    # Within the grace (just written): nothing goes.
    assert collect_day_caches(store, cfg, DATE) == {name: [] for name in caches}
    gone = collect_day_caches(store, cfg, DATE, grace_s=0.0)
    assert gone == {name: versions[name]["old"] for name in caches}
    for name in caches:
        assert store.list_versions(name) == sorted(versions[name]["kept"])
    assert len(store.list_versions(names.FEATURES_HISTORY)) == 4  # referenced: kept
    # Again (a retry, or a twin run's GC): nothing left to delete, no error.
    assert collect_day_caches(store, cfg, DATE, grace_s=0.0) == {name: [] for name in caches}


def test_a_failed_collection_after_the_publish_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from videorec.features.incremental import _collect_after_publish

    cfg = _cfg(tmp_path, True, 3)
    store = open_store(cfg)

    def unreadable(name: str) -> list[str]:
        raise PermissionError(f"{name}: permission denied")

    monkeypatch.setattr(store, "list_versions", unreadable)
    res = _collect_after_publish(store, cfg, DATE)
    assert res == {"error": "day caches not collected: PermissionError: "
                            f"{names.FEATURES_DAY}: permission denied"}  # fmt: skip


def test_event_days_tells_which_days_a_file_holds(tmp_path: Path) -> None:
    """Footer statistics settle most files; the ts column settles the rest; a file it
    cannot read holds every day (recomputing too much is safe, too little is not)."""
    part = tmp_path / "watch_events" / "dt=2026-10-05"
    part.mkdir(parents=True)
    at = lambda *a: dt.datetime(*a, tzinfo=dt.UTC)  # noqa: E731

    def write(name: str, ts: list[Any], **kw: Any) -> str:
        pq.write_table(pa.table({"ts": pa.array(ts, pa.timestamp("us", tz="UTC"))}),
                       part / name, **kw)  # fmt: skip
        return f"dt=2026-10-05/{name}"

    on_time = write("a.parquet", [at(2026, 10, 5, 1), at(2026, 10, 5, 23)])
    # A null, a 1970 clock and the last microsecond of Oct 3: only Oct 3 is held.
    mixed = write("b.parquet", [at(2026, 10, 3, 23, 59, 59, 999999), None, at(1970, 1, 1),
                                at(2026, 10, 5, 2)])  # fmt: skip
    # Two row groups: the statistics rule out the second, the column settles the first.
    groups = write("c.parquet", [at(2026, 10, 2)] * 10 + [at(2026, 10, 5)] * 10,
                   row_group_size=10)  # fmt: skip
    (part / "bad.parquet").write_bytes(b"not parquet")
    pq.write_table(pa.table({"ts": pa.array(["x"])}), part / "text.parquet")
    paths = [on_time, mixed, groups, "dt=2026-10-05/bad.parquet", "dt=2026-10-05/text.parquet"]
    held = event_days(str(tmp_path), paths, dt.date(2026, 10, 2), dt.date(2026, 10, 5))
    every = {dt.date(2026, 10, d) for d in (2, 3, 4)}
    assert held == {
        on_time: set(),
        mixed: {dt.date(2026, 10, 3)},
        groups: {dt.date(2026, 10, 2)},
        "dt=2026-10-05/bad.parquet": every,
        "dt=2026-10-05/text.parquet": every,
    }


def test_a_day_is_recomputed_only_when_a_new_file_holds_its_rows(
    hand_built: Path, tmp_path: Path
) -> None:
    """A file filed today that holds nothing of the days before leaves their versions
    (and so their computed outputs) as they were; one with a late row of a day within
    the horizon makes that day, and no other, a new version."""
    data = tmp_path / "data"
    shutil.copytree(hand_built, data)
    cfg = _cfg(tmp_path / "art", True, 3, horizon=3)

    def versions() -> dict[dt.date, str | None]:
        return {p.day: p.version for p in plan_days(cfg, str(data), DATE)}

    before = versions()
    yesterday, two_ago = DATE - dt.timedelta(days=1), DATE - dt.timedelta(days=2)
    noon = dt.datetime.combine(yesterday, dt.time(12), dt.UTC)
    _append(data, yesterday, [_ev("on-time", noon, 1, 1)], "on-time.parquet")
    after = versions()
    assert {d for d in before if before[d] != after[d]} == {yesterday}
    late = _ev("late", noon - dt.timedelta(days=1), 1, 1)  # happened two days ago
    _append(data, yesterday, [late], "late.parquet")
    again = versions()
    assert {d for d in after if after[d] != again[d]} == {two_ago, yesterday}
    plan = next(p for p in plan_days(cfg, str(data), DATE) if p.day == two_ago)
    filed_since = [path for path, _ in plan.files if path.startswith(f"dt={yesterday}")]
    assert filed_since == [f"dt={yesterday}/late.parquet"]  # not on-time.parquet


def _append(data: Path, filed: dt.date, rows: list[dict[str, Any]], name: str) -> None:
    append_events(data, filed, _events(rows), name)


def test_day_by_day_with_late_events_and_a_backfill_equals_the_full_pass(
    spark: Any, tmp_path: Path
) -> None:
    from videorec.datagen.synthetic import GeneratorParams, generate

    data = tmp_path / "platform"
    generate(
        GeneratorParams(users=300, videos=300, days=9, seed=3, end_date=DATE),
        data,
        config_digest="test",
        progress=False,
    )
    root = tmp_path / "inc"
    cfg = _cfg(root, True, 6, horizon=1)  # so that an event can arrive too late
    yesterday = DATE - dt.timedelta(days=1)
    first = build_features(cfg, str(data), yesterday, spark=spark)
    with_events = [p.day.isoformat() for p in plan_days(cfg, str(data), yesterday) if p.version]
    assert first["report"]["days"]["days_computed"] == with_events  # all: nothing to reuse
    assert len(with_events) >= 8
    # A play that happened two days ago, filed yesterday: within the horizon (1 day).
    ts = dt.datetime.combine(DATE - dt.timedelta(days=2), dt.time(15), dt.UTC)
    known_video = int(pq.read_table(data / "videos", columns=["video_id"])["video_id"][0])
    late = _ev("late-1", ts, 7, known_video, watch=80.0)
    _append(data, yesterday, [late], "late-1.parquet")
    today = build_features(cfg, str(data), DATE, spark=spark)
    days = today["report"]["days"]
    two_days_ago = (DATE - dt.timedelta(days=2)).isoformat()
    # The new day and the day its late partition feeds; every other day is reused.
    assert days["days_computed"] == [two_days_ago, yesterday.isoformat()]
    assert days["histories_computed"] == [two_days_ago, yesterday.isoformat()]
    full = build_features(_cfg(tmp_path / "full", False, 6, 1), str(data), DATE, spark=spark)
    assert_same_tables(full["uri"], today["uri"])
    assert_same_report(full, today)
    assert "late-1" in set(_table(today["uri"], names.EXAMPLES)["event_id"])

    # Three days late with a 1-day horizon: counted, not used.
    too_late = _ev("late-2", ts - dt.timedelta(days=1), 7, known_video, watch=80.0)
    _append(data, yesterday, [too_late], "late-2.parquet")
    again = build_features(cfg, str(data), DATE, spark=spark)
    # Its file holds no row of two days ago (within the horizon): that day is reused.
    assert again["report"]["days"]["days_computed"] == [yesterday.isoformat()]
    counts = again["report"]["validation"]["watch_events"]
    assert counts["too_late"] == 1 and counts["too_late_by_day"] == {yesterday.isoformat(): 1}
    assert_same_tables(today["uri"], again["uri"])

    # A backfill: one day's outputs are lost; the rerun computes that day only.
    store = open_store(cfg)
    lost = next(p for p in plan_days(cfg, str(data), DATE) if p.day == DATE - dt.timedelta(days=4))
    for kind, version in ((names.FEATURES_DAY, lost.version), (names.FEATURES_HISTORY,
                          lost.history_version), (names.FEATURES, again["version"])):  # fmt: skip
        shutil.rmtree(store.local_path(kind, version))
    backfill = build_features(cfg, str(data), DATE, spark=spark)
    assert backfill["version"] == again["version"]
    assert backfill["report"]["days"]["days_computed"] == [lost.day.isoformat()]
    assert backfill["report"]["days"]["histories_computed"] == [lost.day.isoformat()]
    assert_same_tables(full["uri"], backfill["uri"])


def test_the_cutoffs_keep_what_ranking_every_row_keeps(spark: Any, tmp_path: Path) -> None:
    """recent_cutoffs (Spark) and the reader's rule (videorec.examples) against the
    window they replace, on users below, at and over the cap, with timestamps shared by
    several events (the event id breaks the tie, compared as text: "e6-10" < "e6-9")."""
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window as W

    from videorec.examples import ExampleRule, ExampleSource
    from videorec.features.incremental import recent_cutoffs

    rng = np.random.default_rng(7)
    t0 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    rows = [
        (int(u), f"e{u}-{i}", t0 + dt.timedelta(seconds=int(s)))
        for u, n in enumerate([0, 1, 4, 5, 6, 9, 40])
        for i, s in enumerate(rng.integers(0, 6, size=n))  # few distinct seconds: ties
    ]
    df = spark.createDataFrame(rows, "user_id long, event_id string, ts timestamp")
    newest = W.partitionBy("user_id").orderBy(F.col("ts").desc(), F.col("event_id").desc())
    cap = 5
    want = df.withColumn("_r", F.row_number().over(newest)).where(F.col("_r") <= cap)
    cutoffs = pa.Table.from_pandas(recent_cutoffs(df, cap).toPandas(), preserve_index=False)
    assert sorted(cutoffs["user_id"].to_pylist()) == [4, 5, 6]  # the users over the cap
    day = pa.table({
        "user_id": [r[0] for r in rows], "event_id": [r[1] for r in rows],
        "ts": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")),
        "video_id": [1] * len(rows), "completion": pa.array([None] * len(rows), pa.float64()),
    })  # fmt: skip
    pq.write_table(day, tmp_path / "day.parquet")
    rule = ExampleRule(window_start_us=0, window_end_us=0, cap=cap, positive_min_completion=0.5,
                       weight_watch_time_cap_s=1.0, weight_watch_time_exp=1.0,
                       weight_completion_exp=1.0, like_bonus=0.0)  # fmt: skip
    liked = pa.table({"user_id": pa.array([], pa.int64()), "video_id": pa.array([], pa.int64())})
    source = ExampleSource((str(tmp_path / "day.parquet"),), rule, liked, cutoffs)
    got = source.read(["user_id", "event_id"])
    assert sorted(got["event_id"].to_pylist()) == sorted(r.event_id for r in want.collect())
    assert dict(Counter(got["user_id"].to_pylist())) == {1: 1, 2: 4, 3: 5, 4: 5, 5: 5, 6: 5}
