"""`videorec models gc`: delete the two-tower, ranker and ranking-examples versions
nothing live reads (training/retention.py, ranking/retention.py)."""

from __future__ import annotations

import argparse
from typing import Any

from videorec.cli.common import parse_date, print_collection
from videorec.config import Config


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this command's parser to ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser(
        "models",
        parents=[common],
        help="gc: delete the model, ranker and ranking-examples versions nothing live reads",
    )
    p.add_argument("action", choices=["gc"])
    p.add_argument(
        "--date", required=True, type=parse_date, help="logical date: keep what it reads"
    )
    p.add_argument(
        "--keep-days",
        type=int,
        help="dates kept whole (default: the config's artifacts.keep_model_days)",
    )
    p.add_argument("--dry-run", action="store_true", help="say what would go, delete nothing")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    from videorec.artifacts import open_store
    from videorec.ranking.retention import collect_rankers
    from videorec.training.retention import collect_models

    store = open_store(cfg)
    kw = {"keep_days": args.keep_days, "dry_run": args.dry_run}
    # The two-tower models first, as the retrain DAG does; each collector checks
    # --keep-days before it deletes anything.
    res = {
        "models": collect_models(store, cfg, args.date, **kw),
        "rankers": collect_rankers(store, cfg, args.date, **kw),
    }
    if not args.json:
        for part in res.values():
            print_collection(part)
    return res, 0
