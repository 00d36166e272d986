"""`videorec run`: the main job on the config's defaults."""

from __future__ import annotations

import argparse
from typing import Any

from videorec.cli.common import console, print_counts, print_validation
from videorec.config import Config


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this command's parser to ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser("run", parents=[common], help="the main job on the config's defaults")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    from videorec.pipeline import run_main_job

    summary = run_main_job(cfg, progress=not args.json, log=None if args.json else console().print)
    if not args.json:
        print_counts(summary["data"])
        print_validation(summary["validation"]["tables"], "contract validation")
    return summary, 0 if summary["validation"]["ok"] else 1
