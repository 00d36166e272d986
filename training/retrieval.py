"""Retrieval with a trained two-tower model: exact top-K and the harness adapter.

:class:`TwoTowerRecommender` implements the evaluation harness's ``Recommender``
interface, so the model is judged by the same code, on the same split, as the
baselines. Bound to a training :class:`Interactions`, it embeds every catalogue video
once and every user from their time-ordered training history (the last
``history_len`` watches), and scores by dot product: exact retrieval, no ANN.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Any, ClassVar, Self

import numpy as np
import pyarrow as pa
import torch

from videorec.config import TrainingConfig
from videorec.evaluation.interactions import EvalSplit, Interactions
from videorec.evaluation.recommenders import Recommender
from videorec.training.data import Examples, UserTable, VideoTable, user_table, video_table
from videorec.training.model import TwoTowerModel
from videorec.training.task import (
    Trainer,
    fit,
    model_config,
    resolve_device,
    seed_everything,
    sequence_histories,
)


def exact_top_k(
    queries: np.ndarray, candidates: np.ndarray, k: int, batch: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k: ((n, k) candidate indices, (n, k) scores), best first."""
    k = min(k, len(candidates))
    idx = np.empty((len(queries), k), dtype=np.int64)
    val = np.empty((len(queries), k), dtype=np.float32)
    for s in range(0, len(queries), batch):
        sc = queries[s : s + batch] @ candidates.T
        part = np.argpartition(-sc, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(sc, part, axis=1)
        o = np.argsort(-ps, axis=1, kind="stable")
        idx[s : s + batch] = np.take_along_axis(part, o, axis=1)
        val[s : s + batch] = np.take_along_axis(ps, o, axis=1)
    return idx, val


def user_histories(train: Interactions, videos: VideoTable, width: int) -> np.ndarray:
    """(n_users, width) video rows: each training user's last ``width`` watches, oldest first."""
    indptr = train.history_indptr
    rows = videos.rows(train.item_ids[train.event_cols])
    out = np.zeros((train.n_users, width), dtype=np.int64)
    lengths = np.diff(indptr)
    for j in range(1, width + 1):  # column width - j holds the j-th most recent watch
        has = lengths >= j
        out[has, width - j] = rows[indptr[1:][has] - j]
    return out


def bare_dimensions(train: Interactions) -> tuple[pa.Table, pa.Table]:
    """Videos and users tables for the interactions' ids with every attribute null, in
    the contract's columns: what binding a model needs when there is no catalogue."""
    ids = train.item_ids
    videos = pa.table(
        {
            "video_id": ids,
            "category": pa.nulls(len(ids), pa.string()),
            "channel_id": pa.nulls(len(ids), pa.int64()),
            "duration_s": pa.nulls(len(ids), pa.float64()),
            "published_at": pa.nulls(len(ids), pa.timestamp("us", tz="UTC")),
        }
    )
    users = pa.table(
        {
            "user_id": train.user_ids,
            "country": pa.nulls(train.n_users, pa.string()),
            "language": pa.nulls(train.n_users, pa.string()),
            "age_bucket": pa.nulls(train.n_users, pa.string()),
            "declared_interests": pa.nulls(train.n_users, pa.list_(pa.string())),
        }
    )
    return videos, users


def _tables_from_interactions(train: Interactions, tcfg: TrainingConfig, history_len: int):
    """Model config and tables from interactions alone (no catalogue features)."""
    videos, users = bare_dimensions(train)
    vocab = {"categories": [], "countries": [], "languages": [], "devices": [], "age_buckets": []}
    mcfg = model_config(tcfg, history_len, vocab, text=False)
    # Publication dates are unknown here, so the as-of time only has to be deterministic.
    as_of = dt.datetime.fromtimestamp(int(train.event_ts.max(initial=0)) / 1e6, dt.UTC)
    vt = video_table(videos, None, mcfg, None, as_of)
    # In-batch sampling probability: each video's share of the training events.
    counts = np.bincount(train.event_cols, minlength=train.n_items).astype(np.float64)
    vt.log_q[1:] = np.log(np.maximum(counts / max(counts.sum(), 1), 1e-7)).astype(np.float32)
    return mcfg, vt, user_table(users, mcfg)


def examples_from_interactions(
    train: Interactions, videos: VideoTable, users: UserTable, width: int
) -> Examples:
    """Every training interaction as a weight-1 example with its strictly-earlier history."""
    rows = videos.rows(train.item_ids[train.event_cols])
    hist = sequence_histories(rows, train.event_rows, train.event_ts, width)
    n = len(rows)
    zeros = np.zeros(n, dtype=np.int64)
    user_ids = train.user_ids[train.event_rows]
    return Examples(
        user_ids=user_ids,
        user_rows=users.rows(user_ids),
        history=hist,
        label_rows=rows,
        weights=np.ones(n, dtype=np.float32),
        device=zeros,
        hour=zeros,
        country=zeros,
        example_age=np.zeros(n, dtype=np.float32),
        ts=train.event_ts,
    )


class TwoTowerRecommender(Recommender):
    """The two-tower model behind the harness's Recommender interface.

    Given a ``trainer`` (a model trained on the feature stage's examples), ``fit`` only
    binds the split: it embeds the catalogue and the users' training histories, each
    user queried as of their last training event when ``as_of`` (the training
    window's end) is given. Without
    one, ``fit`` trains a model from the interactions alone (weight 1, no context or
    catalogue features) for ``epochs`` epochs, which is what the shared contract test
    and quick harness runs use.
    """

    name: ClassVar[str] = "TwoTower"

    def __init__(
        self,
        trainer: Trainer | None = None,
        *,
        training: TrainingConfig | None = None,
        history_len: int = 50,
        epochs: int = 5,
        as_of: dt.datetime | None = None,
    ) -> None:
        super().__init__()
        self.trainer = trainer
        self.training = training or TrainingConfig(text_encoder="none", batch_size=256)
        self.history_len = trainer.model.cfg.history_len if trainer is not None else history_len
        self.epochs = epochs
        self.as_of = as_of
        self.query_: np.ndarray | None = None
        self.candidates_: np.ndarray | None = None

    def fit(self, train: Interactions) -> Self:
        if self.trainer is None:
            tcfg = self.training
            seed_everything(tcfg.seed)
            mcfg, vt, ut = _tables_from_interactions(train, tcfg, self.history_len)
            trainer = Trainer(TwoTowerModel(mcfg), vt, ut, tcfg, resolve_device(tcfg.device))
            ex = examples_from_interactions(train, vt, ut, self.history_len)
            fit(trainer, ex, epochs=self.epochs, seed=tcfg.seed, progress=False)
            self.trainer = trainer
        t = self.trainer
        self.train_ = train
        self.candidates_ = t.candidate_embeddings(t.videos.rows(train.item_ids))
        hist = user_histories(train, t.videos, self.history_len)
        age = None
        if self.as_of is not None:
            # A user is queried as of their last training event, so the query's example
            # age matches the ages the model trained on (on MovieLens a user's "now" can
            # be years before the window's end; age 0 there would mean 2018).
            end_us = self.as_of.timestamp() * 1e6
            last = np.full(train.n_users, int(end_us), dtype=np.int64)
            indptr = train.history_indptr
            has = np.diff(indptr) > 0
            last[has] = train.event_ts[indptr[1:][has] - 1]
            age = np.maximum(0.0, (end_us - last) / 86_400e6).astype(np.float32)
        self.query_ = t.query_embeddings(t.users.rows(train.user_ids), hist, example_age=age)
        return self

    def scores(self, user_rows: np.ndarray) -> np.ndarray:
        if self.query_ is None or self.candidates_ is None:
            _ = self.train  # raises NotFittedError
        return self.query_[np.asarray(user_rows, dtype=np.int64)] @ self.candidates_.T

    def params(self) -> dict[str, Any]:
        cfg = self.trainer.model.cfg if self.trainer is not None else None
        return {
            "embed_dim": cfg.embed_dim if cfg else self.training.embed_dim,
            "history_len": self.history_len,
            "temperature": cfg.temperature if cfg else self.training.temperature,
            "logq_correction": self.training.logq_correction,
        }


def bind_model(
    model: TwoTowerModel,
    train: Interactions,
    videos: pa.Table,
    users: pa.Table,
    *,
    text: Callable[[], np.ndarray | None],
    as_of: dt.datetime,
    training: TrainingConfig,
    device: torch.device | str,
) -> TwoTowerRecommender:
    """Any trained two-tower model bound to the current data with *its own* config, and
    fitted on ``train`` (queries as of each user's last training event).

    The video and user tables are rebuilt from the dimension tables ``videos``/``users``
    with the model's vocabularies, hash buckets and history length. ``text`` returns the
    (V, text_dim) title/tag embeddings aligned with ``videos`` rows; it is only called
    for a model with a text input, and a width that differs from the model's
    ``text_dim`` raises ValueError.
    """
    mc = model.cfg
    tx = text() if mc.text_dim else None
    if mc.text_dim and (tx is None or tx.ndim != 2 or tx.shape[1] != mc.text_dim):
        have = None if tx is None else tx.shape
        raise ValueError(f"the model wants text_dim={mc.text_dim}; text embeddings: {have}")
    # No video features: they only give logQ, a training input, never a scoring one.
    vt = video_table(videos, None, mc, tx, as_of)
    trainer = Trainer(model, vt, user_table(users, mc), training, torch.device(device))
    return TwoTowerRecommender(trainer, as_of=as_of).fit(train)


def split_scorer(
    split: EvalSplit,
    videos: pa.Table,
    users: pa.Table,
    *,
    text: Callable[[], np.ndarray | None],
    as_of: dt.datetime,
    training: TrainingConfig,
    device: torch.device | str,
    metric: str = "ndcg@20",
) -> Callable[[TwoTowerModel], float]:
    """A function scoring any trained two-tower model on ``split`` (``metric``, e.g. NDCG@20).

    Each model is bound to the current data with *its own* config: the video and user
    tables are rebuilt from the dimension tables ``videos``/``users`` with the model's
    vocabularies, hash buckets and history length, so a champion trained on an older
    data version is scored on exactly the users, catalogue and hold-out the new model
    is. ``text`` returns the (V, text_dim) title/tag embeddings aligned with ``videos``
    rows; it is only called for a model with a text input, and a width that differs
    from the model's ``text_dim`` raises ValueError. The model is queried as
    :class:`TwoTowerRecommender` does (fitted on ``split.train``, ``as_of`` the window's
    end) and judged by the harness's :func:`evaluate_fitted`. NaN when the split
    evaluates nobody.
    """
    from videorec.evaluation.harness import evaluate_fitted

    def score(model: TwoTowerModel) -> float:
        rec = bind_model(model, split.train, videos, users, text=text, as_of=as_of,
                         training=training, device=device)  # fmt: skip
        m, _ = evaluate_fitted(rec, split, beyond=False)
        value = m[metric]
        return math.nan if value is None else float(value)  # None: nobody was evaluated

    return score
