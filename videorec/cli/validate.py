"""`videorec validate`: a data set against the contract."""

from __future__ import annotations

import argparse
from typing import Any

from videorec.cli.common import console, parse_share, print_validation
from videorec.config import Config


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this command's parser to ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser(
        "validate", parents=[common], help="validate a data set against the contract"
    )
    p.add_argument("data", help="data set directory")
    p.add_argument("--quarantine-dir", help="where bad rows go (default: DATA/_quarantine)")
    p.add_argument(
        "--max-invalid-share", type=parse_share, help="fail above this share of bad rows (0..1)"
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    from videorec.pipeline import validate_dataset

    max_share = (
        args.max_invalid_share
        if args.max_invalid_share is not None
        else cfg.contract.max_invalid_share
    )
    summary = validate_dataset(
        args.data,
        max_invalid_share=max_share,
        quarantine_dir=args.quarantine_dir,
        limits=cfg.contract,
    )
    if not args.json:
        print_validation(summary["tables"], f"contract validation of {args.data}")
        console().print(f"quarantine written to {summary['quarantine_dir']}")
        for err in summary["violations"]:
            console().print(f"[red]FAILED[/red] {err}")
    return summary, 0 if summary["ok"] else 1
