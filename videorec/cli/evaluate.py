"""`videorec evaluate`: offline evaluation of the baselines."""

from __future__ import annotations

import argparse
from typing import Any

from videorec.cli.common import check_writable_dir, console
from videorec.config import Config


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this command's parser to ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser(
        "evaluate", parents=[common], help="offline evaluation of the baselines on a temporal split"
    )
    p.add_argument("--data", help="data set directory (default: the config's data.dir)")
    p.add_argument(
        "--features-version-dir",
        help="a feature-stage version folder: evaluate on its examples/ and eval/ instead",
    )
    p.add_argument(
        "--split", default="per-user-temporal", help="how to hold out: per-user-temporal"
    )
    p.add_argument(
        "--models", default="all", help="all, or comma-separated: MostPopular,ItemKNN,ALS,..."
    )
    p.add_argument(
        "--params",
        default="tuned",
        help="tuned (on a validation split, the default) or reference (the issue's values)",
    )
    p.add_argument("--k", default="10,20,50,100,200", help="cut-offs, comma-separated")
    p.add_argument("--seed", type=int, default=0, help="seed of randomised models (ALS)")
    p.add_argument(
        "--out", help="report folder (default: a new version of the evaluation artifact)"
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    from videorec.evaluation.harness import run_evaluation

    if args.out is not None:
        check_writable_dir(args.out, "report")  # before minutes of evaluation, not after
    store = None
    if args.out is None:
        from videorec.artifacts import open_store

        store = open_store(cfg)
    data = args.data
    if data is None and args.features_version_dir is None:
        data = cfg.resolve_location(cfg.data.dir)
    result = run_evaluation(
        data,
        features_version_dir=args.features_version_dir,
        split=args.split,
        models=args.models,
        params=args.params,
        ks=args.k,
        seed=args.seed,
        out=args.out,
        store=store,
        max_invalid_share=cfg.contract.max_invalid_share,
        limits=cfg.contract,
        config_digest=cfg.digest(),
        log=None if args.json else console().print,
    )
    if not args.json:
        from rich.table import Table

        table = Table(title="offline evaluation (per-user means, full catalogue)")
        cols = ("recall@20", "ndcg@20", "recall@200", "mrr", "coverage@200")
        table.add_column("model")
        for col in cols:
            table.add_column(col, justify="right")
        table.add_column("params")
        for name, m in result["models"].items():
            cells = [f"{m[c]:.4f}" if m.get(c) is not None else "-" for c in cols]
            table.add_row(name, *cells, str(result["params"][name]))
        console().print(table)
        where = result.get("out") or result.get("artifact", {}).get("uri")
        console().print(f"report written to {where}")
    return result, 0
