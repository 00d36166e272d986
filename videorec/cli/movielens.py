"""`videorec import-movielens`: MovieLens as a data set."""

from __future__ import annotations

import argparse
from typing import Any

from videorec.cli.common import print_counts
from videorec.config import Config


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this command's parser to ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser(
        "import-movielens", parents=[common], help="import MovieLens (ml-latest or ml-100k)"
    )
    p.add_argument("path", help="folder with ratings.csv/movies.csv or u.data/u.item")
    p.add_argument("--out", required=True, help="data set directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing data set")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    from videorec.datagen.movielens import import_movielens

    summary = import_movielens(
        args.path, args.out, config_digest=cfg.digest(), overwrite=args.overwrite
    )
    if not args.json:
        print_counts(summary)
    return summary, 0
