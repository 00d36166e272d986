"""The stage-2 funnel's quality: retrieval alone against the ranker's variants, one run.

For a (features, two-tower model) pair of versions, builds the ranking examples once
(the stage's own function), then trains one ranker per variant with the stage's own
training function and judges each funnel with the harness on the features version's
hold-out (:func:`videorec.ranking.train.evaluate_funnel`: Recall@20, NDCG@20 on the
same users). Variants: the configured ranker (watch-time objective), the click-only
objective, and the ablations (each head, the sequence features, the co-visitation
features, a shared bottom instead of MMoE).

On a synthetic data set (``ground_truth/`` present), each list's top 20 is also judged
by the generator's oracle (:mod:`videorec.datagen.truth`): the ground-truth expected
watch time of the 20 videos shown at positions 0-19 (examination × P(click) × E[watch
time | play], a video the user played before the list's time counted as a rewatch),
summed per user and averaged over the hold-out users.

Usage::

    .venv/bin/python bench/ranking_funnel.py --profile movielens \\
        --features 2018-09-25_f8ec3c80ccc9 --model 2018-09-25_b0327300a65a --out var/bench/f.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import bench_host
import numpy as np

from videorec import artifact_names as names
from videorec.artifacts import open_store
from videorec.config import Config, load_config
from videorec.ranking.examples import (
    EVAL_PAIRS_FILE,
    TRAIN_PAIRS_FILE,
    build_ranking_examples,
    outcome_labels,
    window_events,
)
from videorec.ranking.features import KNN_FEATURES, SEQUENCE_FEATURES
from videorec.ranking.train import Pairs, evaluate_funnel, fit_ranker, score_pairs

ZERO = {"watch": 0.0, "like": 0.0, "dislike": 0.0, "skip": 0.0}


def variants(cfg: Config, ablations: bool) -> dict[str, dict[str, Any]]:
    """Label -> ranking-config overrides."""
    hw, sw = cfg.ranking.head_weights, cfg.ranking.score_weights
    out: dict[str, dict[str, Any]] = {
        "Funnel (watch-time objective)": {},
        "Funnel (click-only objective)": {
            "objective": "click",
            "score_weights": {**ZERO, "watch": 1.0},
        },
    }
    if ablations:
        for h in ("watch", "like", "dislike", "skip"):
            out[f"without the {h} head"] = {
                "head_weights": {**hw, h: 0.0},
                "score_weights": {**sw, h: 0.0},
            }
        out["without the sequence features"] = {"disabled_features": list(SEQUENCE_FEATURES)}
        out["without the co-visitation features"] = {"disabled_features": list(KNN_FEATURES)}
        out["shared bottom instead of MMoE"] = {"architecture": "shared_bottom"}
    return out


def top20(pairs: Pairs, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(users (U,), videos (U, 20) -1 padded) of each user's top 20 by ``score``."""
    order = np.lexsort((-score, pairs.user_id))
    u = pairs.user_id[order]
    start = np.r_[0, np.flatnonzero(u[1:] != u[:-1]) + 1]
    pos = np.arange(len(u)) - np.repeat(start, np.diff(np.r_[start, len(u)]))
    users = u[start]
    vids = np.full((len(users), 20), -1, np.int64)
    grp = np.repeat(np.arange(len(start)), np.diff(np.r_[start, len(u)]))
    keep = pos < 20
    vids[grp[keep], pos[keep]] = pairs.video_id[order][keep]
    return users, vids


def truth_watch(
    truth: Any, log: Any, users: np.ndarray, vids: np.ndarray, t_us: np.ndarray
) -> float:
    """Mean over users of the oracle's expected watch time (s) of their top 20."""
    before = outcome_labels(
        log, users, np.full(len(users), np.iinfo(np.int64).min // 2), t_us, vids
    )
    ok = vids >= 0
    uu = np.broadcast_to(users[:, None], vids.shape)[ok]
    pos = np.broadcast_to(np.arange(20), vids.shape)[ok]
    tt = np.broadcast_to(t_us[:, None], vids.shape)[ok]
    watched = before["played"][ok] > 0
    ew = np.zeros(vids.shape)
    ew[ok] = truth.expected_watch_s(uu, vids[ok], pos, tt, watched=watched)
    return float(ew.sum(1).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", help="a conf/ profile (or --config FILE)")
    ap.add_argument("--config", type=Path, help="a config file")
    ap.add_argument("--features", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--epochs", type=int, default=None, help="override ranking.epochs")
    args = ap.parse_args(argv)
    load_before = bench_host.load_average()
    cfg = load_config(path=args.config, profile=args.profile)
    if args.epochs:
        cfg = cfg.model_copy(
            update={"ranking": cfg.ranking.model_copy(update={"epochs": args.epochs})}
        )
    store = open_store(cfg)
    t0 = time.perf_counter()
    ex = build_ranking_examples(
        cfg, features_version=args.features, model_version=args.model, log=print
    )
    edir = store.local_path(names.RANKING_EXAMPLES, ex["version"])
    train_pairs, eval_pairs = (
        Pairs.read(edir / TRAIN_PAIRS_FILE),
        Pairs.read(edir / EVAL_PAIRS_FILE),
    )
    import pyarrow.parquet as pq

    eval_ts = pq.read_table(edir / EVAL_PAIRS_FILE, columns=["ts_us"])["ts_us"].to_numpy()
    fman = store.read_manifest(names.FEATURES, args.features)
    from videorec.evaluation.interactions import split_from_features

    split = split_from_features(store.local_path(names.FEATURES, args.features), data=fman["data"])
    truth = log = None
    if (Path(fman["data"]) / "ground_truth").exists():
        from videorec.datagen.truth import load_truth

        truth, log = load_truth(fman["data"]), window_events(cfg, fman["data"], fman)
    rows: dict[str, Any] = {}
    scores = {"Retrieval alone": -eval_pairs.rank.astype(np.float64)}
    for label, over in variants(cfg, not args.no_ablations).items():
        rcfg = cfg.ranking.model_copy(update=over)
        t = time.perf_counter()
        model, _, best = fit_ranker(train_pairs, rcfg)
        scores[label] = score_pairs(model, eval_pairs.x, rcfg)
        rows[label] = {"best_epoch": best, "seconds": round(time.perf_counter() - t, 1)}
        print(f"{label}: best epoch {best}, {rows[label]['seconds']} s", flush=True)
    metrics = evaluate_funnel(
        split, eval_pairs, {k: v for k, v in scores.items() if k != "Retrieval alone"}
    )
    metrics["Retrieval alone"] = metrics.pop("Retrieval")
    for label, s in scores.items():
        r = rows.setdefault(label, {})
        r.update({k: metrics[label][k] for k in ("recall@20", "ndcg@20", "users")})
        if truth is not None:
            users, vids = top20(eval_pairs, s)
            t_of = dict(zip(eval_pairs.user_id.tolist(), eval_ts.tolist(), strict=True))
            at = np.array([t_of[u] for u in users.tolist()], np.int64)
            r["truth_watch_s_top20"] = truth_watch(truth, log, users, vids, at)
        print(label, r, flush=True)
    report = {
        "profile": args.profile, "features_version": args.features, "model_version": args.model,
        "examples": {k: v for k, v in ex.items() if k != "feature_names"},
        **bench_host.header(load_before), "device": "CPU only", "seconds": round(time.perf_counter() - t0, 1),
        "rows": rows,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
