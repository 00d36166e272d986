"""`videorec generate`: a synthetic video platform."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from videorec.cli.common import parse_date, print_counts
from videorec.config import Config


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this command's parser to ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser("generate", parents=[common], help="generate a synthetic video platform")
    p.add_argument("--users", type=int)
    p.add_argument("--videos", type=int)
    p.add_argument("--days", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--end-date", type=parse_date, help="exclusive end of the window, YYYY-MM-DD (UTC)"
    )
    p.add_argument(
        "--corrupt", type=float, help="share of deliberately malformed events, e.g. 0.01"
    )
    p.add_argument("--out", help="data set directory to write (default: the config's data.dir)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing data set")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    from videorec.datagen.synthetic import GeneratorParams, generate

    g = cfg.generate
    params = GeneratorParams(
        users=args.users if args.users is not None else g.users,
        videos=args.videos if args.videos is not None else g.videos,
        days=args.days if args.days is not None else g.days,
        seed=args.seed if args.seed is not None else g.seed,
        end_date=args.end_date or g.end_date,
        corrupt=args.corrupt if args.corrupt is not None else g.corrupt,
    )
    out = Path(args.out) if args.out else cfg.resolve_path(cfg.data.dir)
    summary = generate(
        params, out, config_digest=cfg.digest(), overwrite=args.overwrite, progress=not args.json
    )
    if not args.json:
        print_counts(summary)
    return summary, 0
