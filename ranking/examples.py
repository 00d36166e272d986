"""The ranking-examples stage: retrieval's candidates, labelled by what happened next.

``build_ranking_examples(cfg, features_version=F, model_version=M)`` writes the
``ranking-examples/<date>_<digest>`` version with two tables of (user, candidate) pairs:

- ``train_pairs.parquet``: for each sampled user, the top ``ranking.candidates`` videos
  of the two-tower's **validation-phase model** (trained only on examples before each
  user's validation boundary; :data:`~videorec.artifact_names.VALIDATION_CHECKPOINT_FILE`)
  queried with the user's history before that boundary, labelled by the user's events
  from the boundary to the hold-out's start: played, watch time, like, dislike, skip,
  and shown (an impression in that span). Every played or shown candidate is kept and
  ``negatives_per_user`` of the others.
- ``eval_pairs.parquet``: for each sampled hold-out user, the top candidates of the
  **served model** (the refit checkpoint) as of the hold-out's start, all of them, with
  the hold-out span's labels: what the funnel is evaluated on.

No feature uses an event at or after its pair's time: histories are the split's
training side, video statistics are counted over events strictly before the pair's
time (millisecond resolution, rounding towards "not before"), and the retrieval model
of the training pairs never trained on their labels.

Vectorised Arrow and numpy rather than Spark: candidate generation is a matrix job of
the query tower and a top-K over the catalogue in one process, and the labels and the
as-of statistics are sorted-array joins over users × K pairs that fit in memory at the
sampled sizes; a Spark job would add a JVM round trip and a Python-to-JVM copy of
the embeddings for no parallelism the matrix products do not already have.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from videorec import artifact_names as names
from videorec.artifacts import ArtifactStore, VersionExistsError, open_store
from videorec.config import Config, config_digest, source_digest
from videorec.ranking.features import FEATURE_NAMES, PairInputs, knn_scores, pair_features
from videorec.retention import holding_model

KINDS = {"watch": 0, "skip": 1, "like": 2, "dislike": 3, "impression": 4}
LABELS = ("played", "watch_s", "like", "dislike", "skip", "shown")
_NULL_TS = np.iinfo(np.int64).min
US_PER_DAY = 86_400e6
KNN_NEIGHBOURS = 100  # ItemKNN's k, as the harness's ItemKNN default
TRAIN_PAIRS_FILE = "train_pairs.parquet"
EVAL_PAIRS_FILE = "eval_pairs.parquet"


class RankingInputError(ValueError):
    """The versions the ranking-examples stage was given are missing or unusable."""


@dataclass(frozen=True, eq=False)
class EventLog:
    """The window's valid events of the kinds the ranker uses, as arrays (n,).

    ``user``, ``video`` int64 ids; ``ts_us`` int64 UTC µs; ``kind`` int8 (:data:`KINDS`);
    ``watch_s`` float64 (NaN: none); ``duration_s`` float64 (NaN: unknown).
    """

    user: np.ndarray
    video: np.ndarray
    ts_us: np.ndarray
    kind: np.ndarray
    watch_s: np.ndarray
    duration_s: np.ndarray

    @classmethod
    def from_table(cls, t: pa.Table) -> EventLog:
        """From contract ``watch_events`` rows (other event types are dropped)."""
        kinds = pa.array(list(KINDS))
        t = t.filter(pc.is_in(t["event_type"], kinds))
        ts = pc.cast(pc.cast(t["ts"], pa.timestamp("us", tz="UTC")), pa.int64())
        return cls(
            t["user_id"].to_numpy().astype(np.int64),
            t["video_id"].to_numpy().astype(np.int64),
            ts.to_numpy().astype(np.int64),
            pc.index_in(t["event_type"], kinds).to_numpy().astype(np.int8),
            pc.fill_null(pc.cast(t["watch_time_s"], pa.float64()), np.nan).to_numpy(),
            pc.fill_null(pc.cast(t["video_duration_s"], pa.float64()), np.nan).to_numpy(),
        )

    def take(self, mask: np.ndarray) -> EventLog:
        return EventLog(*(getattr(self, f)[mask] for f in self.__dataclass_fields__))


def _ms(ts_us: np.ndarray) -> np.ndarray:
    return np.floor_divide(ts_us, 1000)


def video_stats_as_of(
    log: EventLog, video_ids: np.ndarray, t_us: np.ndarray
) -> dict[str, np.ndarray]:
    """Each (video, time)'s statistics over the log's events strictly before that time.

    ``video_ids``, ``t_us`` (N,) int64. Returns ``views`` (N,) plays (watch and skip
    events), ``completion`` (N,) mean of min(1, watch/duration) over plays with both
    known (NaN: none), ``dislike_ratio`` (N,) dislikes per play (NaN: no play).
    Times are compared in whole milliseconds, an event in the same millisecond as the
    query counting as not before it.
    """
    video_ids, t_ms = np.asarray(video_ids, np.int64), _ms(np.asarray(t_us, np.int64))
    out = {
        "views": np.zeros(len(video_ids)),
        "completion": np.full(len(video_ids), np.nan),
        "dislike_ratio": np.full(len(video_ids), np.nan),
    }
    if not len(log.user) or not len(video_ids):
        return out
    vocab = np.unique(log.video)
    t0 = int(_ms(log.ts_us).min())
    span = int(max(_ms(log.ts_us).max(), t_ms.max()) - t0 + 2)
    q_rank = np.searchsorted(vocab, video_ids).clip(0, len(vocab) - 1)
    found = vocab[q_rank] == video_ids
    q_lo = q_rank * span
    q_key = q_lo + np.clip(t_ms - t0, 0, span - 1)

    def counts_before(mask: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
        rank = np.searchsorted(vocab, log.video[mask])
        key = rank * span + (_ms(log.ts_us[mask]) - t0)
        order = np.argsort(key, kind="stable")
        key = key[order]
        cum = np.concatenate(
            [[0.0], np.cumsum(np.ones(len(key)) if values is None else values[order])]
        )
        return cum[np.searchsorted(key, q_key)] - cum[np.searchsorted(key, q_lo)]

    plays = log.kind <= KINDS["skip"]
    comp = np.minimum(log.watch_s / log.duration_s, 1.0)
    has = plays & np.isfinite(comp) & (log.duration_s > 0)
    views = np.where(found, counts_before(plays), 0.0)
    n_comp = np.where(found, counts_before(has), 0.0)
    s_comp = np.where(found, counts_before(has, np.where(has, comp, 0.0)[has]), 0.0)
    dislikes = np.where(found, counts_before(log.kind == KINDS["dislike"]), 0.0)
    out["views"] = views
    out["completion"] = np.where(n_comp > 0, s_comp / np.maximum(n_comp, 1), np.nan)
    out["dislike_ratio"] = np.where(views > 0, dislikes / np.maximum(views, 1), np.nan)
    return out


def outcome_labels(
    log: EventLog,
    user_ids: np.ndarray,
    t0_us: np.ndarray,
    t1_us: np.ndarray,
    cand_videos: np.ndarray,
) -> dict[str, np.ndarray]:
    """What each user did with each candidate in ``[t0, t1)``: (U, C) arrays per label.

    ``user_ids``, ``t0_us``, ``t1_us`` (U,) int64; ``cand_videos`` (U, C) int64 video
    ids (-1: no candidate). Labels (:data:`LABELS`): ``played`` (a watch or skip event),
    ``watch_s`` (summed watch time; 0 where unknown), ``like``, ``dislike``, ``skip``,
    ``shown`` (an impression), float32 0/1 except ``watch_s``.
    """
    order = np.argsort(user_ids)
    users, t0, t1 = user_ids[order], t0_us[order], t1_us[order]
    pos = np.searchsorted(users, log.user).clip(0, max(len(users) - 1, 0))
    inside = (users[pos] == log.user) & (log.ts_us >= t0[pos]) & (log.ts_us < t1[pos])
    vocab = np.unique(cand_videos[cand_videos >= 0])
    vrank = np.searchsorted(vocab, log.video).clip(0, max(len(vocab) - 1, 0))
    inside &= (vocab[vrank] == log.video) if len(vocab) else False
    n_v = max(len(vocab), 1)
    key = pos[inside] * n_v + vrank[inside]
    kind, watch = log.kind[inside], np.nan_to_num(log.watch_s[inside])
    # Each user's row in the sorted order, and the candidates' keys.
    row_of = np.empty(len(users), np.int64)
    row_of[order] = np.arange(len(users))
    c_rank = np.searchsorted(vocab, cand_videos).clip(0, n_v - 1)
    c_key = row_of[:, None] * n_v + c_rank

    def total(mask: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
        k, v = key[mask], (np.ones(int(mask.sum())) if values is None else values[mask])
        uniq, inv = np.unique(k, return_inverse=True)
        sums = np.bincount(inv, weights=v, minlength=len(uniq))
        if not len(uniq):
            return np.zeros(cand_videos.shape)
        p = np.searchsorted(uniq, c_key).clip(0, len(uniq) - 1)
        return np.where((uniq[p] == c_key) & (cand_videos >= 0), sums[p], 0.0)

    plays = kind <= KINDS["skip"]
    out = {
        "played": total(plays) > 0,
        "watch_s": total(plays, watch),
        "like": total(kind == KINDS["like"]) > 0,
        "dislike": total(kind == KINDS["dislike"]) > 0,
        "skip": total(kind == KINDS["skip"]) > 0,
        "shown": total(kind == KINDS["impression"]) > 0,
    }
    return {k: v.astype(np.float32) for k, v in out.items()}


def sample_users(user_ids: np.ndarray, n: int) -> np.ndarray:
    """A deterministic sample of at most ``n`` of ``user_ids`` (by a hash of the id):
    the same user is in or out whatever else is in the list. Returns a boolean mask."""
    user_ids = np.asarray(user_ids, np.int64)
    if len(user_ids) <= n:
        return np.ones(len(user_ids), bool)
    h = (user_ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(11)
    keep = np.zeros(len(user_ids), bool)
    keep[np.argsort(h, kind="stable")[:n]] = True
    return keep


def last_plays(train: Any, rows: np.ndarray, width: int) -> np.ndarray:
    """(U, width) catalogue columns of each user's last ``width`` training plays, most
    recent last, -1 padding at the front. ``train`` is an ``Interactions``."""
    indptr = train.history_indptr
    end = indptr[np.asarray(rows, np.int64) + 1]
    start = np.maximum(indptr[np.asarray(rows, np.int64)], end - width)
    offs = np.arange(width)[None, :] - width + end[:, None]  # (U, width) event positions
    ok = offs >= start[:, None]
    return np.where(ok, train.event_cols[np.where(ok, offs, 0)], -1).astype(np.int64)


@dataclass(frozen=True, eq=False)
class Catalogue:
    """The split's catalogue columns' metadata: ``video_ids``, ``category`` (int, -1),
    ``published_us`` (int64, ``_NULL_TS`` unknown), ``duration_s`` (NaN unknown)."""

    video_ids: np.ndarray
    category: np.ndarray
    published_us: np.ndarray
    duration_s: np.ndarray


def catalogue_of(split: Any, videos: pa.Table) -> Catalogue:
    """The metadata of ``split.train``'s catalogue from its ItemMeta and ``videos``."""
    ids = split.train.item_ids
    dur = np.full(len(ids), np.nan)
    vid = videos["video_id"].to_numpy().astype(np.int64)
    pos = np.searchsorted(ids, vid).clip(0, max(len(ids) - 1, 0))
    ok = ids[pos] == vid if len(ids) else np.zeros(len(vid), bool)
    d = pc.fill_null(pc.cast(videos["duration_s"], pa.float64()), np.nan).to_numpy()
    dur[pos[ok]] = d[ok]
    return Catalogue(ids, split.items.category, split.items.published_us, dur)


def covisitation(train: Any, k: int = KNN_NEIGHBOURS) -> sp.csr_matrix:
    """(I, I) CSR over ``train``'s catalogue columns: row i holds i's pruned cosine
    similarity to each item it is one of the ``k`` nearest neighbours of (ItemKNN's
    matrix), the diagonal dropped (a play never votes for itself)."""
    from videorec.evaluation.recommenders import ItemKNN

    s = ItemKNN(k=k).fit(train).neighbours_.tolil()
    s.setdiag(0)
    out = sp.csr_matrix(s, dtype=np.float32)
    out.eliminate_zeros()
    return out


def candidate_pairs(
    rec: Any,
    neighbours: sp.csr_matrix,
    cat: Catalogue,
    rows: np.ndarray,
    t_us: np.ndarray,
    t_end_us: np.ndarray,
    log: EventLog,
    *,
    k: int,
    history_len: int,
    negatives: int,
    seed: int,
    batch: int = 256,
) -> pa.Table:
    """The (user, candidate) pairs of the users at ``rows`` of ``rec.train``: features as
    of ``t_us`` (U,) and labels over ``[t_us, t_end_us)``.

    ``rec`` is a fitted ``TwoTowerRecommender`` (its ``query_`` and ``candidates_``);
    ``neighbours`` the item-item matrix of :func:`covisitation` on the same training
    interactions (its rows and columns are their catalogue columns).
    Keeps every played or shown candidate and ``negatives`` others per user (0: all).
    Columns: user_id, video_id, ts_us, rank, features (F float32), then :data:`LABELS`.
    """
    train = rec.train
    rng = np.random.default_rng(seed)
    parts: list[pa.Table] = []
    for lo in range(0, len(rows), batch):
        r, t, t_end = rows[lo : lo + batch], t_us[lo : lo + batch], t_end_us[lo : lo + batch]
        cols, scores = rec.recommend(r, k)
        valid = cols >= 0
        c = np.where(valid, cols, 0)
        cand_ids = np.where(valid, cat.video_ids[c], -1)
        hist = last_plays(train, r, history_len)
        h = np.where(hist >= 0, hist, 0)
        pub = cat.published_us[c]
        stats = video_stats_as_of(log, cand_ids.ravel(), np.repeat(t, k))
        x = PairInputs(
            query=rec.query_[r],
            history=rec.candidates_[h] * (hist >= 0)[..., None],
            history_category=np.where(hist >= 0, cat.category[h], -1),
            candidate=rec.candidates_[c] * valid[..., None],
            candidate_category=np.where(valid, cat.category[c], -1),
            retrieval_score=np.where(valid, scores, 0.0),
            retrieval_rank=np.broadcast_to(np.arange(k), cols.shape),
            views=stats["views"].reshape(cols.shape),
            completion=stats["completion"].reshape(cols.shape),
            dislike_ratio=stats["dislike_ratio"].reshape(cols.shape),
            age_days=np.where(pub != _NULL_TS, (t[:, None] - pub) / US_PER_DAY, np.nan),
            duration_s=cat.duration_s[c],
            hour=(t / 3.6e9) % 24.0,
            knn=knn_scores(neighbours, hist, np.where(valid, cols, -1)),
        )
        feats = pair_features(x)
        user_ids = train.user_ids[r]
        labels = outcome_labels(log, user_ids, t, t_end, cand_ids)
        keep = valid
        if negatives > 0:
            informative = (labels["played"] > 0) | (labels["shown"] > 0)
            # A uniform draw of `negatives` of the rest: the smallest random keys.
            key = np.where(valid & ~informative, rng.random(cols.shape), np.inf)
            nth = np.sort(key, axis=1)[:, min(negatives, k) - 1 : min(negatives, k)]
            keep = valid & (informative | (key <= nth))
        ui, ci = np.nonzero(keep)
        f = feats[ui, ci]
        parts.append(
            pa.table(
                {
                    "user_id": user_ids[ui],
                    "video_id": cand_ids[ui, ci],
                    "ts_us": t[ui],
                    "rank": ci.astype(np.int32),
                    "features": pa.FixedSizeListArray.from_arrays(f.ravel(), f.shape[1]),
                    **{name: labels[name][ui, ci] for name in LABELS},
                }
            )
        )
    if not parts:
        raise RankingInputError("no users to build ranking pairs for")
    return pa.concat_tables(parts)


def save_neighbours(path: Any, item_ids: np.ndarray, neighbours: sp.csr_matrix) -> None:
    """The co-visitation matrix with its item ids (what serving looks plays up in)."""
    np.savez(path, item_ids=np.asarray(item_ids, np.int64), indptr=neighbours.indptr,
             indices=neighbours.indices, data=neighbours.data.astype(np.float32))  # fmt: skip


def examples_version(cfg: Config, date: str, features_version: str, model_version: str) -> str:
    """``<date>_<digest>`` of everything the pairs depend on."""
    r = cfg.ranking
    keys = (
        "candidates",
        "history_len",
        "max_users",
        "max_eval_users",
        "negatives_per_user",
        "seed",
    )
    return f"{date}_" + config_digest(
        {
            "ranking": {k: getattr(r, k) for k in keys},
            "features": features_version,
            "model": model_version,
            "code": source_digest("videorec.ranking"),
        }
    )


def window_events(cfg: Config, data: str, fman: dict[str, Any]) -> EventLog:
    """The feature window's contract-valid events (the feature stage quarantined the
    rest and enforced the invalid share, so nothing is checked or written again)."""
    from videorec.dataset import load_validated

    start = dt.datetime.fromisoformat(fman["window_start"]).date()
    end = dt.date.fromisoformat(fman["date"])
    vd = load_validated(
        data, max_invalid_share=1.0, start=start, end=end, check=False, limits=cfg.contract,
        tables=("watch_events", "videos", "channels"),
    )  # fmt: skip
    return EventLog.from_table(vd.tables["watch_events"])


def holdout_start_us(fman: dict[str, Any], end_us: int) -> int:
    """When the features version's hold-out begins for every user (UTC µs): the last
    ``eval_days`` of the window in ``last_days`` mode; ``end_us`` (the window's end)
    where each user's own boundary says it (``per_user``). The training pairs' labels
    end there, so no event of the span the gate judges on labels a training pair (a
    user without a hold-out watch, with skips or impressions on the hold-out day,
    labelled up to the window's end: found by review)."""
    if fman.get("split") != "last_days":
        return end_us
    days = int(fman.get("features_config", {}).get("eval_days", 1))
    return end_us - days * 86_400 * 1_000_000


def label_ends(split: Any, user_ids: np.ndarray, fman: dict[str, Any], end_us: int) -> np.ndarray:
    """(U,) where each training pair's labels end (UTC µs): the user's hold-out start in
    ``split``, and never past the hold-out's start for all (:func:`holdout_start_us`)."""
    return np.minimum(_boundaries(split, user_ids, end_us), holdout_start_us(fman, end_us))


def _boundaries(split: Any, user_ids: np.ndarray, default_us: int) -> np.ndarray:
    """(U,) each user's hold-out start in ``split`` (``default_us`` where none)."""
    test_ids = split.train.user_ids[split.test.rows]
    order = np.argsort(test_ids)
    ids, ts = test_ids[order], split.test.serve_ts[order]
    pos = np.searchsorted(ids, user_ids).clip(0, max(len(ids) - 1, 0))
    has = ids[pos] == user_ids if len(ids) else np.zeros(len(user_ids), bool)
    return np.where(has, ts[pos] if len(ids) else 0, default_us).astype(np.int64)


def build_ranking_examples(
    cfg: Config,
    *,
    features_version: str,
    model_version: str,
    store: ArtifactStore | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Write the training and evaluation pairs of (features, two-tower model) versions.

    Returns {"version", "uri", "skipped", "train_pairs", "eval_pairs", "train_users",
    "eval_users", "positives"}. Raises RankingInputError for a missing version, a model
    trained on other features, or a model without its validation-phase checkpoint.
    """
    store = store or open_store(cfg)
    # Held while read: a ranker trained by hand on an old model beside a collection
    # keeps its inputs.
    with holding_model(store, model_version, why=f"ranking examples of {model_version}") as mman:
        if mman is None:
            raise RankingInputError(f"{store.uri(names.MODEL)}/{model_version}: no such version")
        return _build_examples(cfg, store, mman, features_version, model_version,
                               log or (lambda _m: None))  # fmt: skip


def _build_examples(
    cfg: Config,
    store: ArtifactStore,
    mman: dict[str, Any],
    features_version: str,
    model_version: str,
    say: Any,
) -> dict[str, Any]:
    """:func:`build_ranking_examples`' work, its inputs held."""
    from videorec.artifacts import VersionNotFoundError

    if mman["features_version"] != features_version:
        raise RankingInputError(
            f"model {model_version} was trained on features {mman['features_version']}, "
            f"not {features_version}"
        )
    try:
        fman = store.read_manifest(names.FEATURES, features_version)
    except VersionNotFoundError as e:
        raise RankingInputError(str(e)) from None
    mdir = store.local_path(names.MODEL, model_version)
    if not (mdir / names.VALIDATION_CHECKPOINT_FILE).exists():
        raise RankingInputError(
            f"model {model_version} has no {names.VALIDATION_CHECKPOINT_FILE} (trained before "
            "the ranking stage existed): retrain it"
        )
    version = examples_version(cfg, fman["date"], features_version, model_version)
    if store.exists(names.RANKING_EXAMPLES, version):
        return _reused(store, version)
    # Heavy imports (torch) only once the inputs are known to exist: a bad version is
    # refused in milliseconds.
    from videorec.evaluation.interactions import split_from_features
    from videorec.training.data import load_dimensions
    from videorec.training.retrieval import bind_model
    from videorec.training.task import resolve_device
    from videorec.training.text import embed_texts, video_texts
    from videorec.training.train import load_checkpoint

    rcfg, data = cfg.ranking, str(fman["data"])
    fdir = store.local_path(names.FEATURES, features_version)
    split = split_from_features(fdir, data=data, resolve=store.local_path)
    val = split.validation()
    window_users = pq.read_table(fdir / names.USER_FEATURES, columns=["user_id"])["user_id"]
    videos_t, users_t = load_dimensions(data, window_users.to_numpy())
    events = window_events(cfg, data, fman)
    as_of = dt.datetime.combine(dt.date.fromisoformat(fman["date"]), dt.time(), dt.UTC)
    end_us = int(as_of.timestamp() * 1e6)
    say(f"ranking examples {version}: {len(events.user):,} events in the window")

    def text() -> np.ndarray:
        texts = video_texts(videos_t["title"].to_pylist(), videos_t["tags"].to_pylist())
        return embed_texts(texts, cfg.resolve_path(cfg.training.text_cache_dir))

    def bound(path: Any, sp: Any) -> Any:
        model, _ = load_checkpoint(path)
        return bind_model(model, sp.train, videos_t, users_t, text=text, as_of=as_of,
                          training=cfg.training, device=resolve_device(cfg.training.device))  # fmt: skip

    common = {"k": rcfg.candidates, "history_len": rcfg.history_len, "seed": rcfg.seed}
    # Training pairs: the validation-phase model at each user's validation boundary.
    rows = val.test.rows[sample_users(val.train.user_ids[val.test.rows], rcfg.max_users)]
    ids = val.train.user_ids[rows]
    rec = bound(mdir / names.VALIDATION_CHECKPOINT_FILE, val)
    t0 = _boundaries(val, ids, end_us)
    t1 = label_ends(split, ids, fman, end_us)
    train_pairs = candidate_pairs(
        rec, covisitation(val.train), catalogue_of(val, videos_t), rows, t0, t1, events,
        negatives=rcfg.negatives_per_user, **common,
    )  # fmt: skip
    say(f"training pairs: {train_pairs.num_rows:,} of {len(rows):,} users")
    # Evaluation pairs: the served model at each hold-out user's hold-out start.
    rows = split.test.rows[sample_users(split.train.user_ids[split.test.rows], rcfg.max_eval_users)]
    ids = split.train.user_ids[rows]
    rec = bound(mdir / names.CHECKPOINT_FILE, split)
    neighbours = covisitation(split.train)
    eval_pairs = candidate_pairs(
        rec, neighbours, catalogue_of(split, videos_t), rows, _boundaries(split, ids, end_us),
        np.full(len(rows), end_us), events, negatives=0, **common,
    )  # fmt: skip
    say(f"evaluation pairs: {eval_pairs.num_rows:,} of {len(rows):,} users")
    summary = {
        "version": version,
        "skipped": False,
        "features_version": features_version,
        "model_version": model_version,
        "train_pairs": train_pairs.num_rows,
        "eval_pairs": eval_pairs.num_rows,
        "train_users": int(pc.count_distinct(train_pairs["user_id"]).as_py()),
        "eval_users": int(pc.count_distinct(eval_pairs["user_id"]).as_py()),
        "positives": int(pc.sum(train_pairs["played"]).as_py() or 0),
        "feature_names": list(FEATURE_NAMES),
    }
    meta = {"date": fman["date"], "config_digest": cfg.digest(), **summary}
    try:
        with store.write_version(names.RANKING_EXAMPLES, version, meta) as out:
            pq.write_table(train_pairs, out / TRAIN_PAIRS_FILE)
            pq.write_table(eval_pairs, out / EVAL_PAIRS_FILE)
            # The served ranker's co-visitation table: the same one the evaluation used.
            save_neighbours(out / names.NEIGHBOURS_FILE, split.train.item_ids, neighbours)
    except VersionExistsError:
        return _reused(store, version)  # a concurrent attempt committed the same function
    return {**summary, "uri": store.files_uri(names.RANKING_EXAMPLES, version)}


def _reused(store: ArtifactStore, version: str) -> dict[str, Any]:
    meta = store.read_manifest(names.RANKING_EXAMPLES, version)
    keys = ("features_version", "model_version", "train_pairs", "eval_pairs", "train_users",
            "eval_users", "positives", "feature_names")  # fmt: skip
    return {"version": version, "uri": store.files_uri(names.RANKING_EXAMPLES, version),
            "skipped": True, **{k: meta.get(k) for k in keys}}  # fmt: skip
