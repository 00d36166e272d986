"""Benchmark: cold-item quality of the two-tower (id dropout vs the id-only model).

    .venv/bin/python bench/cold_items.py --profile movielens --features VERSION --mode random
    .venv/bin/python bench/cold_items.py --features VERSION --mode recent --days 1 --epochs 1

Holds out a cold set of videos entirely (``--mode random``: a seeded ``--share`` of
the rated videos, for MovieLens; ``--mode recent``: the videos published in the last
``--days`` before the window's end, for the synthetic platform), trains the two-tower
twice on what remains (the config's id/channel dropout, then both at 0) for a fixed
``--epochs``, and ranks only the cold videos for every user with a held-out play of
one. The protocol lives in ``videorec.training.coldstart``; this file only parses
arguments, prints a markdown table and writes the JSON (``--out``).

Without ``--features``, the features version for ``--data``/``--date`` is built or
reused exactly as ``videorec train`` does (Spark).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import bench_host

ROWS: tuple[tuple[str, str], ...] = (
    (
        "two_tower_dropout_content",
        "(1) content path: id-dropout model, cold videos in content mode",
    ),
    ("two_tower_no_dropout_id", "(2) id-only model (no dropout), untrained hashed id + content"),
    ("two_tower_no_dropout_content", "(3) no-dropout model in content mode"),
    ("popular_in_category", "(4) popular-in-category"),
    ("random", "(5) random (mean of seeds)"),
    ("random_expected", "(5') random, exact expectation"),
    ("two_tower_dropout_id", "(extra) id-dropout model, untrained hashed id + content"),
)


def markdown(result: dict[str, Any]) -> str:
    """The result's rows as a markdown table (Recall@K and NDCG@K for each K)."""
    ks = result["protocol"]["ks"]
    cols = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
    head = "| row | " + " | ".join(
        c.replace("recall", "Recall").replace("ndcg", "NDCG") for c in cols
    )
    lines = [head + " |", "|---" * (len(cols) + 1) + "|"]
    for key, label in ROWS:
        m = result["rows"].get(key)
        if m is not None:
            lines.append(f"| {label} | " + " | ".join(f"{m[c]:.4f}" for c in cols) + " |")
    s = result["stats"]
    lines.append("")
    lines.append(
        f"Cold catalogue {s['cold_catalogue']:,} videos ({s['cold_videos_played']:,} with a "
        f"held-out play), {s['evaluated_users']:,} users evaluated "
        f"({s['evaluated_pairs']:,} user-video pairs), {s['users_without_history']:,} users "
        f"with cold plays but no training history left out; training examples "
        f"{s['examples_without_cold']:,} of {s['examples_all']:,}."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from videorec.config import load_config
    from videorec.training.coldstart import run_cold_items

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="config file (default: the profile's conf/<profile>.yaml)")
    ap.add_argument("--profile", help="profile name under conf/ (default: local)")
    ap.add_argument("--features", help="features version (default: build or reuse for --data)")
    ap.add_argument("--data", help="data set directory (default: the config's data.dir)")
    ap.add_argument("--date", type=dt.date.fromisoformat, help="logical date (default: as of)")
    ap.add_argument("--mode", choices=("random", "recent"), required=True)
    ap.add_argument("--share", type=float, default=0.1, help="random: share of rated videos")
    ap.add_argument("--days", type=float, default=1.0, help="recent: days before the end")
    ap.add_argument("--epochs", type=int, default=5, help="fixed epoch count, dropout model")
    ap.add_argument("--epochs-no-dropout", type=int, help="the no-dropout model's (default: same)")
    ap.add_argument("--seed", type=int, default=42, help="cold draw, tie-breaks, random rows")
    ap.add_argument("--random-seeds", type=int, default=5)
    ap.add_argument("--ks", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--out", type=Path, help="write the JSON result here")
    args = ap.parse_args(argv)

    cfg = load_config(args.config, args.profile)
    version = args.features
    if version is None:
        from videorec.dataset import read_manifest
        from videorec.features.job import build_features
        from videorec.training.train import default_date

        data = args.data or cfg.resolve_location(cfg.data.dir)
        date = args.date or default_date(read_manifest(data))
        version = build_features(cfg, data, date)["version"]

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    load_before = bench_host.load_average()
    result = run_cold_items(
        cfg, features_version=version, mode=args.mode, share=args.share, days=args.days,
        epochs=args.epochs, epochs_no_dropout=args.epochs_no_dropout, seed=args.seed,
        ks=tuple(args.ks), random_seeds=args.random_seeds, log=say,
    )  # fmt: skip
    result["run"] = {
        "started_utc": started,
        **bench_host.header(load_before),
        "profile": cfg.profile,
        "argv": sys.argv,
    }
    print(markdown(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, sort_keys=True))
        say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
