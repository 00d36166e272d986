"""`videorec precompute run|trending|status`: Redis generations and the fresh lists."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from videorec.cli.common import console, parse_timestamp
from videorec.config import Config


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this command's parser to ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser(
        "precompute",
        parents=[common],
        help="Redis precompute: run | trending (the 15-minute lists) | status",
    )
    p.add_argument("action", choices=["run", "trending", "status"])
    p.add_argument("--index", help="run: index version (default: the active one)")
    p.add_argument(
        "--at",
        type=parse_timestamp,
        help="run, trending: the logical time (ISO-8601; UTC if no zone)",
    )
    p.add_argument("--features", help="run: features version (default: the model's)")
    p.add_argument(
        "--data",
        help="run: data set directory (default: the features version's); trending: the "
        "event log (default: data.dir)",
    )
    p.add_argument(
        "--engine", choices=["local", "spark"], help="run: precompute.engine (default: config's)"
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    import redis as redis_lib

    from videorec.precompute import precompute, status
    from videorec.precompute.run import connect

    c = None if args.json else console()
    if args.action == "status":
        client, how = connect(cfg)
        try:
            # The age is shown against the wall clock: an on-call display, not a computation.
            res = status(cfg, client, at=args.at or dt.datetime.now(dt.UTC))
        except (redis_lib.exceptions.RedisError, OSError) as err:
            message = f"Redis ({how}) is unreachable: {err}"
            if c is not None:
                c.print(f"[red]status failed[/red]: {message}")
            return {"ok": False, "error": "redis_unreachable", "message": message}, 1
        if c is not None:
            meta = res["meta"] or {}
            c.print(f"active generation: {res['active']} (previous: {res['previous']})")
            c.print(
                f"  built for {meta.get('built_at')}, age {res['age_s']} s, expires in "
                f"{res['expires_in_s']} s; model {meta.get('model_version')}, index "
                f"{meta.get('index_version')}, features {meta.get('features_version')}"
            )
            c.print(f"  counts: {meta.get('counts')}")
        return res, 0
    if args.at is None:
        raise ValueError(
            f"precompute {args.action} needs --at: the logical time the generation is for"
        )
    if args.action == "trending":
        return _trending(args, cfg, c)
    index_version = args.index
    if index_version is None:  # a CLI convenience only: the stage takes it explicitly
        from videorec.artifacts import open_store
        from videorec.indexing.slots import active_version

        index_version = active_version(open_store(cfg))[0]
        if index_version is None:
            raise ValueError("no active index: publish one, or name it with --index")
    engine = args.engine or cfg.precompute.engine
    spark = None
    if engine == "spark":  # base recommendations from the executors of the config's master
        from videorec.features.session import spark_session

        spark = spark_session(cfg, "videorec-precompute")
    return _published(
        c, "generation", lambda: precompute(
            cfg, index_version=index_version, logical_time=args.at,
            features_version=args.features, data_dir=args.data, spark=spark,
            log=c.print if c else None,
        ),
    )  # fmt: skip


def _trending(args: argparse.Namespace, cfg: Config, c: Any) -> tuple[dict[str, Any], int]:
    """The 15-minute fresh lists for ``--at``."""
    from videorec.precompute.fresh import refresh_trending

    return _published(
        c, "fresh lists",
        lambda: refresh_trending(cfg, logical_time=args.at, data=args.data,
                                 log=c.print if c else None),
    )  # fmt: skip


def _published(c: Any, what: str, run: Any) -> tuple[dict[str, Any], int]:
    """Run a publishing stage; bad input propagates (exit 2), a failed run is exit 1."""
    from videorec.precompute import PrecomputeError, PrecomputeInputError

    try:
        res = run()
    except PrecomputeInputError:
        raise
    except PrecomputeError as err:
        if c is not None:
            c.print(f"[red]{what} failed[/red]: {err}")
        return {"ok": False, "error": "precompute_failed", "message": str(err)}, 1
    if c is not None:
        state = "published" if res.get("published") else f"not published ({res.get('reason')})"
        c.print(f"{what} {res['generation']}: {state}")
    return res, 0
