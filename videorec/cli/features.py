"""`videorec features [build|gc]`: the Spark feature stage for a logical date, and the
retention of its old versions."""

from __future__ import annotations

import argparse
from typing import Any

from videorec.cli.common import (
    console,
    parse_date,
    print_collection,
    print_validation,
    print_warnings,
)
from videorec.config import Config


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this command's parser to ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser(
        "features",
        parents=[common],
        help="Spark feature stage for a logical date (build), or delete old versions (gc)",
    )
    p.add_argument("action", nargs="?", choices=["build", "gc"], default="build")
    p.add_argument(
        "--date",
        required=True,
        type=parse_date,
        help="logical date: the window ends here (exclusive); gc: keep what it reads",
    )
    p.add_argument("--data", help="build: data set directory (default: the config's data.dir)")
    p.add_argument(
        "--keep-days",
        type=int,
        help="gc: dates kept whole (default: the config's artifacts.keep_features_days)",
    )
    p.add_argument("--dry-run", action="store_true", help="gc: say what would go, delete nothing")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    if args.action == "gc":
        return collect(args, cfg)
    from videorec.features.job import build_features

    data = args.data or cfg.resolve_location(cfg.data.dir)
    result = build_features(cfg, data, args.date)
    print_warnings(result.get("warnings") or result["report"].get("warnings") or [])
    if not args.json:
        c = console()
        rep = result["report"]
        state = "already built (no-op)" if result["skipped"] else f"built in {rep.get('seconds')} s"
        c.print(f"features {result['version']}: {state}\n  at {result['uri']}")
        print_validation(
            rep["validation"],
            f"contract validation, window {rep['window']['start']} .. {rep['window']['end']}",
        )
        split = rep["split"]
        c.print(
            f"split ({split['mode']}): train {split.get('train', {}).get('plays', 0):,} plays, "
            f"hold-out {split.get('eval', {}).get('plays', 0):,} plays"
        )
        c.print("outputs: " + ", ".join(f"{k}={v:,}" for k, v in rep["outputs"].items()))
        cov = rep["coverage"]
        c.print(
            f"coverage: {cov['users_with_events']:,} of {cov['users_in_table']:,} users, "
            f"{cov['videos_with_events']:,} of {cov['videos_in_catalogue']:,} videos"
        )
        gone = result.get("collected") or {}
        if "error" in gone:
            c.print(f"[yellow]{gone['error']}[/yellow]")
        elif any(gone.values()):
            c.print(
                "deleted old day caches: " + ", ".join(f"{k} {len(v)}" for k, v in gone.items())
            )
    return result, 0


def collect(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    """`videorec features gc`: features versions and histories nothing live reads."""
    from videorec.artifacts import open_store
    from videorec.features.retention import collect_features

    res = collect_features(
        open_store(cfg), cfg, args.date, keep_days=args.keep_days, dry_run=args.dry_run
    )
    if not args.json:
        print_collection(res)
    return res, 0
