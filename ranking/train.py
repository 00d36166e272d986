"""``train_ranker(cfg, examples_version=E)``: ranking pairs -> ranker -> funnel evaluation.

1. The training pairs of a ranking-examples version (:mod:`videorec.ranking.examples`);
   a tenth of their users (by id hash) held out for early stopping on played-NDCG@20.
2. The heads' losses (:func:`videorec.ranking.model.head_losses`) summed with
   ``ranking.head_weights``; Adam; the best epoch's weights kept.
3. The funnel on the evaluation pairs: each hold-out user's retrieval candidates
   reordered by the final score (``ranking.score_weights``), judged by the harness
   (:func:`~videorec.evaluation.harness.evaluate_fitted`) on the features version's
   hold-out, beside retrieval alone on the same users.
4. One artifact version ``models/ranker/<date>_<digest>`` (torch checkpoint with its
   config, the numpy runtime's ``.npz``, the summary) and an MLflow run.

Registering and gating are the next step (:func:`videorec.ranking.gate.gate_ranker`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp
import torch

from videorec import artifact_names as names
from videorec.artifacts import ArtifactStore, VersionExistsError, VersionNotFoundError, open_store
from videorec.config import Config, RankingConfig, config_digest, source_digest
from videorec.evaluation.interactions import EvalSplit, HeldOut, Interactions
from videorec.evaluation.recommenders import Recommender
from videorec.ranking.examples import EVAL_PAIRS_FILE, TRAIN_PAIRS_FILE, sample_users
from videorec.ranking.features import FEATURE_NAMES
from videorec.ranking.model import (
    HEADS,
    Labels,
    RankerConfig,
    RankerModel,
    export_weights,
    head_losses,
)
from videorec.ranking.runtime import RankerRuntime, combine, save_runtime

EVAL_K = 20


class RankerInputError(ValueError):
    """The ranking-examples version is missing, or the config names unknown features."""


@dataclasses.dataclass(frozen=True, eq=False)
class Pairs:
    """Pairs as arrays: ``x`` (N, F) float32, ``user_id``/``video_id`` (N,) int64,
    ``rank`` (N,) int (retrieval rank), and each label of ``LABELS`` (N,)."""

    x: np.ndarray
    user_id: np.ndarray
    video_id: np.ndarray
    rank: np.ndarray
    labels: dict[str, np.ndarray]

    @classmethod
    def read(cls, path: str | Path) -> Pairs:
        t = pq.read_table(path)
        f = t["features"].combine_chunks()
        x = f.values.to_numpy().reshape(len(t), f.type.list_size).astype(np.float32)
        labels = {k: t[k].to_numpy().astype(np.float32) for k in
                  ("played", "watch_s", "like", "dislike", "skip", "shown")}  # fmt: skip
        return cls(
            x, t["user_id"].to_numpy(), t["video_id"].to_numpy(), t["rank"].to_numpy(), labels
        )

    def take(self, idx: np.ndarray) -> Pairs:
        return Pairs(self.x[idx], self.user_id[idx], self.video_id[idx], self.rank[idx],
                     {k: v[idx] for k, v in self.labels.items()})  # fmt: skip


def watch_weights(p: Pairs, rcfg: RankingConfig) -> np.ndarray:
    """(N,) the watch head's example weights (Covington et al.'s weighted LR).

    Objective ``watch_time``: a played pair weighs its watch time over the mean watch
    time of the played pairs (1 where watch time is unknown, as on MovieLens); a pair
    shown and not played weighs ``impression_negative_weight``; other pairs 1.
    Objective ``click``: every played pair weighs 1 (the head learns P(play)).
    """
    played, watch = p.labels["played"] > 0, p.labels["watch_s"]
    pos = np.ones(len(played))
    if rcfg.objective == "watch_time":
        known = played & (watch > 0)
        if known.any():
            pos = np.where(known, watch / watch[known].mean(), 1.0)
    neg = np.where(p.labels["shown"] > 0, rcfg.impression_negative_weight, 1.0)
    return np.where(played, pos, neg).astype(np.float32)


def _labels(p: Pairs, w: np.ndarray) -> Labels:
    t = {k: torch.from_numpy(v.astype(np.float32)) for k, v in p.labels.items()}
    return Labels(t["played"], torch.from_numpy(w), t["like"], t["dislike"], t["skip"])


def grouped_ndcg(
    scores: np.ndarray, gains: np.ndarray, groups: np.ndarray, k: int = EVAL_K
) -> float:
    """Mean NDCG@k over the groups (users) with a positive gain; (N,) arrays each."""
    order = np.lexsort((-scores, groups))
    g, gain = groups[order], gains[order]
    start = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    pos = np.arange(len(g)) - np.repeat(start, np.diff(np.r_[start, len(g)]))
    disc = np.where(pos < k, 1.0 / np.log2(pos + 2), 0.0)
    grp = np.repeat(np.arange(len(start)), np.diff(np.r_[start, len(g)]))
    dcg = np.bincount(grp, weights=gain * disc, minlength=len(start))
    ideal_sorted = np.lexsort((-gain, grp))
    idcg = np.bincount(grp, weights=gain[ideal_sorted] * disc, minlength=len(start))
    ok = idcg > 0
    return float(np.mean(dcg[ok] / idcg[ok])) if ok.any() else float("nan")


def ranker_config(rcfg: RankingConfig, x: np.ndarray) -> RankerConfig:
    """The model config for training features ``x`` (N, F): shape, scaling, ablations."""
    unknown = sorted(set(rcfg.disabled_features) - set(FEATURE_NAMES))
    if unknown:
        raise RankerInputError(
            f"ranking.disabled_features: unknown {unknown}; see ranking/features.py"
        )
    return RankerConfig(
        feature_names=list(FEATURE_NAMES),
        feature_mean=x.mean(0).astype(float).tolist(),
        feature_std=x.std(0).astype(float).tolist(),
        architecture=rcfg.architecture, cross_layers=rcfg.cross_layers, deep_dim=rcfg.deep_dim,
        experts=rcfg.experts, expert_dim=rcfg.expert_dim, tower_dim=rcfg.tower_dim,
        dropout=rcfg.dropout, disabled_features=list(rcfg.disabled_features),
    )  # fmt: skip


def fit_ranker(
    pairs: Pairs, rcfg: RankingConfig, on_epoch: Any = None
) -> tuple[RankerModel, list[dict[str, float]], int]:
    """Train on ``pairs``; early stopping on played-NDCG@20 of a tenth of the users.

    Returns (the model at its best epoch, per-epoch logs, the best epoch).
    """
    torch.manual_seed(rcfg.seed)
    users = np.unique(pairs.user_id)
    held = users[sample_users(users, max(1, len(users) // 10))] if len(users) > 1 else users[:0]
    is_val = np.isin(pairs.user_id, held)
    tr, va = pairs.take(np.flatnonzero(~is_val)), pairs.take(np.flatnonzero(is_val))
    model = RankerModel(ranker_config(rcfg, tr.x))
    opt = torch.optim.Adam(
        model.parameters(), lr=rcfg.learning_rate, weight_decay=rcfg.weight_decay
    )
    x, y = torch.from_numpy(tr.x), _labels(tr, watch_weights(tr, rcfg))
    hw = rcfg.head_weights
    rng = np.random.default_rng(rcfg.seed)
    logs: list[dict[str, float]] = []
    best, best_epoch, best_state, bad = -np.inf, 1, None, 0
    for epoch in range(1, rcfg.epochs + 1):
        model.train()
        perm = torch.from_numpy(rng.permutation(len(tr.x)))
        totals = dict.fromkeys(HEADS, 0.0)
        for lo in range(0, len(perm), rcfg.batch_size):
            b = perm[lo : lo + rcfg.batch_size]
            yb = Labels(*(getattr(y, f.name)[b] for f in dataclasses.fields(Labels)))
            losses = head_losses(model(x[b]), yb)
            loss = sum(hw[h] * losses[h] for h in HEADS)
            opt.zero_grad()
            loss.backward()
            opt.step()
            for h in HEADS:
                totals[h] += float(losses[h].detach()) * len(b) / len(perm)
        val = (
            grouped_ndcg(score_pairs(model, va.x, rcfg), va.labels["played"], va.user_id)
            if len(va.x) else float("nan")
        )  # fmt: skip
        log = {"epoch": epoch, **{f"loss_{h}": v for h, v in totals.items()}, "val_ndcg20": val}
        logs.append(log)
        if on_epoch is not None:
            on_epoch(log)
        if not np.isfinite(val):
            continue
        if val > best:
            best, best_epoch, bad = val, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= rcfg.early_stopping_patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval(), logs, best_epoch


def score_pairs(model: RankerModel, x: np.ndarray, rcfg: RankingConfig) -> np.ndarray:
    """(N,) final scores of (N, F) features (``ranking.score_weights``)."""
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(x)).numpy()
    return combine(logits, rcfg.score_weights)


class RankedLists(Recommender):
    """Precomputed candidate lists behind the harness's interface: each user's candidates
    ordered by a score, every other video below them. ``name`` is the report's label."""

    name: ClassVar[str] = "Funnel"

    def __init__(
        self, label: str, user_id: np.ndarray, video_id: np.ndarray, score: np.ndarray
    ) -> None:
        super().__init__()
        self.label, self.user_id, self.video_id, self.score = label, user_id, video_id, score

    def fit(self, train: Interactions) -> Self:
        self.train_ = train
        rows, cols = train.user_rows(self.user_id), train.item_cols(self.video_id)
        ok = (rows >= 0) & (cols >= 0)
        # Rank within the user's list, as a positive number: order, never magnitudes.
        order = np.lexsort((-self.score[ok], rows[ok]))
        r, c = rows[ok][order], cols[ok][order]
        start = np.r_[0, np.flatnonzero(r[1:] != r[:-1]) + 1]
        pos = np.arange(len(r)) - np.repeat(start, np.diff(np.r_[start, len(r)]))
        self.matrix_ = sp.csr_matrix(
            (1e6 - pos.astype(np.float64), (r, c)), shape=(train.n_users, train.n_items)
        )
        return self

    def scores(self, user_rows: np.ndarray) -> np.ndarray:
        s = self.matrix_[np.asarray(user_rows, np.int64)].toarray().astype(np.float32)
        s[s == 0] = -1.0  # not a candidate: below every candidate
        return s

    def params(self) -> dict[str, Any]:
        return {"label": self.label}


def restrict(split: EvalSplit, user_ids: np.ndarray) -> EvalSplit:
    """``split`` with its hold-out cut to the users in ``user_ids``."""
    keep = np.isin(split.train.user_ids[split.test.rows], user_ids)
    t = split.test
    held = HeldOut(
        t.rows[keep], t.relevant[np.flatnonzero(keep)], t.n_relevant[keep], t.serve_ts[keep]
    )
    return EvalSplit(split.train, held, split.items, split.protocol, split.stats)


def evaluate_funnel(
    split: EvalSplit, pairs: Pairs, scores: dict[str, np.ndarray]
) -> dict[str, dict[str, Any]]:
    """Harness metrics of each named ordering of the evaluation ``pairs`` (and of
    ``Retrieval`` alone, the retrieval rank), on the split's users the pairs hold."""
    from videorec.evaluation.harness import evaluate_fitted

    sub = restrict(split, np.unique(pairs.user_id))
    out = {}
    for label, s in {"Retrieval": -pairs.rank.astype(np.float64), **scores}.items():
        rec = RankedLists(label, pairs.user_id, pairs.video_id, s).fit(split.train)
        m, _ = evaluate_fitted(rec, sub, beyond=False)
        out[label] = {
            k: m[k] for k in ("recall@20", "ndcg@20", "recall@100", "ndcg@100", "users") if k in m
        }
    return out


def ranker_version(cfg: Config, date: str, examples_version: str) -> str:
    """``<date>_<digest>`` of the ranking config, the examples and the code."""
    return f"{date}_" + config_digest(
        {
            "ranking": cfg.ranking.model_dump(mode="json"),
            "examples": examples_version,
            "code": source_digest("videorec.ranking"),
        }
    )


def save_ranker(out: Path, model: RankerModel, extra: dict[str, Any]) -> None:
    """The torch checkpoint (state dict + its config, nanoGPT-style) and the runtime's npz."""
    torch.save({"ranker_config": model.cfg.to_dict(), "state_dict": model.state_dict(), **extra},
               out / names.RANKER_CHECKPOINT_FILE)  # fmt: skip
    save_runtime(out / names.RANKER_WEIGHTS_FILE, export_weights(model), model.cfg.to_dict())


def load_ranker(path: str | Path) -> tuple[RankerModel, dict[str, Any]]:
    """The model of a ``ranker.pt`` and the checkpoint's metadata."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = RankerModel(RankerConfig.from_dict(ck["ranker_config"]))
    model.load_state_dict(ck["state_dict"])
    return model.eval(), {k: v for k, v in ck.items() if k != "state_dict"}


def train_ranker(
    cfg: Config,
    *,
    examples_version: str,
    store: ArtifactStore | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Train the ranker on ``examples_version``, evaluate the funnel, write the version.

    Returns {"version", "uri", "skipped", "examples_version", "features_version",
    "model_version", "best_epoch", "epochs", "evaluation" ({"Retrieval": metrics,
    "Funnel": metrics}), "mlflow": {"run_id"}}. Raises RankerInputError for an
    unknown examples version or unknown disabled features.
    """
    import mlflow

    from videorec.evaluation.interactions import split_from_features
    from videorec.training.registry import start_run

    say = log or (lambda _m: None)
    store = store or open_store(cfg)
    try:
        eman = store.read_manifest(names.RANKING_EXAMPLES, examples_version)
    except VersionNotFoundError:
        raise RankerInputError(f"ranking examples {examples_version!r} do not exist") from None
    version = ranker_version(cfg, eman["date"], examples_version)
    if store.exists(names.RANKER, version):
        return _reused(store, version)
    edir = store.local_path(names.RANKING_EXAMPLES, examples_version)
    train_pairs, eval_pairs = (
        Pairs.read(edir / TRAIN_PAIRS_FILE),
        Pairs.read(edir / EVAL_PAIRS_FILE),
    )
    fman = store.read_manifest(names.FEATURES, eman["features_version"])
    split = split_from_features(
        store.local_path(names.FEATURES, eman["features_version"]),
        data=fman["data"],
        resolve=store.local_path,
    )
    rcfg = cfg.ranking
    say(
        f"ranker {version}: {len(train_pairs.x):,} training pairs, {len(eval_pairs.x):,} evaluation pairs"
    )
    with start_run(cfg, f"ranker {eman['date']}", {"examples_version": examples_version,
                                                     "ranker_version": version}) as run:  # fmt: skip
        mlflow.log_params({f"ranking.{k}": v for k, v in rcfg.model_dump(mode="json").items()})
        mlflow.log_params(
            {"examples_version": examples_version, "model_version": eman["model_version"]}
        )

        def on_epoch(e: dict[str, float]) -> None:
            mlflow.log_metrics(
                {k: v for k, v in e.items() if k != "epoch" and np.isfinite(v)},
                step=int(e["epoch"]),
            )
            say(f"epoch {e['epoch']}: val played-NDCG@20 {e['val_ndcg20']:.4f}")

        model, logs, best_epoch = fit_ranker(train_pairs, rcfg, on_epoch)
        evaluation = evaluate_funnel(
            split, eval_pairs, {"Funnel": score_pairs(model, eval_pairs.x, rcfg)}
        )
        for label, m in evaluation.items():
            mlflow.log_metrics(
                {
                    f"eval_{label}_{k.replace('@', '_at_')}": float(v)
                    for k, v in m.items()
                    if v is not None
                }
            )
        say(f"funnel {evaluation['Funnel']} | retrieval alone {evaluation['Retrieval']}")
        summary = {
            "version": version, "skipped": False, "examples_version": examples_version,
            "features_version": eman["features_version"], "model_version": eman["model_version"],
            "best_epoch": best_epoch, "epochs": logs, "evaluation": evaluation,
            "mlflow": {"run_id": run.info.run_id},
        }  # fmt: skip
        meta = {"date": eman["date"], "config_digest": cfg.digest(), "mlflow_run_id": run.info.run_id,
                "examples_version": examples_version, "features_version": eman["features_version"],
                "model_version": eman["model_version"], "score_weights": rcfg.score_weights}  # fmt: skip
        try:
            with store.write_version(names.RANKER, version, meta) as out:
                save_ranker(out, model, {"ranking_config": rcfg.model_dump(mode="json"),
                                         "examples_version": examples_version})  # fmt: skip
                # Serving reads the co-visitation table the evaluation used, from here.
                shutil.copyfile(edir / names.NEIGHBOURS_FILE, out / names.NEIGHBOURS_FILE)
                (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
                mlflow.log_artifact(str(out / names.RANKER_CHECKPOINT_FILE), "ranker")
                mlflow.log_artifact(str(out / names.RANKER_WEIGHTS_FILE), "ranker")
        except VersionExistsError:
            mlflow.set_tags({"superseded_by": version})
            return _reused(store, version)
    return {**summary, "uri": store.files_uri(names.RANKER, version)}


def _reused(store: ArtifactStore, version: str) -> dict[str, Any]:
    summary = json.loads(store.read_bytes(names.RANKER, version, "summary.json"))
    return {**summary, "uri": store.files_uri(names.RANKER, version), "skipped": True}


def runtime_of(store: ArtifactStore, version: str) -> RankerRuntime:
    """The numpy runtime of a committed ranker version."""
    return RankerRuntime.load(store.local_path(names.RANKER, version) / names.RANKER_WEIGHTS_FILE)
