"""The Spark feature stage on a hand-built log with known answers, on the synthetic
platform, and on the shared MovieLens copy."""

from __future__ import annotations

import datetime as dt
import json
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from videorec.artifact_names import (
    FEATURES_QUARANTINE,
    FEATURES_QUARANTINE_DAY,
    QUARANTINE_DAYS_FILE,
)
from videorec.artifacts import LocalArtifactStore
from videorec.config import Config, ContractConfig, parse_config
from videorec.contract import SCHEMAS, ContractViolation, conform
from videorec.dataset import DatasetWriter, append_events, event_files, read_manifest
from videorec.examples import COLUMNS, read_examples
from videorec.features.job import build_features, plan_features, quarantined_events

DATE = dt.date(2026, 11, 1)
T = dt.datetime(2026, 10, 20, 12, tzinfo=dt.UTC)
EVAL_T = dt.datetime(2026, 10, 31, 9, tzinfo=dt.UTC)  # inside the last day: the hold-out

pytestmark = pytest.mark.slow


def _cfg(tmp_path: Path, **features: Any) -> Config:
    return parse_config(
        {
            "artifacts": {"root": str(tmp_path / "artifacts")},
            "spark": {"master": "local[2]", "shuffle_partitions": 4},
            "features": features,
        }
    )


def _ev(eid: str, ts: dt.datetime, user: int, video: int, etype: str = "watch",
        watch: float | None = None, dur: float | None = 100.0) -> dict[str, Any]:  # fmt: skip
    return {
        "event_id": eid, "ts": ts, "user_id": user, "video_id": video, "event_type": etype,
        "watch_time_s": watch, "video_duration_s": dur, "session_id": "s", "device": "tv", "country": "FR",
    }  # fmt: skip


def _table(name: str, rows: list[dict[str, Any]]) -> pa.Table:
    schema = SCHEMAS[name]
    return pa.Table.from_pylist(
        [{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema
    )


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hand-built log whose features can be worked out on paper."""
    out = tmp_path_factory.mktemp("known") / "data"
    s = dt.timedelta(seconds=1)
    videos = [
        {"video_id": 1, "category": "Music", "channel_id": 10, "duration_s": 100.0, "published_at": T - 100 * s * 86400},
        {"video_id": 2, "category": "Music", "channel_id": 10, "duration_s": 1000.0, "published_at": T - 100 * s * 86400},
        {"video_id": 3, "category": "Gaming", "channel_id": 20, "duration_s": 3600.0, "published_at": T - 100 * s * 86400},
        {"video_id": 4, "category": "Gaming", "channel_id": 20, "duration_s": 200.0, "published_at": T - 100 * s * 86400},
        {"video_id": 5, "category": "Sports", "channel_id": 20, "duration_s": 500.0, "published_at": T - 100 * s * 86400},
        {"video_id": 6, "category": "Sports", "channel_id": 30, "duration_s": 600.0, "published_at": T - 100 * s * 86400},
        {"video_id": 7, "category": "Sports", "channel_id": 30, "duration_s": 600.0, "published_at": T - 100 * s * 86400},
    ] + [{"video_id": 100 + i, "category": "News & Politics", "channel_id": 40, "duration_s": 60.0,
          "published_at": T - 100 * s * 86400} for i in range(61)]  # fmt: skip
    events = [
        # user 1
        _ev("a1", T, 1, 1, watch=100.0),  # full short video: positive, weight 1 * 100/300
        _ev("a2", T + 10 * s, 1, 2, watch=200.0, dur=1000.0),  # 20%: history only
        _ev("a3", T + 20 * s, 1, 3, watch=2160.0, dur=3600.0),  # long video 60%: weight 0.6 * 1
        _ev("a4", T + 20 * s, 1, 4, watch=200.0, dur=200.0),  # same second, short full: 1 * 200/300
        _ev(
            "a5", T + 30 * s, 1, 5, "skip", watch=5.0, dur=500.0
        ),  # skip: not history, not positive
        _ev("a6", T + 40 * s, 1, 6, watch=180.0, dur=600.0),  # 30% but liked: positive
        _ev("a6l", T + 50 * s, 1, 6, "like", dur=600.0),
        _ev("a7", EVAL_T, 1, 1, watch=100.0),  # the last day: hold-out
        _ev(
            "a8", EVAL_T + s, 1, 7, "like", dur=600.0
        ),  # a like in the hold-out: not known in training
        _ev("a9", EVAL_T + 2 * s, 1, 7, watch=600.0, dur=600.0),
        # user 2: 61 plays, so history is cut at 50
        *[_ev(f"b{i:02d}", T + i * s, 2, 100 + i, watch=60.0, dur=60.0) for i in range(61)],
    ]
    users = [
        {"user_id": 1, "country": "FR", "signup_ts": T - 86400 * 10 * s},
        {"user_id": 2},
        {"user_id": 3},
    ]
    with DatasetWriter(out) as w:
        w.write_events(_table("watch_events", events))
        w.write_table("videos", _table("videos", videos))
        # Every channel_id a video names must be a channel (the unknown_channel rule).
        w.write_table("channels", _table("channels", [{"channel_id": c} for c in (10, 20, 30, 40)]))
        w.write_table("users", _table("users", users))
        w.finish(
            {"source": "test", "as_of": dt.datetime.combine(DATE, dt.time(), dt.UTC).isoformat()}
        )
    return out


@pytest.fixture(scope="module")
def known_out(known: Path, spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cfg = _cfg(tmp_path_factory.mktemp("known_out"))
    res = build_features(cfg, str(known), DATE, spark=spark)
    root = Path(res["uri"])
    return {
        "res": res,
        **{
            # The examples as every reader reads them (a table, or by reference).
            n: (
                read_examples(root, COLUMNS) if n == "examples" else pq.read_table(root / n)
            ).to_pandas()
            for n in (
                "examples",
                "eval",
                "video_features",
                "user_features",
                "trending",
                "watched",
                "online_user_features",
                "online_video_features",
            )
        },
    }


def test_known_examples_history_and_weights(known_out: dict[str, Any]) -> None:
    ex = known_out["examples"]
    u1 = ex[ex.user_id == 1].sort_values(["ts", "event_id"])
    assert u1.event_id.tolist() == ["a1", "a3", "a4", "a6"]
    assert [list(h) for h in u1.history] == [[], [1, 2], [1, 2], [1, 2, 3, 4]]
    w = dict(zip(u1.event_id, u1.weight, strict=True))
    assert w["a1"] == pytest.approx(100 / 300)
    assert w["a3"] == pytest.approx(0.6)  # a long video 60% watched ...
    assert w["a4"] == pytest.approx(200 / 300)  # ... weighs less than a short one watched fully
    assert w["a6"] == pytest.approx(0.3 * 180 / 300 + 0.5)  # liked: the like bonus
    assert dict(zip(u1.event_id, u1.liked, strict=True)) == {
        "a1": False,
        "a3": False,
        "a4": False,
        "a6": True,
    }
    row = u1.iloc[0]
    assert (row.device, row.country, row.hour) == ("tv", "FR", 12)
    assert row.example_age_days == pytest.approx(11.5)  # 2026-10-20 12:00 -> 2026-11-01 00:00
    u2 = ex[ex.user_id == 2].sort_values("ts")
    last = u2.iloc[-1]
    assert list(last.history) == [100 + i for i in range(10, 60)]  # the 50 before the 61st
    assert (u2.history_len == u2.history.map(len)).all()


def test_known_split(known_out: dict[str, Any]) -> None:
    ev = known_out["eval"]
    assert sorted(ev.video_id) == [1, 7] and set(ev.user_id) == {1}
    ex = known_out["examples"]
    assert (ex.ts < pd.Timestamp(DATE - dt.timedelta(days=1), tz="UTC")).all()
    assert 7 not in set(ex.video_id)  # hold-out videos (and the hold-out like) stay out
    report = known_out["res"]["report"]
    assert report["split"]["eval"]["plays"] == 2 and report["split"]["mode"] == "last_days"


def test_known_video_and_user_features(known_out: dict[str, Any]) -> None:
    vf = known_out["video_features"].set_index("video_id")
    assert len(vf) == 68  # every catalogue video, watched or not
    v1 = vf.loc[1]
    assert (v1.views, v1.unique_viewers, v1.avg_completion, v1.likes) == (
        1,
        1,
        1.0,
        0,
    )  # the hold-out rewatch excluded
    assert vf.loc[5].skip_rate == 1.0 and vf.loc[5].views == 1
    assert vf.loc[6].like_ratio == 1.0
    assert vf.loc[7].views == 0 and pd.isna(vf.loc[7].avg_completion)
    assert vf.loc[1].age_days == pytest.approx(100 + 11.5)
    # Channel 10 = videos 1 (completion 1.0) and 2 (0.2), one view each.
    assert vf.loc[2].channel_avg_completion == pytest.approx(0.6)
    n_ex = len(known_out["examples"])
    assert vf.loc[1].sampling_prob == pytest.approx(1 / n_ex)
    assert vf.sampling_prob.sum() == pytest.approx(1.0)
    uf = known_out["user_features"].set_index("user_id")
    assert list(uf.loc[1].recent_history) == [1, 2, 3, 4, 6]  # watches, time-ordered, no skip
    assert len(uf.loc[2].recent_history) == 50 and uf.loc[2].recent_history[-1] == 160
    prefs = uf.loc[1].preferred_categories
    assert prefs[0]["category"] == "Gaming"  # 2160 + 200 s of Gaming beats the rest
    assert sum(p["weight"] for p in prefs) == pytest.approx(1.0)
    assert dict(uf.loc[1].category_counts)["Music"] == 2
    assert uf.loc[3].plays == 0 and uf.loc[3].activity_level == "none"
    assert uf.loc[1].signup_age_days == pytest.approx(10 + 11.5)


def test_known_online_features_and_watched_cover_the_whole_window(
    known_out: dict[str, Any],
) -> None:
    # The watched set: every distinct video played (skips too), the hold-out included.
    w = known_out["watched"]
    u1 = w[w.user_id == 1].set_index("video_id")
    assert sorted(u1.index) == [1, 2, 3, 4, 5, 6, 7]
    assert u1.loc[1].plays == 2 and u1.loc[1].last_played_at == pd.Timestamp(EVAL_T)
    assert u1.loc[5].max_completion == pytest.approx(0.01)
    assert len(w[w.user_id == 2]) == 61
    # Online user features: the training ones plus the hold-out, and when last seen.
    ou = known_out["online_user_features"].set_index("user_id")
    assert list(ou.loc[1].recent_history) == [1, 2, 3, 4, 6, 1, 7]
    assert (
        ou.loc[1].plays == 8 and known_out["user_features"].set_index("user_id").loc[1].plays == 6
    )
    assert ou.loc[1].last_seen == pd.Timestamp(EVAL_T + dt.timedelta(seconds=2))
    assert ou.loc[1].last_played_at == pd.Timestamp(EVAL_T + dt.timedelta(seconds=2))
    assert pd.isna(ou.loc[3].last_seen) and ou.loc[3].activity_level == "none"
    # Online video features: the hold-out's view and like count; details for serving.
    ov = known_out["online_video_features"].set_index("video_id")
    assert ov.loc[7].views == 1 and ov.loc[7].like_ratio == 1.0
    assert ov.loc[1].views == 2 and ov.loc[1].duration_s == 100.0
    assert known_out["video_features"].set_index("video_id").loc[7].views == 0


def test_known_trending(known_out: dict[str, Any]) -> None:
    tr = known_out["trending"].set_index("video_id")
    assert set(tr.index) == {1, 7}  # plays in the 24 h before the date
    assert tr.loc[1].views_24h == 1 and tr.loc[1].views_1h == 0


def test_rerun_is_a_noop_and_config_change_is_a_new_version(
    known: Path, spark: Any, tmp_path: Path
) -> None:
    cfg = _cfg(tmp_path)
    first = build_features(cfg, str(known), DATE, spark=spark)
    again = build_features(cfg, str(known), DATE, spark=spark)
    assert again["skipped"] is True and again["version"] == first["version"]
    assert again["report"] == first["report"]
    store = LocalArtifactStore(tmp_path / "artifacts")
    assert store.list_versions("features") == [first["version"]]
    changed = build_features(_cfg(tmp_path, history_len=20), str(known), DATE, spark=spark)
    assert changed["skipped"] is False and changed["version"] != first["version"]
    assert sorted(store.list_versions("features")) == sorted([first["version"], changed["version"]])
    manifest = store.read_manifest("features", first["version"])
    assert manifest["config_digest"] == cfg.digest() and manifest["date"] == DATE.isoformat()


def test_a_file_appended_inside_the_window_is_a_new_version_that_reads_it(
    known: Path, spark: Any, tmp_path: Path
) -> None:
    """The version records exactly which files it read: an append (the event-log drain)
    inside the window makes a new version, not a stale no-op; one outside does not."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(known, data)
    cfg = _cfg(tmp_path)
    first = build_features(cfg, str(data), DATE, spark=spark)
    store = LocalArtifactStore(tmp_path / "artifacts")
    listed = store.read_manifest("features", first["version"])["event_files"]
    assert listed == event_files(data) and listed  # paths and sizes of what was read
    # Outside the window (the logical date's own day): the same version.
    late = [_ev("late", dt.datetime.combine(DATE, dt.time(1), dt.UTC), 3, 1, watch=100.0)]
    append_events(data, DATE, _table("watch_events", late), "drain-9-9.parquet")
    assert plan_features(cfg, str(data), DATE)["features_version"] == first["version"]
    # Inside: a request that showed videos 1 and 2 to user 3, a click on 2 and its play.
    served = [
        {**_ev("i1", T, 3, 1, "impression", dur=None), "request_id": "q", "position": 0,
         "source": "personal"},
        {**_ev("i2", T, 3, 2, "impression", dur=None), "request_id": "q", "position": 1,
         "source": "explore"},
        {**_ev("c2", T, 3, 2, "click", dur=None), "request_id": "q", "source": "explore"},
        _ev("w2", T + dt.timedelta(seconds=1), 3, 2, watch=1000.0, dur=1000.0),
    ]  # fmt: skip
    append_events(data, T.date(), _table("watch_events", served), "drain-1-4.parquet")
    planned = plan_features(cfg, str(data), DATE)["features_version"]
    second = build_features(cfg, str(data), DATE, spark=spark)
    assert second["skipped"] is False and second["version"] == planned != first["version"]
    files = store.read_manifest("features", second["version"])["event_files"]
    assert f"dt={T.date()}/drain-1-4.parquet" in [f["path"] for f in files]
    assert f"dt={DATE}/drain-9-9.parquet" not in [f["path"] for f in files]
    out = Path(second["uri"])
    vf = pq.read_table(out / "video_features").to_pandas().set_index("video_id")
    assert (vf.loc[2].impressions, vf.loc[2].clicks, vf.loc[2].ctr) == (1, 1, 1.0)
    assert vf.loc[1].impressions == 1 and vf.loc[1].clicks == 0 and vf.loc[1].ctr == 0.0
    assert pd.isna(vf.loc[3].ctr)  # never shown: no rate
    # Impressions and clicks are not plays: only the new watch adds an example.
    examples = read_examples(out, COLUMNS).to_pandas()
    before = read_examples(first["uri"], COLUMNS).to_pandas()
    assert len(examples) == len(before) + 1
    assert set(examples.event_id) - set(before.event_id) == {"w2"}


def test_bad_rows_quarantined_with_counts_equal_to_injected(
    corrupt_platform: Path, spark: Any, tmp_path: Path
) -> None:
    injected = read_manifest(corrupt_platform)["injected_corruption"]
    cfg = _cfg(tmp_path, window_days=14)
    res = build_features(cfg, str(corrupt_platform), DATE, spark=spark)
    assert res["report"]["validation"]["watch_events"]["by_reason"] == injected
    store = LocalArtifactStore(tmp_path / "artifacts")
    q = quarantined_events(store, res["version"]).to_pandas()
    assert q.quarantine_reason.value_counts().to_dict() == injected


def test_the_incremental_quarantine_stores_each_day_s_rows_once(
    corrupt_platform: Path, spark: Any, tmp_path: Path
) -> None:
    """A daily run stores its new day's refused rows alone; its quarantine lists the
    window's day quarantines, the days it shares with the day before's as the same
    versions, and reads back as the whole window's refused rows."""
    cfg = _cfg(tmp_path, window_days=14)
    store = LocalArtifactStore(tmp_path / "artifacts")
    first = build_features(cfg, str(corrupt_platform), DATE - dt.timedelta(days=1), spark=spark)
    stored_before = set(store.list_versions(FEATURES_QUARANTINE_DAY))
    res = build_features(cfg, str(corrupt_platform), DATE, spark=spark)
    assert res["report"]["days"]["days_computed"] == [(DATE - dt.timedelta(days=1)).isoformat()]
    new = set(store.list_versions(FEATURES_QUARANTINE_DAY)) - stored_before
    assert len(new) == 1 and next(iter(new)).startswith((DATE - dt.timedelta(days=1)).isoformat())

    def listed(version: str) -> dict[str, str]:
        doc = json.loads(store.read_bytes(FEATURES_QUARANTINE, version, QUARANTINE_DAYS_FILE))
        return {d["day"]: d["version"] for d in doc["days"]}

    old, now = listed(first["version"]), listed(res["version"])
    shared = set(old) & set(now)
    assert len(shared) == 13 and all(old[d] == now[d] for d in shared)
    assert not (store.local_path(FEATURES_QUARANTINE, res["version"]) / "watch_events").exists()
    q = quarantined_events(store, res["version"]).to_pandas()
    by_reason = res["report"]["validation"]["watch_events"]["by_reason"]
    assert by_reason and q.quarantine_reason.value_counts().to_dict() == by_reason


def test_too_many_bad_rows_refuses_but_keeps_the_quarantine(
    corrupt_platform: Path, spark: Any, tmp_path: Path
) -> None:
    cfg = parse_config(
        {
            "artifacts": {"root": str(tmp_path / "artifacts")},
            "features": {"window_days": 14},
            "contract": {"max_invalid_share": 0.001},
        }
    )
    with pytest.raises(ContractViolation, match="quarantine at"):
        build_features(cfg, str(corrupt_platform), DATE, spark=spark)
    store = LocalArtifactStore(tmp_path / "artifacts")
    assert store.list_versions("features") == []
    assert len(store.list_versions(FEATURES_QUARANTINE)) == 1


def _no_leak(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """No example comes from the hold-out, and each user's hold-out follows all of their
    training examples in (ts, video_id) order."""
    ex = read_examples(root, COLUMNS).to_pandas()
    ev = pq.read_table(root / "eval").to_pandas()
    eval_keys = set(zip(ev.user_id, ev.video_id, ev.ts, strict=True))
    assert not eval_keys & set(zip(ex.user_id, ex.video_id, ex.ts, strict=True))
    first_eval = ev.sort_values(["ts", "video_id"]).groupby("user_id").first()
    last_train = ex.sort_values(["ts", "video_id"]).groupby("user_id").last()
    both = last_train.join(first_eval, lsuffix="_train", rsuffix="_eval", how="inner")
    later = (both.ts_eval > both.ts_train) | (
        (both.ts_eval == both.ts_train) & (both.video_id_eval > both.video_id_train)
    )
    assert later.all()
    return ex, ev


def test_synthetic_platform_split_has_no_leak(
    small_platform: Path, spark: Any, tmp_path: Path
) -> None:
    res = build_features(_cfg(tmp_path), str(small_platform), DATE, spark=spark)
    root = Path(res["uri"])
    ex, ev = _no_leak(root)
    assert (ev.ts >= pd.Timestamp(DATE - dt.timedelta(days=1), tz="UTC")).all()
    # Every history item is a watch of that user strictly before the example.
    from videorec.dataset import read_events

    events = read_events(small_platform).to_pandas()
    watch_ts = events[events.event_type == "watch"].groupby(["user_id", "video_id"]).ts.min()
    sample = ex.sample(300, random_state=1)
    for row in sample.itertuples():
        for v in row.history:
            assert watch_ts.loc[(row.user_id, v)] < row.ts
    assert ex.history_len.max() == 50
    assert ex.groupby("user_id").size().max() <= 300
    report = json.loads((root / "quality_report.json").read_text())
    assert report["outputs"]["examples"] == len(ex)
    assert report["coverage"]["users_in_table"] == 3000


def test_movielens_per_user_split(movielens_small: Path, spark: Any, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, window_days=10_000)
    res = build_features(cfg, str(movielens_small), dt.date(2018, 9, 25), spark=spark)
    root = Path(res["uri"])
    ex, ev = _no_leak(root)
    report = res["report"]
    assert report["split"]["mode"] == "per_user"
    assert report["split"]["train"]["plays"] + report["split"]["eval"]["plays"] == 100_836
    # Each user's last max(1, floor(0.2 n)) ratings by time are held out.
    ratings = pd.read_csv(MOVIELENS_RATINGS)
    n = ratings.groupby("userId").size()
    expected = n.map(lambda k: max(1, int(0.2 * k)))
    assert ev.groupby("user_id").size().sort_index().tolist() == expected.sort_index().tolist()
    assert report["split"]["eval"]["plays"] == int(expected.sum())
    # Every training rating is a positive (no watch time), capped at 300 per user.
    assert len(ex) == int(((n - expected).clip(upper=300)).sum())


MOVIELENS_RATINGS = (
    Path(__file__).resolve().parents[2] / "shared/datasets/ml-latest-small/ratings.csv"
)


@pytest.fixture(scope="module")
def movielens_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not MOVIELENS_RATINGS.exists():
        pytest.skip("the shared MovieLens copy is not present")
    from videorec.datagen.movielens import import_movielens

    out = tmp_path_factory.mktemp("ml") / "ml-small"
    import_movielens(MOVIELENS_RATINGS.parent, out, config_digest="test")
    return out


# ---- contract hardening: what the Spark path quarantines, keeps and refuses ---------

EPOCH = dt.datetime(1970, 1, 1, 0, 0, 5, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rows each contract gap used to let through, beside good ones, filed by arrival."""
    out = tmp_path_factory.mktemp("edge") / "data"
    nan, inf = float("nan"), float("inf")
    videos = [
        {"video_id": v, "category": "Music", "channel_id": 1, "duration_s": 100.0}
        for v in (1, 2, 3, 4)
    ]
    videos.append({"video_id": 5, "category": "Music", "channel_id": 99, "duration_s": 100.0})
    rows = [  # (event, arrival); arrival None = its own ts
        (_ev("ok1", T, 1, 1, watch=100.0), None),
        (_ev("ok2", T + dt.timedelta(seconds=10), 1, 2, watch=80.0), None),
        (_ev("late_ok", T - dt.timedelta(hours=48), 2, 1, watch=100.0), T),  # within 72 h
        (_ev("newbie", T, 7, 3, watch=100.0), None),  # user 7 is not in `users`
        (_ev("nan_dur", T + dt.timedelta(seconds=20), 1, 3, watch=90.0, dur=nan), None),
        (_ev("nan_watch", T + dt.timedelta(seconds=30), 1, 4, watch=nan), None),
        (_ev("inf_watch", T, 2, 2, watch=inf), None),
        (_ev("huge_no_dur", T, 2, 3, watch=1e9, dur=None), None),
        (_ev("epoch", EPOCH, 2, 4, watch=100.0), T),
        (_ev("misfiled", T - dt.timedelta(days=5), 2, 2, watch=100.0), T),
        (_ev("chan", T, 1, 5, watch=100.0), None),  # video 5's channel does not exist
    ]  # fmt: skip
    events = _table("watch_events", [e for e, _ in rows])
    arrival = pa.array([a or e["ts"] for e, a in rows], type=pa.timestamp("us", tz="UTC"))
    with DatasetWriter(out) as w:
        w.write_events(events, partition_ts=arrival)
        w.write_table("videos", _table("videos", videos))
        w.write_table("channels", _table("channels", [{"channel_id": 1, "name": "c"}]))
        w.write_table("users", _table("users", [{"user_id": 1}, {"user_id": 2}]))
        w.finish(
            {"source": "test", "as_of": dt.datetime.combine(DATE, dt.time(), dt.UTC).isoformat()}
        )
    return out


EDGE_REASONS = {
    "nan_dur": "invalid_duration",
    "nan_watch": "non_finite_watch_time",
    "inf_watch": "non_finite_watch_time",
    "huge_no_dur": "watch_time_over_cap",
    "epoch": "timestamp_before_floor",
    "misfiled": "partition_mismatch",
    "chan": "unknown_video",
}


def test_spark_quarantines_non_finite_and_other_gaps_and_keeps_unknown_users(
    edge: Path, spark: Any, tmp_path: Path
) -> None:
    cfg = parse_config(
        {
            "artifacts": {"root": str(tmp_path / "artifacts")},
            "contract": {"max_invalid_share": 0.7},  # the log is mostly bad on purpose
        }
    )
    res = build_features(cfg, str(edge), DATE, spark=spark)
    qroot = tmp_path / "artifacts" / FEATURES_QUARANTINE / res["version"]
    q = quarantined_events(LocalArtifactStore(tmp_path / "artifacts"), res["version"]).to_pandas()
    # The NaN / infinite rows reach the contract's code intact and get their own reason.
    assert dict(zip(q.event_id, q.quarantine_reason, strict=True)) == EDGE_REASONS
    assert q.watch_time_s[q.event_id == "nan_watch"].isna().all()  # kept as they came
    root = Path(res["uri"])
    ex = read_examples(root, COLUMNS).to_pandas()
    ev = pq.read_table(root / "eval").to_pandas()
    # None of them became a (full-weight) positive, or a hold-out row.
    assert dict(zip(ex.event_id, ex.weight, strict=True)) == pytest.approx(
        {"ok1": 100 / 300, "ok2": 0.8 * 80 / 300, "late_ok": 100 / 300, "newbie": 100 / 300}
    )
    assert ev.empty  # nothing falls in the hold-out day
    v = res["report"]["validation"]
    assert v["watch_events"]["by_reason"] == {
        r: list(EDGE_REASONS.values()).count(r) for r in set(EDGE_REASONS.values())
    }
    # The user missing from `users` is kept, counted and given a minimal row.
    assert v["watch_events"]["accepted"] == {"unknown_user": 1}
    assert v["users"]["rows_added"] == 1 and res["report"]["coverage"]["users_added"] == 1
    uf = pq.read_table(root / "user_features").to_pandas().set_index("user_id")
    assert uf.loc[7].plays == 1 and pd.isna(uf.loc[7].country)
    # The dimension quarantine is published with the events' one.
    assert v["videos"]["by_reason"] == {"unknown_channel": 1}
    dq = pq.read_table(qroot / "dimensions" / "videos.parquet")
    assert dq["video_id"].to_pylist() == [5]
    assert dq["quarantine_reason"].to_pylist() == ["unknown_channel"]


def test_dimension_bad_share_refuses_after_publishing_its_quarantine(
    spark: Any, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    videos = [{"video_id": 1, "title": "a"}, {"video_id": 1, "title": "copy"}, {"title": "no id"}]
    with DatasetWriter(data) as w:
        w.write_events(_table("watch_events", [_ev("a", T, 1, 1, watch=100.0)]))
        w.write_table("videos", _table("videos", videos))
        w.write_table("users", _table("users", [{"user_id": 1}]))
        w.finish(
            {"source": "test", "as_of": dt.datetime.combine(DATE, dt.time(), dt.UTC).isoformat()}
        )
    with pytest.raises(ContractViolation, match=r"videos: 2 of 3 rows.*quarantine at"):
        build_features(_cfg(tmp_path), str(data), DATE, spark=spark)
    store = LocalArtifactStore(tmp_path / "artifacts")
    assert store.list_versions("features") == []  # nothing else was published
    (version,) = store.list_versions(FEATURES_QUARANTINE)
    q = pq.read_table(store.local_path(FEATURES_QUARANTINE, version) / "dimensions/videos.parquet")
    assert sorted(q["quarantine_reason"].to_pylist()) == ["duplicate_id", "null_id"]


def test_dimension_quarantine_is_written_through_s3(
    s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dimension quarantine goes through the pyarrow filesystem of the version's
    URI, so an S3 artifact store gets it like a local one."""
    from conftest import s3_client

    from videorec.artifacts import S3ArtifactStore
    from videorec.contract import validate_dimension
    from videorec.features import job

    for k, val in {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "test",
                   "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
                   "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(k, val)
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="dim-quarantine")
    store = S3ArtifactStore("dim-quarantine", "videorec", client, cache_dir=tmp_path / "cache")
    videos = _table("videos", [{"video_id": 1}, {"video_id": 1}, {"video_id": None}])
    dims = {"videos": validate_dimension(videos, "videos")}
    with store.write_version_at(FEATURES_QUARANTINE, "v1") as qdir:
        assert qdir.startswith("s3://")
        job._write_dimension_quarantine(f"{qdir}/dimensions", dims)
    local = store.local_path(FEATURES_QUARANTINE, "v1")
    q = pq.read_table(local / "dimensions" / "videos.parquet")
    assert q.num_rows == 2 and sorted(q["quarantine_reason"].to_pylist()) == [
        "duplicate_id",
        "null_id",
    ]


@pytest.fixture(scope="module")
def long_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MovieLens-shaped: 192 ratings a year before the date, 8 in its last 30 days."""
    out = tmp_path_factory.mktemp("long") / "data"
    old = T - dt.timedelta(days=365)
    events = [
        _ev(f"o{i}", old + dt.timedelta(hours=i), 1 + i % 5, 1 + i % 20, dur=None)
        for i in range(192)
    ]
    events += [_ev(f"n{i}", T + dt.timedelta(hours=i), 1 + i % 5, 1 + i % 20, dur=None) for i in range(8)]  # fmt: skip
    with DatasetWriter(out) as w:
        w.write_events(_table("watch_events", events))
        w.write_table("videos", _table("videos", [{"video_id": v} for v in range(1, 21)]))
        w.write_table("users", _table("users", [{"user_id": u} for u in range(1, 6)]))
        w.finish(
            {
                "source": "movielens",
                "as_of": dt.datetime.combine(DATE, dt.time(), dt.UTC).isoformat(),
                "counts": {"watch_events": 200, "videos": 20, "channels": 0, "users": 5},
            }
        )
    return out


def test_a_window_with_a_sliver_of_the_data_says_so_and_names_the_fix(
    long_history: Path, spark: Any, tmp_path: Path
) -> None:
    with pytest.warns(UserWarning, match=r"--profile movielens"):
        res = build_features(_cfg(tmp_path), str(long_history), DATE, spark=spark)
    assert res["report"]["window_share"] == pytest.approx(8 / 200)
    assert res["report"]["outputs"]["examples"] > 0  # a model can train, on 4% of the data
    (msg,) = res["warnings"]
    assert res["report"]["warnings"] == [msg]
    assert "features.window_days" in msg and "8 of the data set's 200 events" in msg
    # A reused version says it again.
    with pytest.warns(UserWarning, match=r"features\.window_days"):
        again = build_features(_cfg(tmp_path), str(long_history), DATE, spark=spark)
    assert again["skipped"] and again["warnings"] == [msg]
    # A window over the whole history is quiet.
    whole = build_features(_cfg(tmp_path, window_days=400), str(long_history), DATE, spark=spark)
    assert whole["warnings"] == [] and whole["report"]["window_share"] == 1.0


def test_a_window_without_a_positive_example_is_refused(
    known: Path, spark: Any, tmp_path: Path
) -> None:
    # The last day holds 3 of the log's 71 events and all are hold-out: nothing to train on.
    with (
        pytest.raises(
            ValueError, match=r"not one positive training example.*features\.window_days"
        ),
        pytest.warns(UserWarning),
    ):
        build_features(_cfg(tmp_path, window_days=1), str(known), DATE, spark=spark)
    assert LocalArtifactStore(tmp_path / "artifacts").list_versions("features") == []


@pytest.mark.parametrize("incremental", [True, False])
def test_a_window_after_the_data_is_refused_by_name(
    known: Path, spark: Any, tmp_path: Path, incremental: bool
) -> None:
    """A date long after the log's last event: no file in the window. The incremental
    stage said Spark's "CANNOT_INFER_EMPTY_SCHEMA" (found by review)."""
    cfg = _cfg(tmp_path, incremental=incremental)
    late = DATE + dt.timedelta(days=400)
    with (
        pytest.raises(ValueError, match=r"window holds 0 events .*not one positive training"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # the window-share warning says it too
        build_features(cfg, str(known), late, spark=spark)
    assert LocalArtifactStore(tmp_path / "artifacts").list_versions("features") == []


def test_spark_and_arrow_apply_the_same_row_rules(spark: Any) -> None:
    """The contract's row rules are written once (``event_row_checks``) and evaluated by
    Acero in the pyarrow readers and by Spark in the feature job; NaN, infinity, null and
    malformed partitions behave differently in the two engines, so every combination of
    edge values must get the same reason from both."""
    import numpy as np

    from videorec.config import ContractConfig
    from videorec.contract import EVENT_RULES, EVENT_TYPES, event_row_codes, unknown_user_mask
    from videorec.features.job import with_reasons

    limits = ContractConfig()
    as_of = dt.datetime.combine(DATE, dt.time(), dt.UTC)
    us = dt.timedelta(microseconds=1)
    nan, inf = float("nan"), float("inf")
    floor = limits.min_timestamp
    day = dt.datetime.combine(T.date(), dt.time(), dt.UTC)
    late = dt.timedelta(hours=limits.late_arrival_hours)
    pools: dict[str, list[Any]] = {
        "event_id": ["a", "b", None],
        "ts": [T, T - dt.timedelta(hours=71), T - dt.timedelta(hours=80), as_of - us, as_of,
               floor - us, floor, None,
               # the edges of T's partition: [day - late_arrival_hours, day + 1)
               day + dt.timedelta(days=1) - us, day + dt.timedelta(days=1),
               day - late, day - late - us],
        "user_id": [1, 2, 7, None],
        "video_id": [1, 2, 999, None],
        "event_type": [*EVENT_TYPES, "view", "", None],
        "watch_time_s": [None, 0.0, -0.0, 50.0, 300.0, 300.5, -1.0, nan, inf, -inf,
                         limits.max_watch_time_s, limits.max_watch_time_s + 1],
        "video_duration_s": [None, 100.0, 0.0, -5.0, nan, inf, -inf, limits.max_duration_s,
                             limits.max_duration_s * 2, 1e6],
        "position": [None, 0, 3, -1],
        "session_id": ["s"],
        "device": ["tv"],
        "country": ["FR"],
        "dt": [T.date().isoformat(), (T + dt.timedelta(days=1)).date().isoformat(),
               "2026-10-23", "garbage", "2026-13-01", "", None],
    }  # fmt: skip
    rng = np.random.default_rng(7)
    n = 6000
    rows = [{k: v[rng.integers(len(v))] for k, v in pools.items()} for _ in range(n)]
    table = pa.Table.from_pylist(rows)
    events = conform(table, "watch_events")
    known_videos, known_users = np.array([1, 2]), np.array([1, 2])
    arrow_codes = event_row_codes(
        events, known_videos, as_of, limits=limits, partition_dt=table["dt"]
    )
    frame = spark.createDataFrame(
        events.append_column("dt", table["dt"]).append_column("_pos", pa.array(np.arange(n)))
    )
    out = with_reasons(frame, known_videos, known_users, as_of, limits).toArrow()
    out = out.sort_by("_pos")
    spark_reasons = out["quarantine_reason"].to_pylist()
    arrow_reasons = [None if c == 0 else EVENT_RULES[c - 1].value for c in arrow_codes]
    mismatched = [
        (rows[i], arrow_reasons[i], spark_reasons[i])
        for i in range(n)
        if arrow_reasons[i] != spark_reasons[i]
    ]
    assert not mismatched, mismatched[:5]

    # Every row rule is exercised, and valid rows too.
    assert set(arrow_reasons) == {None, *(r.value for r in EVENT_RULES[:-1])}
    assert out["_unknown_user"].to_pylist() == unknown_user_mask(events, known_users).tolist()


def test_spark_and_arrow_weigh_examples_alike(spark: Any) -> None:
    """The training weight is written once (``example_weight``): the full pass evaluates
    it in Spark and the examples read by reference in Acero, so every combination of
    edge values (no completion, no watch time, zero, above the cap, liked) must weigh
    the same in both, and as the formula says."""
    import numpy as np

    from videorec.config import FeaturesConfig
    from videorec.examples import arrow_weights
    from videorec.features.job import _weight

    f = FeaturesConfig(weight_watch_time_exp=0.5, weight_completion_exp=2.0, like_bonus=0.25)
    cap = f.weight_watch_time_cap_s
    pools: dict[str, list[Any]] = {
        "watch_time_s": [None, 0.0, 1.0, cap / 2, cap, cap * 3],
        "completion": [None, 0.0, 0.3, 1.0, 1.7],
        "liked": [False, True],
    }
    rows = [
        {"watch_time_s": w, "completion": c, "liked": k}
        for w in pools["watch_time_s"]
        for c in pools["completion"]
        for k in pools["liked"]
    ]
    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema([("watch_time_s", pa.float64()), ("completion", pa.float64()),
                          ("liked", pa.bool_())]),
    )  # fmt: skip
    arrow = arrow_weights(table, f).to_numpy()
    cfg = parse_config({"features": f.model_dump()})
    spark_w = np.array(
        [
            r.weight
            for r in spark.createDataFrame(table).select(_weight(cfg).alias("weight")).collect()
        ]
    )

    def expected(r: dict[str, Any]) -> float:
        w, c = r["watch_time_s"], r["completion"]
        watch = 1.0 if w is None else min(w, cap) / cap
        base = 1.0 if c is None else c**2.0 * watch**0.5
        return base + 0.25 * r["liked"]

    assert arrow == pytest.approx([expected(r) for r in rows], rel=1e-12)
    assert spark_w == pytest.approx(arrow, rel=1e-12)


def test_spark_and_arrow_agree_on_positive_plays(spark: Any) -> None:
    """Which plays are positive without a like is written once (``played_enough``):
    Spark decides it for the full pass and the day tables, Acero for the examples read
    by reference (day files of watches). Over no completion, zero, just under, at and
    above the threshold, a full watch and NaN (above every number, as Spark orders it),
    both engines give the rule's answer for watches, and Spark counts a skip only when
    it was completed enough."""
    from videorec.config import FeaturesConfig
    from videorec.examples import arrow_played_enough
    from videorec.features.job import played_enough

    f = FeaturesConfig(positive_min_completion=0.5)
    completions = [None, 0.0, 0.4999, 0.5, 0.7, 1.0, float("nan")]
    schema = pa.schema([("completion", pa.float64()), ("event_type", pa.string())])
    rows = [{"completion": c, "event_type": t} for t in ("watch", "skip") for c in completions]
    table = pa.Table.from_pylist(rows, schema=schema)

    def expected(r: dict[str, Any]) -> bool:
        c = r["completion"]
        if c is None:
            return r["event_type"] == "watch"
        return c != c or c >= 0.5  # NaN counts as completed

    want = [expected(r) for r in rows]
    assert want[:7] == [True, False, False, True, True, True, True]
    got_spark = [
        r.e for r in spark.createDataFrame(table).select(played_enough(f).alias("e")).collect()
    ]
    assert got_spark == want
    watches = table.slice(0, len(completions)).drop_columns(["event_type"])
    assert arrow_played_enough(watches, f).tolist() == want[: len(completions)]


def test_spark_marks_the_duplicates_the_arrow_validator_marks(spark: Any) -> None:
    """The feature job's ``mark_duplicates`` gives each row the reason the readers'
    ``validate_events`` gives it: among copies that pass every other rule the earliest
    (ts, then read order) is kept, copies of bad rows evict no good twin, and an id
    seen once is untouched."""
    import numpy as np

    from videorec.contract import validate_events
    from videorec.features import job

    as_of = dt.datetime.combine(DATE, dt.time(), dt.UTC)
    rng = np.random.default_rng(11)
    n = 3000
    rows = [
        {**_ev(f"e{rng.integers(900)}", T + dt.timedelta(minutes=int(rng.integers(4))),
               1, 1, watch=float(rng.choice([50.0, -1.0, 80.0]))), "session_id": str(i)}
        for i in range(n)
    ]  # fmt: skip
    table = _table("watch_events", rows)
    res = validate_events(table, [1], as_of)
    arrow = dict.fromkeys(res.valid["session_id"].to_pylist())
    q = res.quarantined
    arrow.update(zip(q["session_id"].to_pylist(), q["quarantine_reason"].to_pylist(), strict=True))
    assert res.counts["duplicate_id"] > 100 and res.counts["negative_watch_time"] > 100

    def spark_reasons(t: pa.Table) -> dict[str, str | None]:
        frame = spark.createDataFrame(
            t.append_column("dt", pa.array([T.date().isoformat()] * t.num_rows)).append_column(
                "_pos", pa.array(np.arange(t.num_rows))
            )
        )
        checked = job.with_reasons(frame, np.array([1]), np.array([1]), as_of, ContractConfig())
        marked = job.mark_duplicates(checked, ["event_id"])
        out = marked.select("session_id", "quarantine_reason").toArrow()
        return dict(zip(out["session_id"].to_pylist(), out["quarantine_reason"].to_pylist(),
                        strict=True))  # fmt: skip

    assert spark_reasons(table) == arrow
    once = table.take(pa.array(sorted({r["event_id"]: i for i, r in enumerate(rows)}.values())))
    assert set(spark_reasons(once).values()) == {None, "negative_watch_time"}


def test_preferred_categories_break_float_noise_ties_by_name(spark: Any) -> None:
    """0.1 + 0.2 and 0.3 seconds are one watch time summed in two orders (the full pass
    and the incremental stage sum by different groupings): a tie, won by the name."""
    from videorec.features.job import user_table

    f = parse_config({}).features
    per_cat = spark.createDataFrame(
        [(1, "News", 1, 0.1 + 0.2), (1, "Music", 1, 0.3), (1, "Gaming", 1, 0.29)],
        "user_id long, category string, plays long, time double",
    )
    activity = spark.createDataFrame([(1, 3, 1, 10.0)], "user_id long, plays long, "
                                     "active_days long, avg_watch_time_s double")  # fmt: skip
    recent = spark.createDataFrame([(1, [5])], "user_id long, recent_history array<long>")
    users = spark.createDataFrame(
        [(1, "FR", "fr", None)],
        "user_id long, country string, language string, signup_ts timestamp",
    )
    as_of = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    row = user_table(recent, per_cat, activity, users, f, as_of).collect()[0]
    assert [p["category"] for p in row["preferred_categories"]] == ["Music", "News", "Gaming"]


def test_generated_code_stays_within_what_the_jit_compiles(spark: Any) -> None:
    """Whole-stage codegen gives up above HotSpot's 8,000-byte method limit, and the
    session's JVM runs with the config's ``spark.java_options``: HotSpot's
    DontCompileHugeMethods is off in the running JVM (read back from HotSpot, not from
    Spark's conf), and the executors are given the same options."""
    assert spark.conf.get("spark.sql.codegen.hugeMethodLimit") == "8000"
    from videorec.config import SparkConfig

    assert SparkConfig().java_options == "-XX:-DontCompileHugeMethods"
    jvm = spark.sparkContext._jvm
    bean_class = jvm.java.lang.Class.forName("com.sun.management.HotSpotDiagnosticMXBean")
    hotspot = jvm.java.lang.management.ManagementFactory.getPlatformMXBean(bean_class)
    assert hotspot.getVMOption("DontCompileHugeMethods").getValue() == "false"
    # Spark puts its own module flags (--add-opens ...) before the config's.
    executor = spark.sparkContext.getConf().get("spark.executor.extraJavaOptions").split()
    assert "-XX:-DontCompileHugeMethods" in executor


def test_reading_many_event_files_lists_them_in_one_task_per_core(
    spark: Any, tmp_path: Path
) -> None:
    """The stage names every event file it reads. Past 32 paths Spark checks them in a
    listing job, by default one task per file; the session gives that job as many tasks
    as it has cores (``local[2]``: 2), and a configured value wins."""
    from videorec.features.session import LISTING_PARALLELISM, listing_tasks, spark_session

    paths = []
    for i in range(40):
        pq.write_table(pa.table({"x": [i]}), tmp_path / f"part-{i:02d}.parquet")
        paths.append(str(tmp_path / f"part-{i:02d}.parquet"))
    sc = spark.sparkContext
    assert listing_tasks(spark) == sc.defaultParallelism == 2
    sc.setJobGroup("listing-test", "list 40 files")
    try:
        assert spark.read.parquet(*paths).count() == 40
    finally:
        sc.setJobGroup("", "")
    tracker = sc.statusTracker()
    stages = [
        tracker.getStageInfo(s)
        for j in tracker.getJobIdsForGroup("listing-test")
        for s in tracker.getJobInfo(j).stageIds
    ]
    # The listing job and the schema read are named after the call (`parquet at ...`).
    listing = [s for s in stages if s.name.startswith("parquet at")]
    assert listing, [s.name for s in stages]
    assert max(s.numTasks for s in listing) <= 2
    assert spark.conf.get(LISTING_PARALLELISM) == "2"
    cfg = parse_config({"spark": {"conf": {LISTING_PARALLELISM: "7"}}})
    try:
        assert spark_session(cfg).conf.get(LISTING_PARALLELISM) == "7"
    finally:
        spark.conf.set(LISTING_PARALLELISM, "2")
