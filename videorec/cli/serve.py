"""`videorec serve`: the serving shim on uvicorn (host, port and workers from config)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from videorec.config import Config


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this command's parser to ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser("serve", parents=[common], help="the serving API (FastAPI on uvicorn)")
    p.add_argument("--port", type=int, help="override serving.port")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    import uvicorn

    s = cfg.serving
    # Each worker process builds its app from the same config.
    if args.config:
        os.environ["VIDEOREC_CONFIG"] = os.path.abspath(args.config)
    elif args.profile:
        os.environ["VIDEOREC_PROFILE"] = args.profile
    uvicorn.run(
        "videorec.serving.app:app", host=s.host, port=args.port or s.port, workers=s.workers,
        log_level="warning",
    )  # fmt: skip
    return {"stopped": True}, 0
