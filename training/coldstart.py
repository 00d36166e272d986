"""Cold-item quality: how well the two-tower ranks videos it never trained on.

The protocol (the id-dropout issue's measurement):

1. A *cold set* of videos is held out entirely: on MovieLens a seeded random share of
   the films with at least one rating (:func:`random_cold_ids`); on the synthetic
   platform the videos published in the last day(s) before the window's end
   (:func:`recent_cold_ids`), whose plays fall in the feature stage's hold-out.
2. Every training example whose label is a cold video is removed and cold videos are
   taken out of the remaining examples' histories (:func:`without_videos`), so nothing
   about them is trained; the sampling logQ is recounted over what is left.
3. The model is trained on what remains, with the training stage's own pieces
   (``load_dimensions``, ``vocabularies``, ``video_table``, ``user_table``,
   ``load_examples``, ``Trainer``, ``fit``), for a fixed number of epochs, once per
   training config (with id dropout, and without).
4. Users with at least one held-out play of a cold video are queried with their
   (cold-free) training history, as :class:`TwoTowerRecommender` queries them, and
   rank *only* the cold videos (:func:`cold_heldout`). Recall@K and NDCG@K come from
   the harness's :func:`~videorec.evaluation.metrics.ranking_metrics`.

Rows scored: the two-tower model in content mode (``VideoTable.content_mode``) or with
the default table (cold videos embedded from their untrained hashed id plus content),
popular-in-category (:func:`popular_in_category_scores`) and random
(:func:`random_scores`, with its closed-form expectation :func:`expected_random`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import scipy.sparse as sp

from videorec import artifact_names as names
from videorec.config import Config, TrainingConfig
from videorec.evaluation.interactions import INTERACTION_EVENT, Events, Interactions
from videorec.evaluation.metrics import check_ks, ranking_metrics, summarise
from videorec.evaluation.recommenders import top_k
from videorec.examples import KEY_COLUMNS, open_examples
from videorec.ids import index_in_sorted
from videorec.training.data import (
    Examples,
    VideoTable,
    load_dimensions,
    load_examples,
    sampling_log_q,
    scan_examples,
    trained_vocabulary,
    user_table,
    video_table,
    vocabularies,
)
from videorec.training.model import TwoTowerModel
from videorec.training.task import Trainer, fit, model_config, resolve_device, seed_everything

if TYPE_CHECKING:
    from videorec.artifacts import ArtifactStore

ColdMode = Literal["random", "recent"]
DAY_US = 86_400 * 1_000_000


# ---------------------------------------------------------------- the cold set


def random_cold_ids(rated_ids: np.ndarray, share: float, seed: int) -> np.ndarray:
    """(C,) sorted int64: a seeded random ``share`` of the distinct ids in ``rated_ids``.

    ``rated_ids`` (n,) int64 video ids with at least one interaction (repeats allowed).
    C = round(share · distinct), at least 1 when there is any id. The draw is over the
    *sorted* distinct ids, so it does not depend on the order of ``rated_ids``.
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"the cold share must be in (0, 1); got {share}")
    ids = np.unique(np.asarray(rated_ids, np.int64))
    if len(ids) == 0:
        return ids
    n = max(1, round(share * len(ids)))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(ids, size=n, replace=False))


def recent_cold_ids(
    video_ids: np.ndarray, published_us: np.ndarray, window_end_us: int, days: float
) -> np.ndarray:
    """(C,) sorted int64: the videos published in the ``days`` before ``window_end_us``.

    ``video_ids`` (V,) int64 and ``published_us`` (V,) int64 UTC microseconds (unknown
    times: any value outside the range, e.g. int64 min). The interval is
    [end - days, end): a video published at or after the window's end is not in the
    catalogue the model could have been asked about.
    """
    if days <= 0:
        raise ValueError(f"days must be positive; got {days}")
    pub = np.asarray(published_us, np.int64)
    start = window_end_us - round(days * DAY_US)
    keep = (pub >= start) & (pub < window_end_us)
    return np.sort(np.asarray(video_ids, np.int64)[keep])


def compact_histories(history: np.ndarray, drop: np.ndarray) -> np.ndarray:
    """(N, L) right-aligned history rows with every row in ``drop`` removed, still
    right-aligned and left-padded with 0 (the relative order of what is kept is
    unchanged). ``drop`` (V+1,) bool over video-table rows; row 0 (padding) is never
    kept. A history that lost items is shorter: the feature stage stored only the last
    L items, so older ones cannot move up.
    """
    keep = (history > 0) & ~drop[history]
    width = history.shape[1]
    out = np.zeros_like(history)
    # Destination column of each kept item: width - (kept items at or after it).
    after = np.cumsum(keep[:, ::-1], axis=1)[:, ::-1]
    r, c = np.nonzero(keep)
    out[r, width - after[r, c]] = history[r, c]
    return out


def without_videos(ex: Examples, drop_rows: np.ndarray, n_rows: int) -> Examples:
    """``ex`` without the examples whose label is in ``drop_rows`` and with those videos
    taken out of every history. ``drop_rows`` (C,) int64 video-table rows (>= 1);
    ``n_rows`` is the table's row count (V+1)."""
    drop = np.zeros(n_rows, dtype=bool)
    drop[np.asarray(drop_rows, np.int64)] = True
    drop[0] = False
    kept = ex.subset(np.flatnonzero(~drop[ex.label_rows]))
    return dataclasses.replace(kept, history=compact_histories(kept.history, drop))


# ---------------------------------------------------------------- the cold hold-out


@dataclass(frozen=True, eq=False)
class ColdHeldOut:
    """The users evaluated on the cold catalogue and what they played of it.

    - ``cold_ids`` (C,) int64 sorted: the cold catalogue; column c is ``cold_ids[c]``.
    - ``rows`` (n,) int64: the users' rows in the training :class:`Interactions`.
    - ``relevant`` (n, C) float32 CSR: the distinct cold videos each user played.
    - ``n_relevant`` (n,) int64: their number (every one is in the cold catalogue).
    - ``stats``: counts, including users with cold plays but no training history.
    """

    cold_ids: np.ndarray
    rows: np.ndarray
    relevant: sp.csr_matrix
    n_relevant: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        """Number of evaluated users."""
        return len(self.rows)


def cold_heldout(plays: Events, cold_ids: np.ndarray, train: Interactions) -> ColdHeldOut:
    """The cold hold-out: plays of ``cold_ids`` by users who have a training history.

    ``plays`` are candidate hold-out plays (any videos; only cold ones are kept);
    ``train`` the cold-free training interactions that queries are built from. A user
    without a training row cannot be queried from a history and is counted in
    ``stats["users_without_history"]`` instead.
    """
    cold_ids = np.unique(np.asarray(cold_ids, np.int64))
    cols = index_in_sorted(cold_ids, plays.video_id)
    p = plays.take(cols >= 0)
    cols = cols[cols >= 0]
    rows = train.user_rows(p.user_id)
    warm = rows >= 0
    pair = np.unique(rows[warm] * len(cold_ids) + cols[warm])
    pr, pc_ = pair // max(len(cold_ids), 1), pair % max(len(cold_ids), 1)
    eval_rows, inv = np.unique(pr, return_inverse=True)
    relevant = sp.csr_matrix(
        (np.ones(len(pair), np.float32), (inv, pc_)), shape=(len(eval_rows), len(cold_ids))
    )
    stats = {
        "cold_catalogue": len(cold_ids),
        "cold_plays": len(p),
        "cold_videos_played": len(np.unique(cols)),
        "evaluated_users": len(eval_rows),
        "evaluated_pairs": len(pair),
        "users_without_history": len(np.unique(p.user_id[~warm])),
    }
    n_rel = np.bincount(inv, minlength=len(eval_rows)).astype(np.int64)
    return ColdHeldOut(cold_ids, eval_rows.astype(np.int64), relevant, n_rel, stats)


def cold_metrics(
    scores: np.ndarray, held: ColdHeldOut, ks: tuple[int, ...] = (10, 20)
) -> dict[str, float]:
    """Mean Recall@K, NDCG@K and HitRate@K over the evaluated users.

    ``scores`` (n, C): higher is better, aligned with ``held.rows`` and ``held.cold_ids``.
    Ranked by the harness's ``top_k`` (ties to the lower column) and measured by its
    ``ranking_metrics``; a K above C still ranks the whole cold catalogue.
    """
    ks = check_ks(ks)
    # No float32 cast: the popular-in-category keys are exact integers up to 2**53.
    top, _ = top_k(np.asarray(scores), ks[-1])
    return summarise(ranking_metrics(top, held.relevant, held.n_relevant, ks))


# ---------------------------------------------------------------- baselines


def popular_in_category_scores(
    train: Interactions,
    item_category: np.ndarray,
    cold_category: np.ndarray,
    user_rows: np.ndarray,
    seed: int,
) -> np.ndarray:
    """(n, C) float64 scores: the user's share of training plays in the cold video's
    category, ties broken by the category's global share of training plays, then by a
    seeded random order of the cold videos.

    ``item_category`` (n_items,) int codes of the training catalogue (``train.item_ids``);
    ``cold_category`` (C,) codes of the cold videos (same code space; an unknown category
    is just one more code); ``user_rows`` (n,) training rows. Plays count repeats.

    Every cold video is new, so inside one category this baseline cannot tell videos
    apart: the last tie-break is random rather than by index, because video ids carry
    information (on MovieLens, lower ids are older, better-known films). The score is
    an exact lexicographic key in integers (user count, global rank, random rank), which
    float64 holds exactly below 2**53.
    """
    item_category = np.asarray(item_category, np.int64)
    cold_category = np.asarray(cold_category, np.int64)
    n_codes = int(max(item_category.max(initial=0), cold_category.max(initial=0))) + 1
    play_cat = item_category[train.event_cols]
    per_user = sp.csr_matrix(
        (np.ones(len(play_cat)), (train.event_rows, play_cat)), shape=(train.n_users, n_codes)
    )
    counts = per_user[np.asarray(user_rows, np.int64)].toarray()  # (n, n_codes)
    global_counts = np.bincount(play_cat, minlength=n_codes)
    # Dense ranks of the global counts: equal counts share a rank (a true tie).
    g_rank = np.unique(global_counts, return_inverse=True)[1].astype(np.float64)
    c = len(cold_category)
    random_rank = np.random.default_rng(seed).permutation(c).astype(np.float64)
    base = float(c)
    key = g_rank[cold_category] * base + random_rank  # (C,) < n_codes · C
    return counts[:, cold_category] * (n_codes * base) + key[None, :]


def random_scores(n_users: int, n_items: int, seed: int) -> np.ndarray:
    """(n_users, n_items) float32 uniform random scores (a seeded random ranking)."""
    return np.random.default_rng(seed).random((n_users, n_items), dtype=np.float32)


def expected_random(
    n_relevant: np.ndarray, n_items: int, ks: tuple[int, ...] = (10, 20)
) -> dict[str, float]:
    """The exact expectation of Recall@K and NDCG@K under a uniformly random ranking.

    ``n_relevant`` (n,) each user's relevant items, all inside the ``n_items``
    catalogue. Every rank holds a relevant item with probability R/n_items, so
    E[hits@K] = min(K, n_items)·R/n_items and E[DCG@K] = (R/n_items)·Σ_{r≤K} 1/log2(r+1);
    NDCG divides by the ideal DCG of min(R, K) hits, as ``ranking_metrics`` does.
    """
    r = np.asarray(n_relevant, np.float64)
    out: dict[str, float] = {}
    for k in check_ks(ks):
        kk = min(k, n_items)
        disc = 1.0 / np.log2(np.arange(2, kk + 2))
        ideal = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))
        p = r / n_items
        out[f"recall@{k}"] = float(np.mean(kk * p / r))
        out[f"ndcg@{k}"] = float(np.mean(p * disc.sum() / ideal[np.minimum(r, k).astype(int) - 1]))
    return out


# ---------------------------------------------------------------- the two-tower rows


def two_tower_cold_scores(
    trainer: Trainer,
    train: Interactions,
    held: ColdHeldOut,
    table: VideoTable,
    as_of: dt.datetime,
) -> np.ndarray:
    """(n, C) float32 dot products of the users' queries with the cold videos.

    Queries are exactly :class:`TwoTowerRecommender`'s (its ``fit`` on ``train``: the
    last ``history_len`` training watches, each user as of their last training event);
    candidates are the cold videos embedded with ``table`` (the trainer's own table, or
    its :meth:`VideoTable.content_mode` copy).
    """
    from videorec.training.retrieval import TwoTowerRecommender

    rec = TwoTowerRecommender(trainer, as_of=as_of).fit(train)
    assert rec.query_ is not None
    cand = trainer.candidate_embeddings(table.rows(held.cold_ids), table=table)
    return rec.query_[held.rows] @ cand.T


def train_model(
    tcfg: TrainingConfig,
    mcfg_of: Callable[[TrainingConfig], Any],
    videos: VideoTable,
    users: Any,
    examples: Examples,
    epochs: int,
) -> tuple[Trainer, float]:
    """A fresh two-tower model trained for ``epochs`` on ``examples`` (seeded as the
    training stage seeds); returns (trainer, seconds)."""
    t0 = time.perf_counter()
    seed_everything(tcfg.seed)
    trainer = Trainer(
        TwoTowerModel(mcfg_of(tcfg)), videos, users, tcfg, resolve_device(tcfg.device)
    )
    fit(trainer, examples, epochs=epochs, seed=tcfg.seed, progress=False)
    return trainer, time.perf_counter() - t0


# ---------------------------------------------------------------- the whole measurement


def _events(table: pa.Table) -> Events:
    return Events.from_table(table.select(["user_id", "video_id", "ts"]))


def run_cold_items(
    cfg: Config,
    *,
    features_version: str,
    mode: ColdMode,
    store: ArtifactStore | None = None,
    share: float = 0.1,
    days: float = 1.0,
    epochs: int = 5,
    epochs_no_dropout: int | None = None,
    seed: int = 42,
    ks: tuple[int, ...] = (10, 20),
    random_seeds: int = 5,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The cold-item measurement on one features version; a JSON-able dict.

    ``mode`` ``random``: the cold set is a seeded ``share`` of the videos with at least
    one play (examples or hold-out), and every play of them is held out (MovieLens).
    ``recent``: the cold set is the catalogue's videos published in the ``days`` before
    the window's end, and only their hold-out plays are evaluated (synthetic).
    Two models are trained on the cold-free examples: ``cfg.training`` as given
    (``dropout``, for ``epochs``) and with ``id_dropout`` = ``channel_dropout`` = 0
    (``no_dropout``, for ``epochs_no_dropout``, default ``epochs``): each config's own
    best epoch count from the warm training stage is the fair choice, as dropout
    slows convergence. Keys: ``protocol``, ``stats``, ``rows`` ({row name: metrics}),
    ``seconds``.
    """
    from videorec.artifacts import open_store
    from videorec.training.text import embed_texts, video_texts

    say = log or (lambda _m: None)
    store = store or open_store(cfg)
    fman = store.read_manifest(names.FEATURES, features_version)
    data, date = str(fman["data"]), dt.date.fromisoformat(fman["date"])
    fdir = store.local_path(names.FEATURES, features_version)
    window_end = dt.datetime.combine(date, dt.time(), dt.UTC)
    end_us = int(window_end.timestamp() * 1e6)
    t_start = time.perf_counter()

    # The training stage's tables, built exactly as train_two_tower builds them.
    window_users = pq.read_table(fdir / names.USER_FEATURES, columns=["user_id"])["user_id"]
    videos_t, users_t = load_dimensions(data, window_users.to_numpy())
    # One pass over the examples: vocabularies, shards, arrays and the split's keys.
    scanned = scan_examples(open_examples(fdir, store.local_path))
    vocab = vocabularies(videos_t, users_t, scanned)
    tcfg = cfg.training
    text = None
    if tcfg.text_encoder != "none":
        texts = video_texts(videos_t["title"].to_pylist(), videos_t["tags"].to_pylist())
        text = embed_texts(texts, cfg.resolve_path(tcfg.text_cache_dir))
    history_len = cfg.features.history_len

    def mcfg_of(t: TrainingConfig) -> Any:
        return model_config(t, history_len, vocab, text=text is not None)

    mcfg = mcfg_of(tcfg)
    vt = video_table(videos_t, pq.read_table(fdir / names.VIDEO_FEATURES), mcfg, text, window_end)
    ut = user_table(users_t, mcfg)
    ex_all = load_examples(scanned, vt, ut, mcfg)
    ex_t = scanned.table.select(list(KEY_COLUMNS))
    ev_t = pads.dataset(str(fdir / names.EVAL), format="parquet").to_table(
        columns=["user_id", "video_id", "ts", "event_type"]
    )
    ev_t = ev_t.filter(pc.equal(ev_t["event_type"], INTERACTION_EVENT))
    train_ev, eval_ev = _events(ex_t), _events(ev_t)

    # The cold set, restricted to the model's catalogue (videos with a table row).
    if mode == "random":
        rated = np.r_[train_ev.video_id, eval_ev.video_id]
        cold = random_cold_ids(rated[vt.rows(rated) > 0], share, seed)
        plays = Events(
            np.r_[train_ev.user_id, eval_ev.user_id],
            np.r_[train_ev.video_id, eval_ev.video_id],
            np.r_[train_ev.ts, eval_ev.ts],
        )
    elif mode == "recent":
        pub = pc.cast(videos_t["published_at"], pa.int64()).to_numpy(zero_copy_only=False)
        pub = np.nan_to_num(pub.astype(np.float64), nan=-(2.0**62)).astype(np.int64)
        vids = videos_t["video_id"].to_numpy().astype(np.int64)
        cold = recent_cold_ids(vids, pub, end_us, days)
        plays = eval_ev
    else:
        raise ValueError(f"unknown cold mode {mode!r}; known: random, recent")
    cold_rows = vt.rows(cold)

    # Nothing about the cold videos is trained: their examples go, their history slots
    # go, and logQ is recounted without them (as validation_phase recounts it).
    ex_warm = without_videos(ex_all, cold_rows, len(vt.video_ids) + 1)
    vt_warm = dataclasses.replace(vt, log_q=sampling_log_q(ex_warm.label_rows, len(vt.video_ids)))
    train = Interactions.from_events(train_ev.take(index_in_sorted(cold, train_ev.video_id) < 0))
    held = cold_heldout(plays, cold, train)
    trained_ids, known_channels = trained_vocabulary(ex_warm, vt_warm)
    content = vt_warm.content_mode(trained_ids, known_channels)
    assert not np.isin(cold, trained_ids).any(), "a cold video has a training example"
    n_cold_in_hist = int(np.isin(ex_warm.history, cold_rows).sum())
    assert n_cold_in_hist == 0, "a cold video is still in a training history"
    stats = {
        **held.stats,
        "catalogue": len(vt.video_ids),
        "examples_all": len(ex_all),
        "examples_without_cold": len(ex_warm),
        "examples_removed": len(ex_all) - len(ex_warm),
        "train_users": train.n_users,
        "train_items": train.n_items,
        "cold_with_known_channel": int(np.isin(vt.channel_ids[cold_rows], known_channels).sum()),
        "mean_history_len_before": float((ex_all.history > 0).sum(1).mean()),
        "mean_history_len_after": float((ex_warm.history > 0).sum(1).mean()),
    }
    say(
        f"cold catalogue {len(cold):,} videos, {held.n_users:,} users evaluated, "
        f"{len(ex_warm):,} of {len(ex_all):,} examples kept"
    )

    rows: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    no_drop = tcfg.model_copy(update={"id_dropout": 0.0, "channel_dropout": 0.0})
    n_no_drop = epochs if epochs_no_dropout is None else epochs_no_dropout
    for name, t, n_ep in (("dropout", tcfg, epochs), ("no_dropout", no_drop, n_no_drop)):
        say(f"training {name} (id {t.id_dropout}, channel {t.channel_dropout}), {n_ep} epochs")
        trainer, secs = train_model(t, mcfg_of, vt_warm, ut, ex_warm, n_ep)
        seconds[f"train_{name}"] = secs
        for table_name, table in (("content", content), ("id", vt_warm)):
            s = two_tower_cold_scores(trainer, train, held, table, window_end)
            rows[f"two_tower_{name}_{table_name}"] = cold_metrics(s, held, ks)
        say(f"{name}: {rows[f'two_tower_{name}_content']}")

    cat_codes = vt.category  # (V+1,) vocabulary index, 0 = unknown category
    pic = popular_in_category_scores(
        train, cat_codes[vt.rows(train.item_ids)], cat_codes[cold_rows], held.rows, seed
    )
    rows["popular_in_category"] = cold_metrics(pic, held, ks)
    per_seed = [
        cold_metrics(random_scores(held.n_users, len(cold), seed + i), held, ks)
        for i in range(random_seeds)
    ]
    rows["random"] = {k: float(np.mean([m[k] for m in per_seed])) for k in per_seed[0]}
    rows["random_expected"] = expected_random(held.n_relevant, len(cold), ks)
    seconds["total"] = time.perf_counter() - t_start
    return {
        "protocol": {
            "features_version": features_version,
            "data": data,
            "date": date.isoformat(),
            "mode": mode,
            "share": share if mode == "random" else None,
            "days": days if mode == "recent" else None,
            "epochs": {"dropout": epochs, "no_dropout": n_no_drop},
            "seed": seed,
            "ks": list(check_ks(ks)),
            "random_seeds": random_seeds,
            "training": tcfg.model_dump(mode="json"),
            "held_out_plays": "all plays of cold videos"
            if mode == "random"
            else "hold-out plays of cold videos",
        },
        "stats": stats,
        "rows": rows,
        "seconds": seconds,
    }
