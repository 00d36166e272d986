"""`videorec fresh-videos`: the hourly new-videos path, by hand (the DAG runs it hourly)."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from videorec.cli.common import console, parse_timestamp
from videorec.config import Config


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this command's parser to ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser(
        "fresh-videos",
        parents=[common],
        help="embed the videos published since the active index's model, publish them as "
        "the delta index and the new-videos Redis generation",
    )
    p.add_argument("--index", help="main index version to extend (default: the active one)")
    p.add_argument("--data", help="data set directory (default: the model's data set)")
    p.add_argument("--at", type=parse_timestamp, help="the logical time (default: now, UTC)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    from videorec.artifacts import open_store
    from videorec.indexing.delta import build_delta, collect_delta_garbage, publish_delta
    from videorec.indexing.slots import active_version
    from videorec.precompute.new_videos import publish_new_videos
    from videorec.precompute.publish import PrecomputeError

    store = open_store(cfg)
    # The defaults are CLI conveniences; the stages are given explicit versions and time.
    at = args.at or dt.datetime.now(dt.UTC)
    index = args.index or active_version(store)[0]
    if index is None:
        raise ValueError("no index is published yet (videorec index publish), and no --index")
    delta = build_delta(cfg, index_version=index, logical_time=at, data=args.data, store=store)
    pointer = publish_delta(store, delta["version"])
    try:
        redis_res = publish_new_videos(
            cfg, delta_version=delta["version"], logical_time=at, store=store
        )
    except PrecomputeError as err:
        if not args.json:
            console().print(f"[red]new-videos generation failed[/red]: {err}")
        return {"ok": False, "delta": delta, "error": "redis", "message": str(err)}, 1
    gone = collect_delta_garbage(store, logical_time=at, keep_s=cfg.fresh_videos.keep_versions_s)
    res = {"delta": delta, "pointer": pointer, "redis": redis_res, "deleted": gone}
    if not args.json:
        c = console()
        c.print(f"delta {delta['version']}: {delta['videos']:,} new videos beside index {index}")
        c.print(f"  pointer: {'published' if pointer['published'] else 'unchanged'} "
                f"(live: {pointer['version']})")  # fmt: skip
        c.print(f"  redis generation {redis_res['generation']}: "
                f"published={redis_res['published']} {redis_res.get('reason') or ''}")  # fmt: skip
        if gone:
            c.print(f"  deleted {len(gone)} old delta versions")
    return res, 0
