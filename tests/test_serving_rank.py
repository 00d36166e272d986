"""The page builder's pure functions (``serving/rank.py``) on a hand-built catalogue.

Unit level: no Redis, no HTTP (tests/test_serving.py runs the same code in uvicorn).
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

from videorec.config import ServingConfig
from videorec.serving.feed import Breaker
from videorec.serving.live import (
    Catalogue,
    ExploreStats,
    catalogue_from_rows,
    fresh_pool,
    fresh_rows,
    with_new_videos,
)
from videorec.serving.rank import (
    SRC,
    Pool,
    UserView,
    build_page,
    eligible,
    fresh_candidates,
    freshness,
    popular_share,
    relevance,
    thompson_picks,
)

NOW = 1_790_000_000.0
CATS = ["a", "b", "c", "d", "e"]


def _catalogue(n: int = 300, seed: int = 0) -> Catalogue:
    rng = np.random.default_rng(seed)
    rows = []
    for v in range(n):
        emb = rng.normal(size=8).astype(np.float32)
        rows.append((v, {"category": CATS[v % 5], "channel_id": v % 17, "channel_name": f"c{v % 17}",
                         "title": f"t{v}", "published_at": NOW - (v + 1) * 3600.0, "views": 100,
                         "avg_completion": 0.6, "dislike_ratio": 0.01, "duration_s": 60.0,
                         "embedding": emb}))  # fmt: skip
    return catalogue_from_rows("g", rows)


def _pool(cat: Catalogue, rows: np.ndarray, source: str, rng: np.random.Generator) -> Pool:
    return Pool(rows, rng.uniform(0.1, 5, len(rows)), np.full(len(rows), SRC[source], np.int8))


def test_eligible_drops_watched_hidden_blocked_and_low_quality() -> None:
    rows = [(v, {"channel_id": v % 3, "views": 50, "avg_completion": 0.5, "dislike_ratio": 0.0})
            for v in range(10)]  # fmt: skip
    rows[4][1]["avg_completion"] = 0.05  # low completion, judged (50 views)
    rows[5][1]["dislike_ratio"] = 0.6
    rows[6][1].update(avg_completion=0.05, views=3)  # too few views to judge: kept
    cat = catalogue_from_rows("g", rows)
    user = UserView(history=np.array([0]), hidden=np.array([1]), blocked_channels=np.array([2]))
    keep = eligible(cat, np.arange(10), user, ServingConfig())
    # channel 2: videos 2, 5, 8
    assert np.flatnonzero(keep).tolist() == [3, 6, 7, 9]


def test_freshness_boosts_by_age() -> None:
    cat = _catalogue()
    boost = freshness(cat, np.array([0, 22, 23, 30, 167, 200]), NOW, ServingConfig())
    assert boost.tolist() == [1.2, 1.2, 1.1, 1.1, 1.0, 1.0]  # ages 1, 23, 24, 31, 168, 201 h


def test_relevance_prefers_the_users_categories() -> None:
    cat = _catalogue()
    rows = np.arange(100, 110)
    user = UserView(preferred={"a": 1.0})
    rel = relevance(cat, rows, np.ones(10), user, NOW, ServingConfig())
    in_a = cat.category[rows] == cat.cat_code["a"]
    assert rel[in_a].min() > rel[~in_a].max()


@pytest.mark.parametrize("seed", range(25))
def test_every_page_respects_the_caps_and_the_exploration_share(seed: int) -> None:
    cat, s = _catalogue(seed=seed), ServingConfig()
    rng = np.random.default_rng(seed)
    personal = _pool(cat, rng.choice(200, 150, replace=False), "personal", rng)
    popular = _pool(cat, np.arange(200, 260), "popular", rng)
    explore = _pool(cat, np.arange(260, 300), "trending", rng)
    stats = ExploreStats(np.arange(0, 10), np.zeros(10), np.zeros(10))
    for size in (5, 10, 20, 50):
        page = build_page(
            cat, personal, popular, explore, stats, np.ones(10, bool), size, 0.4, s, rng
        )
        assert len(page.rows) == size and len(set(page.rows.tolist())) == size
        assert max(collections.Counter(cat.channel[page.rows].tolist()).values()) <= 3
        cap = max(1, int(0.3 * size))
        assert max(collections.Counter(cat.category[page.rows].tolist()).values()) <= cap
        explored = np.isin(page.source, [SRC["explore"], SRC["fresh"]]).sum()
        assert explored == round(0.1 * size)


def test_popular_share_follows_history_length() -> None:
    s = ServingConfig()
    assert [popular_share(p, s) for p in (0, 4, 5, 19, 20, 500)] == [0.8, 0.8, 0.4, 0.4, 0.1, 0.1]
    with pytest.raises(ValueError, match="one share more"):
        ServingConfig(cold_start_plays=[5], cold_start_popular_share=[0.5])


def test_thompson_sampling_favours_clicked_videos() -> None:
    cat, s = _catalogue(), ServingConfig()
    from videorec.serving.rank import PageCaps

    stats = ExploreStats(
        np.array([0, 1, 2]), np.array([50.0, 50.0, 0.0]), np.array([40.0, 0.0, 0.0])
    )
    rng = np.random.default_rng(1)
    wins = collections.Counter(
        int(thompson_picks(cat, stats, np.ones(3, bool), 1, PageCaps(cat, 20, s), rng)[0])
        for _ in range(400)
    )
    assert wins[0] > 250 and wins[1] < 10  # the unseen video 2 still gets its chances
    assert wins[2] > 10


def test_breaker_opens_after_failures_and_half_opens_after_cool_down() -> None:
    b = Breaker(failures=2, cooldown_s=10.0)
    b.record(False, 0.0)
    assert b.allow(1.0)
    b.record(False, 1.0)
    assert not b.allow(2.0) and not b.allow(10.9)
    assert b.allow(11.0)  # half open: one more failure re-opens it at once
    b.record(False, 11.0)
    assert not b.allow(12.0)
    assert b.allow(21.5)
    b.record(True, 21.5)
    b.record(False, 22.0)
    assert b.allow(22.1)  # one failure after a success: still closed


def test_impression_events_are_the_stream_encoding_of_contract_rows() -> None:
    import json

    from videorec.redis_keys import encode_stream_event
    from videorec.serving.feed import Context, log_impressions

    items = [{"video_id": 7, "source": "personal"}, {"video_id": 9, "source": "fresh"}]
    for device in (None, "tv"):
        events = log_impressions(None, None, 42, "ab" * 16, items, NOW, Context(device=device))  # type: ignore[arg-type]
        for pos, (text, item) in enumerate(zip(events, items, strict=True)):
            want = {"event_id": f"{'ab' * 16}-{pos}", "ts": "2026-09-21T14:13:20.000000+00:00",
                    "user_id": 42, "video_id": item["video_id"], "event_type": "impression",
                    "request_id": "ab" * 16, "position": pos, "source": item["source"],
                    "device": device}  # fmt: skip
            assert json.loads(text) == json.loads(encode_stream_event(want)["event"])


# ---- new videos: the catalogue's new rows, the fresh candidates, personal exploration


def _with_new(cat: Catalogue, n: int = 4, seed: int = 1) -> tuple[Catalogue, list[int]]:
    """``cat`` plus ``n`` new videos (ids 10_000 + i, published 10 minutes ago but the
    fourth, whose time is unknown; category "z" for the first) and a duplicate of main
    video 5, whose main row must win."""
    rng = np.random.default_rng(seed)
    rows = [(10_000 + i, {"category": "z" if i == 0 else CATS[i % 5], "channel_id": 500 + i,
                          "title": f"new {i}", "embedding": rng.normal(size=8).astype(np.float32),
                          **({"published_at": NOW - 600.0} if i != 3 else {})})
            for i in range(n)]  # fmt: skip
    rows.append((5, {"category": "z", "title": "impostor", "embedding": np.ones(8, np.float32)}))
    return with_new_videos(cat, rows, "newgen"), [v for v, _ in rows[:n]]


def test_new_videos_join_the_catalogue_and_a_main_row_wins() -> None:
    main = _catalogue()
    cat, new_ids = _with_new(main)
    assert len(cat) == len(main) + 4 and cat.new_generation == "newgen"
    assert np.all(np.diff(cat.ids) > 0)  # still sorted by id, each once
    new = cat.rows(np.array(new_ids))[0]
    assert cat.is_new[new].all() and cat.is_new.sum() == 4
    assert sorted(cat.new_rows.tolist()) == sorted(new.tolist())
    five = cat.row(5)
    assert not cat.is_new[five] and cat.item(five)["title"] == "t5"  # the main row
    assert cat.categories == sorted([*CATS, "z"])
    assert cat.text[new[0]]["category"] == "z" and cat.categories[cat.category[new[0]]] == "z"
    for v in (0, 7, 299):  # main rows keep their category, channel, embedding, item
        r, m = cat.row(v), main.row(v)
        assert cat.categories[cat.category[r]] == main.categories[main.category[m]]
        assert cat.channel[r] == main.channel[m] and np.array_equal(cat.emb[r], main.emb[m])
        assert cat.item(r) == main.item(m) and np.array_equal(cat.mmr_emb[r], main.mmr_emb[m])
    assert cat.mmr_emb.shape == (len(cat), main.mmr_emb.shape[1])
    np.testing.assert_allclose(np.linalg.norm(cat.emb[new], axis=1), 1.0, rtol=1e-5)
    assert with_new_videos(main, [], "newgen") is main  # nothing new: the main catalogue


def test_fresh_candidates_are_the_closest_the_filters_allow() -> None:
    cat, new_ids = _with_new(_catalogue())
    young = fresh_rows(cat, NOW, 24.0)  # main videos 0..22 are under a day old
    pool = fresh_pool(cat, young)
    new = cat.rows(np.array(new_ids))[0]
    assert int(new[3]) not in young  # no publish time: new, though not young by age
    assert set(pool.rows.tolist()) == set(young.tolist()) | set(new.tolist())
    target = int(new[2])
    u = cat.emb[target] + 0.01  # the user's query embedding: close to new video 2
    keep = np.ones(len(pool.rows), bool)
    rows, scores = fresh_candidates(pool, u, keep, 5)
    assert len(rows) == 5 and rows[0] == target
    assert np.all(np.diff(scores) <= 0)
    exact = cat.emb[pool.rows] @ u  # the exact top 5 of the delta
    assert np.allclose(np.sort(exact)[::-1][:5], scores, atol=1e-5)
    keep[pool.rows == target] = False  # hidden, watched, blocked or low quality: never
    rows, _ = fresh_candidates(pool, u, keep, 5)
    assert target not in rows.tolist() and len(rows) == 5
    assert len(fresh_candidates(pool, None, keep, 5)[0]) == 0  # no embedding: none
    assert len(fresh_candidates(pool, np.ones(3, np.float32), keep, 5)[0]) == 0  # other model
    assert len(fresh_candidates(pool, u, keep, 0)[0]) == 0


def test_new_video_joins_the_personal_pool_with_its_inner_product() -> None:
    from videorec.config import Config
    from videorec.serving.feed import Ctx, personal_pool
    from videorec.serving.live import LiveState

    cat, new_ids = _with_new(_catalogue())
    cfg = Config()
    ctx = Ctx(cfg, None, LiveState(catalogue=cat), Breaker(5, 30.0))
    target = cat.row(new_ids[1])
    u = cat.emb[target]
    base = np.flatnonzero(~cat.is_new)[:200]  # the base recommendations, by retrieval
    retrieval = cat.emb[base] @ u
    order = np.argsort(-retrieval)
    ids, retrieval = cat.ids[base][order], retrieval[order]
    user = UserView(embedding=u)
    pool = fresh_pool(cat, fresh_rows(cat, NOW, 24.0))
    mine = fresh_candidates(pool, u, np.ones(len(pool.rows), bool), 50)

    def keep(rows: np.ndarray) -> np.ndarray:
        return np.ones(len(rows), bool)

    plain, _ = personal_pool(ctx, cat, user, ids, retrieval, NOW, keep)
    merged, fallback = personal_pool(ctx, cat, user, ids, retrieval, NOW, keep, mine)
    assert fallback is None and target not in plain.rows.tolist()
    assert target in merged.rows.tolist() and len(merged) == len(set(merged.rows.tolist()))
    assert len(merged) == len(set(plain.rows.tolist()) | set(mine[0].tolist()))
    # Its inner product is 1 (its own embedding): the best retrieval score, so the best
    # relevance but for category preference and the freshness boost.
    assert merged.score[merged.rows == target][0] >= np.quantile(merged.score, 0.95)
    assert (merged.source == SRC["personal"]).all()


def test_thompson_slots_choose_among_the_users_own_fresh_candidates() -> None:
    cat, s = _catalogue(), ServingConfig()
    from videorec.serving.rank import PageCaps, explore_keep

    stats = ExploreStats(np.arange(10), np.zeros(10), np.zeros(10))
    keep = np.ones(10, bool)
    keep[3] = False
    mine = np.array([2, 3, 7, 250])  # 3 is filtered out, 250 has no counts (not fresh)
    allowed = explore_keep(stats, keep, mine)
    assert np.flatnonzero(allowed).tolist() == [2, 7]
    rng = np.random.default_rng(0)
    picks = {int(thompson_picks(cat, stats, allowed, 1, PageCaps(cat, 20, s), rng)[0])
             for _ in range(100)}  # fmt: skip
    assert picks == {2, 7}
    # No fresh candidates of their own (no embedding, or all filtered): as before.
    assert explore_keep(stats, keep, np.zeros(0, np.int64)) is keep
    assert explore_keep(stats, keep, np.array([3, 250])) is keep
