"""`videorec serve`: the serving shim on uvicorn (host, port and workers from config)."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from typing import Any

from videorec.cli.common import parse_count, parse_port
from videorec.config import Config


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this command's parser to ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser("serve", parents=[common], help="the serving API (FastAPI on uvicorn)")
    p.add_argument("--port", type=parse_port, help="override serving.port")
    p.add_argument("--workers", type=parse_count, help="override serving.workers")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    import uvicorn

    from videorec.serving.metrics import MULTIPROC_ENV

    s = cfg.serving
    # Each worker process builds its app from the same config.
    if args.config:
        os.environ["VIDEOREC_CONFIG"] = os.path.abspath(args.config)
    elif args.profile:
        os.environ["VIDEOREC_PROFILE"] = args.profile
    workers = args.workers or s.workers
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")  # the workers inherit it (see videorec.serving)
    made = None
    if workers > 1 and not os.environ.get(MULTIPROC_ENV):
        # Each worker writes its metrics here; /metrics adds them all up.
        made = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="videorec-metrics-")
    port = args.port or s.port
    try:
        uvicorn.run(
            "videorec.serving.app:app", host=s.host, port=port, workers=workers,
            log_level="warning", loop="uvloop", http="httptools", access_log=False,
        )  # fmt: skip
    except SystemExit as stop:  # uvicorn exits 3 when it cannot start (3 is "gate refused")
        if stop.code in (0, None):
            return {"stopped": True}, 0
        message = (
            f"uvicorn could not serve on {s.host}:{port} (exit {stop.code}): see its log above"
        )
        return {"ok": False, "error": "serve_failed", "message": message}, 1
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)
    return {"stopped": True}, 0
