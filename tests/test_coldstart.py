"""Unit tests of the cold-item measurement (training/coldstart.py) on hand-built cases:
the cold split, the removal of cold videos from training, the cold hold-out, the
baselines, the metrics and the two-tower scoring path. No Spark, no data set."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import torch

from videorec.config import TrainingConfig
from videorec.evaluation.interactions import Events, Interactions
from videorec.training.coldstart import (
    DAY_US,
    cold_heldout,
    cold_metrics,
    compact_histories,
    expected_random,
    popular_in_category_scores,
    random_cold_ids,
    random_scores,
    recent_cold_ids,
    two_tower_cold_scores,
    without_videos,
)
from videorec.training.data import Examples, UserTable, VideoTable, trained_vocabulary
from videorec.training.model import N_HASHES, TwoTowerConfig, TwoTowerModel
from videorec.training.task import Trainer


def _interactions(pairs: list[tuple[int, int, int]]) -> Interactions:
    """Interactions from (user, video, ts) triples."""
    u, v, t = (np.array(x, dtype=np.int64) for x in zip(*pairs, strict=True))
    return Interactions.from_events(Events(u, v, t))


# ---------------------------------------------------------------- the cold set


def test_random_cold_ids_is_a_seeded_share_of_distinct_rated_ids() -> None:
    rated = np.array([5, 3, 3, 9, 1, 7, 5, 2, 8, 4, 6, 10, 11, 12, 13, 14, 15, 16, 17, 18])
    a = random_cold_ids(rated, 0.25, seed=1)
    assert len(a) == round(0.25 * 18)  # distinct ids, not events
    assert np.all(np.diff(a) > 0) and set(a) <= set(rated.tolist())
    np.testing.assert_array_equal(a, random_cold_ids(rated[::-1], 0.25, seed=1))  # order-free
    draws = {tuple(random_cold_ids(rated, 0.25, seed=s)) for s in range(10)}
    assert len(draws) > 1  # the seed matters
    assert len(random_cold_ids(np.array([4]), 0.1, seed=0)) == 1
    with pytest.raises(ValueError):
        random_cold_ids(rated, 1.0, seed=0)


def test_recent_cold_ids_takes_the_last_days_before_the_end_only() -> None:
    end = 100 * DAY_US
    ids = np.array([10, 11, 12, 13, 14])
    pub = np.array([end - DAY_US - 1, end - DAY_US, end - 1, end, np.iinfo(np.int64).min])
    np.testing.assert_array_equal(recent_cold_ids(ids, pub, end, 1.0), [11, 12])
    np.testing.assert_array_equal(recent_cold_ids(ids, pub, end, 2.0), [10, 11, 12])


def test_compact_histories_removes_dropped_rows_and_stays_right_aligned() -> None:
    h = np.array([[0, 1, 2, 3, 4], [0, 0, 0, 2, 2], [5, 2, 1, 2, 5]])
    drop = np.zeros(6, dtype=bool)
    drop[[2, 5]] = True
    np.testing.assert_array_equal(
        compact_histories(h, drop), [[0, 0, 1, 3, 4], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]]
    )


def _examples(labels: list[int], history: list[list[int]]) -> Examples:
    n = len(labels)
    z = np.zeros(n, dtype=np.int64)
    return Examples(
        user_ids=np.arange(n, dtype=np.int64) + 100,
        user_rows=np.arange(n, dtype=np.int64) + 1,
        history=np.array(history, dtype=np.int64),
        label_rows=np.array(labels, dtype=np.int64),
        weights=np.ones(n, np.float32),
        device=z,
        hour=z,
        country=z,
        example_age=np.zeros(n, np.float32),
        ts=np.arange(n, dtype=np.int64),
    )


def test_without_videos_drops_cold_labels_and_cold_history_items() -> None:
    ex = _examples([1, 2, 3, 2], [[0, 2, 1], [0, 0, 1], [2, 1, 2], [0, 0, 0]])
    out = without_videos(ex, np.array([2]), n_rows=4)
    np.testing.assert_array_equal(out.label_rows, [1, 3])
    np.testing.assert_array_equal(out.user_ids, [100, 102])  # every column subset alike
    np.testing.assert_array_equal(out.history, [[0, 0, 1], [0, 0, 1]])
    assert not np.isin(out.history, [2]).any()


# ---------------------------------------------------------------- the cold hold-out


def test_cold_heldout_keeps_cold_plays_of_users_with_a_history() -> None:
    train = _interactions([(1, 100, 0), (2, 100, 1), (2, 101, 2), (3, 101, 3)])
    plays = Events(
        np.array([1, 1, 1, 2, 3, 9]),
        np.array([200, 200, 201, 100, 202, 200]),  # 100 is warm; user 9 has no history
        np.arange(6, dtype=np.int64),
    )
    held = cold_heldout(plays, np.array([202, 200, 201, 203]), train)
    np.testing.assert_array_equal(held.cold_ids, [200, 201, 202, 203])
    np.testing.assert_array_equal(train.user_ids[held.rows], [1, 3])
    np.testing.assert_array_equal(held.relevant.toarray(), [[1, 1, 0, 0], [0, 0, 1, 0]])
    np.testing.assert_array_equal(held.n_relevant, [2, 1])  # the repeat play counts once
    assert held.stats["users_without_history"] == 1
    assert held.stats["cold_catalogue"] == 4 and held.stats["cold_videos_played"] == 3


def test_cold_metrics_perfect_reversed_and_partial_rankings() -> None:
    train = _interactions([(1, 1, 0), (2, 1, 0)])
    plays = Events(np.array([1, 2, 2]), np.array([10, 11, 12]), np.zeros(3, np.int64))
    held = cold_heldout(plays, np.array([10, 11, 12, 13]), train)
    perfect = held.relevant.toarray() + 0.0
    m = cold_metrics(perfect, held, ks=(1, 2))
    assert m["recall@2"] == pytest.approx(1.0) and m["ndcg@2"] == pytest.approx(1.0)
    m = cold_metrics(-perfect, held, ks=(1, 2))
    assert m["recall@2"] == 0.0 and m["ndcg@2"] == 0.0
    # User 1: its item at rank 2; user 2: one of two at rank 1 -> recall@1 (0 + 0.5)/2.
    s = np.array([[0.5, 0.0, 0.0, 0.9], [0.0, 0.9, 0.0, 0.5]])
    m = cold_metrics(s, held, ks=(1, 2))
    assert m["recall@1"] == pytest.approx(0.25)
    assert m["ndcg@2"] == pytest.approx((1 / np.log2(3) + 1 / (1 + 1 / np.log2(3))) / 2)


# ---------------------------------------------------------------- baselines


def test_popular_in_category_ranks_by_user_share_then_global_share() -> None:
    # Items 1..4 (codes: 1, 1, 2, 3); user 1 plays category 1 three times, 2 once; user
    # 2 only category 3; category 2 is globally more played than 1 (5 plays vs 3).
    pairs = [(1, 1, 0), (1, 2, 1), (1, 1, 2), (1, 3, 3)]
    pairs += [(2, 4, 0)] + [(3, 3, t) for t in range(4)]
    train = _interactions(pairs)
    item_cat = np.array([1, 1, 2, 3])
    cold_cat = np.array([2, 1, 3, 1, 0])  # cold videos; 0 is "unknown category"
    s = popular_in_category_scores(train, item_cat, cold_cat, train.user_rows([1, 2]), seed=0)
    order1 = np.argsort(-s[0], kind="stable")
    assert set(order1[:2]) == {1, 3}  # category 1 first (3 of user 1's 4 plays)
    assert order1[2] == 0  # then category 2 (1 play)
    assert order1[3] == 2  # then category 3 (no plays, but globally ahead of code 0)
    order2 = np.argsort(-s[1], kind="stable")
    assert order2[0] == 2  # user 2's one category
    # Among users' zero-share categories: category 2 (5 global plays) beats 1 (3 plays).
    assert list(order2[1:]).index(0) < list(order2[1:]).index(1)
    # Within a category the order is a seeded random one, not the lower index.
    orders = {
        tuple(np.argsort(-popular_in_category_scores(
            train, item_cat, cold_cat, train.user_rows([1]), seed=k
        )[0])[:2])
        for k in range(12)
    }  # fmt: skip
    assert orders == {(1, 3), (3, 1)}


def test_random_rows_match_the_closed_form_expectation() -> None:
    rng = np.random.default_rng(0)
    n_items, n = 40, 200
    rel = np.zeros((n, n_items))
    for i in range(n):
        rel[i, rng.choice(n_items, size=rng.integers(1, 6), replace=False)] = 1
    train = _interactions([(u, 0, 0) for u in range(n)])
    uu, cc = np.nonzero(rel)
    held = cold_heldout(Events(uu, cc + 1000, np.zeros(len(uu), np.int64)),
                        np.arange(n_items) + 1000, train)  # fmt: skip
    exp = expected_random(held.n_relevant, n_items, ks=(10, 20))
    sims = [cold_metrics(random_scores(n, n_items, s), held, (10, 20)) for s in range(30)]
    for k in ("recall@10", "ndcg@10", "recall@20", "ndcg@20"):
        assert np.mean([m[k] for m in sims]) == pytest.approx(exp[k], rel=0.05)
    assert exp["recall@10"] == pytest.approx(10 / 40)
    # K beyond the catalogue: everything is retrieved.
    assert expected_random(np.array([2]), 5, ks=(10,))["recall@10"] == pytest.approx(1.0)


# ---------------------------------------------------------------- the two-tower path


def _tiny_world() -> tuple[Trainer, Interactions, VideoTable]:
    """An untrained tiny model over 6 videos (rows 1..6 = ids 10..15), 3 users."""
    torch.manual_seed(0)
    mcfg = TwoTowerConfig(
        embed_dim=8, id_dim=8, hidden_dim=16, user_buckets=31, video_buckets=31,
        channel_buckets=11, history_len=4, text_dim=0, dropout=0.0, id_dropout=0.3,
        categories=["a", "b"],
    )  # fmt: skip
    v = 6
    rng = np.random.default_rng(0)
    vt = VideoTable(
        video_ids=np.arange(10, 10 + v, dtype=np.int64),
        id_buckets=np.r_[np.zeros((1, N_HASHES)), rng.integers(1, 31, (v, N_HASHES))].astype(
            np.int64
        ),
        category=np.array([0, 1, 2, 1, 2, 1, 2]),
        channel_buckets=np.zeros((v + 1, N_HASHES), np.int64),
        duration=np.zeros(v + 1, np.int64),
        age=np.zeros(v + 1, np.int64),
        text=np.zeros((v + 1, 0), np.float32),
        log_q=np.zeros(v + 1, np.float32),
    )
    ut = UserTable(
        user_ids=np.array([1, 2, 3]),
        buckets=np.r_[np.zeros((1, N_HASHES)), rng.integers(1, 31, (3, N_HASHES))].astype(np.int64),
        country=np.zeros(4, np.int64),
        language=np.zeros(4, np.int64),
        age_bucket=np.zeros(4, np.int64),
        interests=np.zeros((4, 2), np.float32),
    )
    tcfg = TrainingConfig(text_encoder="none", device="cpu", batch_size=4)
    trainer = Trainer(TwoTowerModel(mcfg), vt, ut, tcfg, torch.device("cpu"))
    train = _interactions([(1, 10, 0), (1, 11, 1), (2, 12, 0), (3, 10, 0), (3, 12, 5)])
    return trainer, train, vt


def test_two_tower_scores_use_the_given_table_and_content_mode_ignores_the_id() -> None:
    trainer, train, vt = _tiny_world()
    plays = Events(np.array([1, 2, 3]), np.array([13, 14, 15]), np.zeros(3, np.int64))
    held = cold_heldout(plays, np.array([13, 14, 15]), train)
    ex = _examples([1, 2, 3], [[0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 1, 3]])
    trained_ids, channels = trained_vocabulary(ex, vt)
    np.testing.assert_array_equal(trained_ids, [10, 11, 12])
    content = vt.content_mode(trained_ids, channels)
    as_of = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    s_content = two_tower_cold_scores(trainer, train, held, content, as_of)
    s_id = two_tower_cold_scores(trainer, train, held, vt, as_of)
    assert s_content.shape == (3, 3)
    assert not np.allclose(s_content, s_id)  # the untrained hashed ids move the vectors
    # Re-hashing the cold videos' ids changes the id-path scores, not content mode's.
    other = vt.id_buckets.copy()
    other[4:] = (other[4:] % 29) + 2
    for t in (vt, content):
        t.id_buckets = other
    np.testing.assert_allclose(
        two_tower_cold_scores(trainer, train, held, content, as_of), s_content, atol=1e-6
    )
    assert not np.allclose(two_tower_cold_scores(trainer, train, held, vt, as_of), s_id)
