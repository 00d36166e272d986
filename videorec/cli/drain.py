"""`videorec drain-events`: the serving tier's event stream into the event log."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from videorec.cli.common import console, parse_timestamp
from videorec.config import Config


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this command's parser to ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser(
        "drain-events",
        parents=[common],
        help="drain the Redis event stream (impressions, clicks, feedback) into the event log",
    )
    p.add_argument("--data", help="the event log's data set directory (default: data.dir)")
    p.add_argument("--batch-size", type=int, help="stream entries per file (default 50,000)")
    p.add_argument(
        "--at", type=parse_timestamp, help="the logical time recorded (default: now, UTC)"
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    import redis as redis_lib

    from videorec.streaming import drain_events
    from videorec.streaming.drain import DrainBusy, LeaseLost

    data = args.data or cfg.resolve_location(cfg.data.dir)
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    # The logical time is only recorded by the stage; the wall clock is a CLI convenience.
    at = args.at or dt.datetime.now(dt.UTC)
    try:
        res = drain_events(cfg, data, at, batch_size=args.batch_size)
    except (redis_lib.exceptions.RedisError, OSError) as err:
        if not args.json:
            console().print(f"[red]drain failed[/red]: Redis is unreachable: {err}")
        return {"ok": False, "error": "redis_unreachable", "message": str(err)}, 1
    except (DrainBusy, LeaseLost) as err:  # another drain runs (or took over): not an error
        kind = "drain_busy" if isinstance(err, DrainBusy) else "lease_lost"  # of the input
        if not args.json:
            console().print(f"[yellow]drain stopped[/yellow]: {err}")
        return {"ok": False, "error": kind, "message": str(err)}, 1
    if not args.json:
        c = console()
        c.print(f"drained {res['read']:,} entries of {res['stream']} into {data}")
        for day, n in res["written"].items():
            c.print(f"  dt={day}: {n:,} rows")
        if res["quarantined"]:
            c.print(f"  quarantined: {res['quarantined']}")
        c.print(f"  acknowledged {res['acked']:,}; pending {res['pending']}, lag {res['lag']}")
    return res, 0
