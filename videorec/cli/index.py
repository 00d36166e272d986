"""`videorec index build|publish|rollback|status`: the FAISS index and its slots."""

from __future__ import annotations

import argparse
import json
from typing import Any

from videorec.cli.common import console
from videorec.config import Config


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this command's parser to ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser(
        "index", parents=[common], help="FAISS index: build | publish | rollback | status"
    )
    p.add_argument("action", choices=["build", "publish", "rollback", "status"])
    p.add_argument("--model", help="build: two-tower model version (default: the latest)")
    p.add_argument("--version", help="publish: index version (default: the standby slot's)")
    p.add_argument(
        "--force", action="store_true",
        help="publish: the version rolled back from too (undoes the rollback)",
    )  # fmt: skip
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    from videorec.artifact_names import MODEL
    from videorec.artifacts import open_store
    from videorec.indexing import slots
    from videorec.indexing.build import IndexGateError, build_index

    store = open_store(cfg)
    c = None if args.json else console()
    if args.action == "build":
        model = args.model or store.latest_version(MODEL)  # a CLI convenience only
        if model is None:
            raise ValueError(f"{store.uri(MODEL)}: no model version to index; train one first")
        try:
            res = build_index(cfg, model_version=model, store=store, log=c.print if c else None)
        except IndexGateError as err:
            if c is not None:
                c.print(f"[red]gate failed[/red]: {err}")
            return {"ok": False, "error": "gate_failed", "message": str(err),
                    "report": err.report}, 1  # fmt: skip
        if c is not None:
            c.print(
                f"{res['version']}: {res['factory']}, {res['vector_count']:,} vectors, "
                f"{res['bytes_per_vector']} B/vector, recall@{res['recall_k']} "
                f"{res['recall@' + str(res['recall_k'])]} at {res['probe_parameter']}={res['nprobe']}, "
                f"p99 {res['p99_ms']} ms, {res['qps']:,} QPS (exact {res['exact_qps']:,}); "
                + ("reused" if res["skipped"] else "in the standby slot: videorec index publish")
            )
        return res, 0
    if args.action == "publish":
        slots.publish(store, args.version, force=args.force)
        deleted = slots.collect_garbage(store, cfg.index.keep_versions)
        res = {**slots.status(store), "deleted": deleted}
    elif args.action == "rollback":
        slots.rollback(store)
        res = slots.status(store)
    else:
        res = slots.status(store)
    if c is not None:
        c.print(f"active: {res['active']} {res['active_version']}  previous: {res['previous']}")
        for name, slot in res["slots"].items():
            c.print(f"  {name}: {json.dumps(slot)}")
    return res, 0
