"""The one contract every recommender honours, checked for every model.

Issue 5's TwoTower adds itself to ``CONTRACT_MODELS``: a factory taking a seed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import scipy.sparse as sp

from videorec.evaluation.interactions import Events, Interactions
from videorec.evaluation.recommenders import (
    ALS,
    EASE,
    MODEL_NAMES,
    EASERecency,
    ItemKNN,
    MostPopular,
    NotFittedError,
    Recommender,
)

N_USERS, N_ITEMS, K = 70, 45, 8

# Small hyper-parameters so each fit takes milliseconds.
CONTRACT_MODELS: dict[str, Callable[[int], Recommender]] = {
    "MostPopular": lambda seed: MostPopular(),
    "ItemKNN": lambda seed: ItemKNN(k=10),
    "ALS": lambda seed: ALS(factors=8, iterations=5, regularization=0.05, seed=seed),
    "EASE": lambda seed: EASE(lam=5.0),
    "EASE-recency": lambda seed: EASERecency(lam=5.0, decay=0.8),
}


def test_every_baseline_is_under_contract() -> None:
    assert set(MODEL_NAMES) <= set(CONTRACT_MODELS)


@pytest.fixture(scope="module")
def train() -> Interactions:
    """Random interactions with popularity skew, repeat watches and timestamp ties."""
    rng = np.random.default_rng(42)
    n_events = 900
    users = rng.integers(0, N_USERS, n_events) * 10 + 3  # ids are not row numbers
    weights = 1.0 / np.arange(1, N_ITEMS + 1) ** 0.7
    items = rng.choice(N_ITEMS, n_events, p=weights / weights.sum()) * 7 + 100
    ts = rng.integers(0, 50, n_events) * 1_000_000  # few distinct times: many ties
    # A heavy user who watched all but 3 videos: fewer candidates than K.
    heavy_items = np.arange(N_ITEMS - 3) * 7 + 100
    users = np.r_[users, np.full(len(heavy_items), 5)]
    items = np.r_[items, heavy_items]
    ts = np.r_[ts, np.arange(len(heavy_items)) * 1_000_000]
    return Interactions.from_events(Events(users, items, ts))


@pytest.mark.parametrize("name", list(CONTRACT_MODELS))
def test_recommender_contract(name: str, train: Interactions) -> None:
    make = CONTRACT_MODELS[name]
    model = make(0)
    with pytest.raises(NotFittedError):
        model.scores(np.array([0]))
    assert model.fit(train) is model
    rows = np.arange(train.n_users)

    s = model.scores(rows)
    assert s.shape == (train.n_users, train.n_items) and s.dtype == np.float32
    assert np.isfinite(s).all()

    idx, val = model.recommend(rows, K)
    assert idx.shape == val.shape == (train.n_users, K)
    assert idx.dtype == np.int64 and val.dtype == np.float32
    # No training item, no duplicate, scores sorted; padding only where candidates ran out.
    x = train.matrix
    for r in rows:
        got = idx[r][idx[r] >= 0]
        assert not set(got) & set(x[r].indices), (name, r)
        assert len(set(got)) == len(got)
        assert (np.diff(val[r][: len(got)]) <= 0).all()
        n_candidates = train.n_items - x[r].nnz
        assert len(got) == min(K, n_candidates)
    heavy = train.user_rows(np.array([5]))[0]
    assert (idx[heavy] >= 0).sum() == 3 and (idx[heavy, 3:] == -1).all()
    # The recommended scores are the model's own scores for those items.
    ok = idx >= 0
    assert np.array_equal(val[ok], np.take_along_axis(s, np.where(ok, idx, 0), 1)[ok])

    # Batches of any size give the same lists as one user at a time.
    one_by_one = [model.recommend(np.array([r]), K, batch_size=1) for r in rows]
    idx1 = np.vstack([i for i, _ in one_by_one])
    val1 = np.vstack([v for _, v in one_by_one])
    idx7, val7 = model.recommend(rows, K, batch_size=7)
    assert np.array_equal(idx1, idx) and np.array_equal(idx7, idx)
    np.testing.assert_allclose(val1, val, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(val7, val, rtol=1e-5, atol=1e-6)

    # Determinism for a seed: a second model fitted the same way gives the same lists.
    idx2, val2 = make(0).fit(train).recommend(rows, K)
    assert np.array_equal(idx2, idx) and np.array_equal(val2, val)

    # exclude=None may recommend training items; a custom exclusion is honoured.
    free, _ = model.recommend(rows, K, exclude=None)
    assert (free >= 0).all()
    banned = sp.csr_matrix(
        (np.ones(train.n_users), (rows, idx[:, 0].clip(0))), shape=(train.n_users, train.n_items)
    )
    custom, _ = model.recommend(rows, K, exclude=banned)
    assert not (custom == idx[:, :1].clip(0)).any(axis=1)[idx[:, 0] >= 0].any()
    with pytest.raises(ValueError, match="positive"):
        model.recommend(rows, 0)
    assert isinstance(model.params(), dict)
