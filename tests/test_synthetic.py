"""The synthetic platform: determinism and the statistical shape it promises."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from videorec.datagen.synthetic import CATEGORIES, PAGE_LEN, GeneratorParams, generate
from videorec.dataset import DatasetError, load_validated, read_events, read_manifest, read_table

END = dt.date(2026, 11, 1)


def _tables(root: Path) -> dict[str, pa.Table]:
    out = {name: read_table(root, name) for name in ("videos", "channels", "users")}
    out["watch_events"] = read_events(root)
    for gt in ("users", "videos"):
        out[f"gt_{gt}"] = pq.read_table(root / "ground_truth" / gt)
    return out


def _bytes(table: pa.Table) -> bytes:
    """The table as Arrow IPC bytes: equal bytes are equal tables, NaN included
    (Table.equals calls NaN unequal to itself, and --corrupt injects NaNs)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table.combine_chunks())
    return sink.getvalue().to_pybytes()


def test_same_seed_same_data_other_seed_other_data(tmp_path: Path) -> None:
    params = GeneratorParams(users=400, videos=300, days=10, seed=3, end_date=END, corrupt=0.01)
    generate(params, tmp_path / "a", config_digest="t", progress=False)
    generate(params, tmp_path / "b", config_digest="t", progress=False)
    a, b = _tables(tmp_path / "a"), _tables(tmp_path / "b")
    # The corruption includes NaN watch times and durations; they repeat bit for bit.
    assert pc.sum(pc.is_nan(a["watch_events"]["watch_time_s"])).as_py() > 0
    for name in a:
        assert _bytes(a[name]) == _bytes(b[name]), name
    assert read_manifest(tmp_path / "a") == read_manifest(tmp_path / "b")
    other = GeneratorParams(users=400, videos=300, days=10, seed=4, end_date=END, corrupt=0.01)
    generate(other, tmp_path / "c", config_digest="t", progress=False)
    assert _bytes(_tables(tmp_path / "c")["watch_events"]) != _bytes(a["watch_events"])


def test_existing_output_is_not_replaced_without_overwrite(tmp_path: Path) -> None:
    params = GeneratorParams(users=50, videos=40, days=3, seed=1, end_date=END)
    generate(params, tmp_path / "d", config_digest="t", progress=False)
    before = read_manifest(tmp_path / "d")
    with pytest.raises(DatasetError, match="already exists"):
        generate(
            GeneratorParams(users=60, videos=40, days=3, seed=1, end_date=END),
            tmp_path / "d",
            config_digest="t",
            progress=False,
        )
    assert read_manifest(tmp_path / "d") == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_overwrite_replaces_a_data_set_or_an_empty_folder_and_nothing_else(
    tmp_path: Path,
) -> None:
    """Found by review: --overwrite deleted any folder (or file) at the target."""
    params = GeneratorParams(users=50, videos=40, days=3, seed=1, end_date=END)
    other = tmp_path / "not-a-data-set"
    (other / "sub").mkdir(parents=True)
    (other / "sub" / "notes.txt").write_text("keep me")
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("keep me too")
    for target in (other, a_file):
        with pytest.raises(DatasetError, match=r"not a data set .* refusing to replace it"):
            generate(params, target, config_digest="t", overwrite=True, progress=False)
    assert (other / "sub" / "notes.txt").read_text() == "keep me"
    assert a_file.read_text() == "keep me too"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing staged
    (tmp_path / "empty").mkdir()
    generate(params, tmp_path / "empty", config_digest="t", overwrite=True, progress=False)
    first = read_manifest(tmp_path / "empty")
    generate(params, tmp_path / "empty", config_digest="u", overwrite=True, progress=False)
    assert read_manifest(tmp_path / "empty")["config_digest"] == "u" != first["config_digest"]


def test_bad_params_are_rejected() -> None:
    with pytest.raises(ValueError, match="users"):
        GeneratorParams(users=1, videos=100, days=30, seed=0, end_date=END)
    with pytest.raises(ValueError, match="corrupt"):
        GeneratorParams(users=100, videos=100, days=30, seed=0, end_date=END, corrupt=0.9)


@pytest.fixture(scope="module")
def platform(small_platform: Path) -> dict[str, pd.DataFrame]:
    vd = load_validated(small_platform, max_invalid_share=0.0)  # a clean platform has no bad rows
    tables = {k: t.to_pandas() for k, t in vd.tables.items()}
    tables["manifest"] = vd.manifest
    tables["gt_users"] = pq.read_table(small_platform / "ground_truth" / "users").to_pandas()
    tables["gt_videos"] = pq.read_table(small_platform / "ground_truth" / "videos").to_pandas()
    return tables


def _plays(p: dict[str, pd.DataFrame]) -> pd.DataFrame:
    ev = p["watch_events"]
    return ev[ev.event_type.isin(["watch", "skip"])]


def test_events_stay_inside_the_window_and_reference_known_ids(platform: dict) -> None:
    ev = platform["watch_events"]
    start = pd.Timestamp(END - dt.timedelta(days=30), tz="UTC")
    assert ev.ts.min() >= start - pd.Timedelta(days=0) and ev.ts.max() < pd.Timestamp(END, tz="UTC")
    assert set(ev.user_id) <= set(platform["users"].user_id)
    assert set(ev.video_id) <= set(platform["videos"].video_id)
    # Nobody watches a video before it is published, or before signing up.
    merged = ev.merge(platform["videos"][["video_id", "published_at"]], on="video_id")
    assert (merged.ts >= merged.published_at).all()
    merged = ev.merge(platform["users"][["user_id", "signup_ts"]], on="user_id")
    assert (merged.ts >= merged.signup_ts).all()
    assert ev.event_id.is_unique


def test_popularity_has_a_heavy_tail(platform: dict) -> None:
    counts = _plays(platform).video_id.value_counts().to_numpy()
    n_videos = len(platform["videos"])
    top1 = counts[: n_videos // 100].sum() / counts.sum()
    assert 0.15 <= top1 <= 0.6, top1  # the top 1% of videos get 15-60% of plays
    bottom_half = (
        np.sort(np.pad(counts, (0, n_videos - len(counts))))[: n_videos // 2].sum() / counts.sum()
    )
    assert bottom_half < 0.05, bottom_half  # the long tail: half the catalogue gets under 5%


def test_channel_sizes_follow_a_power_law(platform: dict) -> None:
    sizes = platform["videos"].channel_id.value_counts().to_numpy()
    assert sizes[0] >= 10 * np.median(sizes)


def test_category_mix(platform: dict) -> None:
    share = platform["videos"].category.value_counts(normalize=True)
    total = sum(c[1] for c in CATEGORIES)
    assert set(share.index) == {c[0] for c in CATEGORIES}
    for name, s, *_ in CATEGORIES:
        assert 0.25 <= share[name] / (s / total) <= 3.0, name  # within a factor of the stated mix


def test_completion_skip_and_like_rates(platform: dict) -> None:
    plays = _plays(platform)
    completion = plays.watch_time_s / plays.video_duration_s
    assert 0.35 <= completion.mean() <= 0.65
    assert completion.max() <= 1.0 and completion.min() > 0
    skip = (plays.event_type == "skip").mean()
    assert 0.02 <= skip <= 0.20
    ev = platform["watch_events"]
    assert 0.02 <= (ev.event_type == "like").sum() / len(plays) <= 0.12
    for t in ("dislike", "share", "not_interested"):
        assert (ev.event_type == t).sum() > 0, t
    assert ev.loc[~ev.event_type.isin(["watch", "skip"]), "watch_time_s"].isna().all()
    # Long videos are finished less often than short ones.
    long = completion[plays.video_duration_s > 1800].mean()
    short = completion[plays.video_duration_s < 300].mean()
    assert long < short


def test_impressions_and_clicks_are_logged_like_a_serving_tier(platform: dict) -> None:
    ev = platform["watch_events"]
    imp = ev[ev.event_type == "impression"]
    clk = ev[ev.event_type == "click"]
    assert len(imp) > 0 and len(clk) > 0
    assert 0.02 <= len(clk) / len(imp) <= 0.12  # a click-through rate of a few percent
    assert imp.request_id.notna().all() and (imp.position >= 0).all()
    assert clk.request_id.notna().all() and clk.position.isna().all()
    assert ev.loc[~ev.event_type.isin(["impression"]), "position"].isna().all()
    assert set(imp.source) == {"personal", "trending", "explore", "fresh"}
    # Each response shows an item once, at one position.
    assert not imp.duplicated(["request_id", "video_id"]).any()
    assert not imp.duplicated(["request_id", "position"]).any()
    # A logged session is one request whose whole page is logged, from one policy.
    per_request = imp.groupby("request_id").agg(
        n=("position", "size"), last=("position", "max"), sources=("source", "nunique"),
        sessions=("session_id", "nunique"),
    )  # fmt: skip
    assert (per_request.n == per_request.last + 1).all() and (per_request.n <= PAGE_LEN).all()
    assert (per_request.n == PAGE_LEN).mean() > 0.95
    assert (per_request.sources == 1).all() and (per_request.sessions == 1).all()
    assert imp.groupby("session_id").request_id.nunique().max() == 1
    # Every click is on an item its request showed, no earlier than it was shown ...
    m = clk.merge(imp, on=["request_id", "video_id"], suffixes=("", "_shown"))
    assert len(m) == len(clk) and (m.ts_shown <= m.ts).all()
    assert (m.source == m.source_shown).all()
    # ... and starts a play of that item by that user, carrying the same request id.
    plays = _plays(platform)
    started = clk.merge(plays, on=["user_id", "video_id", "ts", "request_id"])
    assert len(started) == len(clk)
    # Only a sample of sessions is logged: most plays have no request id.
    assert 0.01 <= plays.request_id.notna().mean() <= 0.10


def test_position_bias_shows_in_the_logged_click_through_rate(platform: dict) -> None:
    """Examination falls with the page position, and with it the click-through rate."""
    ev = platform["watch_events"]
    imp = ev[ev.event_type == "impression"]
    clk = ev[ev.event_type == "click"][["request_id", "video_id"]].assign(clicked=1.0)
    imp = imp.merge(clk, on=["request_id", "video_id"], how="left").fillna({"clicked": 0.0})
    ctr = imp.groupby(pd.cut(imp.position, [-1, 0, 1, 4, 9, 19, 39])).clicked.mean().to_numpy()
    assert (np.diff(ctr) < 0).all(), ctr
    assert ctr[0] > 5 * ctr[-1], ctr


def test_the_served_log_leaves_plays_unchanged(tmp_path: Path) -> None:
    """Impressions and clicks come from their own random stream: without them, the
    plays and reactions are the same. (Event ids, session ids and session devices are
    numbered and drawn over every session with an event, feed-only visits included.)"""
    base = dict(users=300, videos=200, days=7, seed=5, end_date=END)
    generate(GeneratorParams(**base, impressions=0.0), tmp_path / "none", config_digest="t",
             progress=False)  # fmt: skip
    generate(GeneratorParams(**base, impressions=0.5), tmp_path / "half", config_digest="t",
             progress=False)  # fmt: skip
    cols = ["ts", "user_id", "video_id", "event_type", "watch_time_s", "video_duration_s"]
    none = read_events(tmp_path / "none").to_pandas()
    half = read_events(tmp_path / "half").to_pandas()
    assert not none.event_type.isin(["impression", "click"]).any()
    kept = half[~half.event_type.isin(["impression", "click"])]
    pd.testing.assert_frame_equal(
        none[cols].reset_index(drop=True), kept[cols].reset_index(drop=True)
    )
    assert half.event_id.is_unique


def test_appeal_is_recorded_apart_from_quality(platform: dict) -> None:
    """Appeal (how clickable) is only weakly tied to quality (how long people watch);
    the clickbait, a share of below-average videos, have high appeal."""
    gv = platform["gt_videos"]
    assert {"appeal", "quality", "clickbait"} <= set(gv.columns)
    assert gv.appeal.notna().all() and gv.appeal.std() > 0.5
    assert 0.0 < np.corrcoef(gv.appeal, gv.quality)[0, 1] < 0.3
    bait = gv[gv.clickbait]
    assert 0.03 <= len(bait) / len(gv) <= 0.12 and (bait.quality < 0).all()
    assert bait.appeal.mean() > gv.appeal.mean() + 1.0
    # High appeal with low quality exists in numbers: a fifth or more of the most
    # appealing tenth is in the bottom quarter of quality (a quarter if independent).
    hi_a, lo_q = gv.appeal.quantile(0.9), gv.quality.quantile(0.25)
    assert ((gv.appeal > hi_a) & (gv.quality < lo_q)).sum() >= 0.2 * (gv.appeal > hi_a).sum()
    # Plays are completed by quality, not appeal.
    plays = _plays(platform).merge(gv[["video_id", "appeal", "quality"]], on="video_id")
    comp = plays.watch_time_s / plays.video_duration_s
    assert np.corrcoef(plays.quality, comp)[0, 1] > np.corrcoef(plays.appeal, comp)[0, 1] + 0.05


def test_sessions_play_a_few_videos(platform: dict) -> None:
    """The click model's bias is calibrated to about 3 plays a session (the earlier
    session sampler's figure), with a tail of longer sessions."""
    per_session = _plays(platform).groupby("session_id").size()
    assert 2.4 <= per_session.mean() <= 3.6, per_session.mean()
    assert (per_session == 1).mean() > 0.2 and per_session.quantile(0.99) >= 8


def test_users_cold_start_and_heavy_tailed_activity(platform: dict) -> None:
    users = platform["users"]
    start = pd.Timestamp(END - dt.timedelta(days=30), tz="UTC")
    new = (users.signup_ts >= start).mean()
    assert 0.08 <= new <= 0.16
    per_user = platform["watch_events"].user_id.value_counts()
    assert per_user.quantile(0.99) >= 5 * per_user.median()
    assert set(users.age_bucket) <= {"13-17", "18-24", "25-34", "35-44", "45-54", "55+"}
    assert users.country.nunique() >= 10


def test_fresh_uploads_in_the_last_day(platform: dict) -> None:
    v = platform["videos"]
    last_day = v.published_at >= pd.Timestamp(END - dt.timedelta(days=1), tz="UTC")
    assert last_day.sum() > 0
    fresh_ids = set(v.video_id[last_day])
    assert _plays(platform).video_id.isin(fresh_ids).any()  # and people watch them


def test_choices_follow_the_ground_truth_preferences(platform: dict) -> None:
    gu = platform["gt_users"].set_index("user_id").interest
    gv = platform["gt_videos"].set_index("video_id").topic
    plays = _plays(platform).sample(5000, random_state=0)
    U = np.stack(gu.loc[plays.user_id].to_numpy())
    V = np.stack(gv.loc[plays.video_id].to_numpy())
    watched = (U * V).sum(axis=1).mean()
    rng = np.random.default_rng(0)
    R = np.stack(gv.to_numpy())[rng.integers(0, len(gv), len(plays))]
    random = (U * R).sum(axis=1).mean()
    assert watched > random + 0.2, (watched, random)
    # ... and completion follows affinity.
    aff = (U * V).sum(axis=1)
    comp = (plays.watch_time_s / plays.video_duration_s).to_numpy()
    assert np.corrcoef(aff, comp)[0, 1] > 0.1


def test_text_carries_the_category_signal(platform: dict) -> None:
    words = {c[0]: set(c[4]) for c in CATEGORIES}
    v = platform["videos"]
    in_vocab = [set(tags) <= words[cat] for tags, cat in zip(v.tags, v.category, strict=True)]
    assert np.mean(in_vocab) == 1.0
    assert v.title.str.len().min() > 0


def test_manifest_records_params_and_ground_truth(platform: dict) -> None:
    m = platform["manifest"]
    assert m["source"] == "synthetic" and m["params"]["seed"] == 7
    assert m["as_of"] == "2026-11-01T00:00:00+00:00"
    assert m["counts"]["watch_events"] == len(platform["watch_events"])
    assert sum(m["events_by_type"].values()) == len(platform["watch_events"])
    assert m["ground_truth"]["latent_dim"] == len(platform["gt_users"].interest.iloc[0])
    gt = m["ground_truth"]
    assert gt["page_len"] == PAGE_LEN and 0 < gt["examination_exponent"] < 2
    assert {"affinity", "appeal", "popularity", "freshness", "bias", "session_sd"} == set(
        gt["click_weights"]
    )
    assert "quality" in gt["outcome_weights"] and "appeal" not in gt["outcome_weights"]
    assert set(gt["policies"]) == {"personal", "trending", "explore", "fresh"}
    assert {"quality", "clickbait_share"} <= set(gt["appeal"])
