"""`videorec airflow ARGS...`: the `airflow` command on this config's environment.

`make airflow` runs `videorec airflow standalone` (UI, scheduler, DAG processor and
triggerer on localhost:8080 with the DAGs loaded); anything else is passed through,
e.g. `videorec airflow dags list` or `videorec airflow dags test videorec_trending
2026-11-01T00:15:00+00:00`. The metadata database is created or upgraded first.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from videorec.config import Config


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this command's parser to ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser(
        "airflow",
        parents=[common],
        help="run the airflow command on this config's AIRFLOW_HOME, DAGs and connections",
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for airflow")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    from videorec.orchestrator import airflow_env, migrate

    if not args.args:
        raise ValueError("videorec airflow needs arguments, e.g. `standalone` or `dags list`")
    env = airflow_env(cfg, config_file=args.config)
    migrate(env)
    exe = str(Path(sys.executable).parent / "airflow")
    os.execve(exe, [exe, *args.args], env)  # replaces this process: Ctrl-C reaches Airflow
    return {}, 0  # not reached
