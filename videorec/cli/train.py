"""`videorec train`: train and evaluate the two-tower model, then gate it (`videorec gate`)."""

from __future__ import annotations

import argparse
from typing import Any

from videorec.cli.common import console, parse_date, print_warnings
from videorec.config import Config


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this command's parser to ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser(
        "train",
        parents=[common],
        help="train the two-tower model, evaluate, then register and gate it (exit 3: refused)",
    )
    p.add_argument(
        "--features",
        help="features version to train on (default: build or reuse the one for --data, --date)",
    )
    p.add_argument("--data", help="data set directory (default: the config's data.dir)")
    p.add_argument(
        "--date", type=parse_date, help="logical date (default: the data set's as-of day)"
    )
    p.add_argument(
        "--baselines",
        default="MostPopular",
        help="baselines evaluated beside TwoTower: a comma list, or all (the offline grid)",
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    from videorec.cli.gate import exit_status, print_gate
    from videorec.training.gate import gate_model
    from videorec.training.train import train_two_tower

    data = args.data or cfg.resolve_location(cfg.data.dir)
    baselines = (
        "all" if args.baselines == "all" else tuple(b for b in args.baselines.split(",") if b)
    )
    c = None if args.json else console()
    features_version = args.features
    if features_version is None:  # a CLI convenience: the stage itself takes a version
        from videorec.dataset import read_manifest
        from videorec.features.job import build_features
        from videorec.training.train import default_date

        date = args.date or default_date(read_manifest(data))
        features_version = build_features(cfg, data, date)["version"]
    res = train_two_tower(
        cfg,
        features_version=features_version,
        baselines=baselines,
        progress=not args.json,
        log=c.print if c else None,
    )
    gate = gate_model(cfg, model_version=res["version"], log=c.print if c else None)
    ev = res["evaluation"]
    print_warnings(res.get("warnings") or [])
    # The harness's JSON, whose `models` includes TwoTower, plus the training outcome.
    out = {
        **ev,
        "warnings": res.get("warnings") or [],
        "model_version": res["version"],
        "model_uri": res["uri"],
        "skipped": res["skipped"],
        "mlflow": {**res["mlflow"], **gate},
        "best_epoch": res.get("best_epoch"),
        "throughput_examples_per_s": res.get("throughput_examples_per_s"),
        "device": res.get("device"),
    }
    if c is not None:
        from rich.table import Table

        t = Table(title=f"hold-out ({ev['protocol'].get('split')})")
        for col in ("model", "recall@20", "ndcg@20", "recall@200"):
            t.add_column(col, justify="left" if col == "model" else "right")
        for name, m in ev["models"].items():
            t.add_row(
                name,
                *(f"{m.get(k, float('nan')):.4f}" for k in ("recall@20", "ndcg@20", "recall@200")),
            )
        c.print(t)
        c.print(f"model {res['version']} at {res['uri']}, MLflow run {res['mlflow']['run_id']}")
        print_gate(gate)
    return out, exit_status(gate)
