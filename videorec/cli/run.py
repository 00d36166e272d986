"""`videorec run`: the main job on the config's defaults (what `make run` runs)."""

from __future__ import annotations

import argparse
from typing import Any

from videorec.cli.common import console, print_counts, print_validation
from videorec.config import Config


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this command's parser to ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser(
        "run",
        parents=[common],
        help="the main job: data set, then the retrain DAG through Airflow, then what it published",
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    from videorec.pipeline import run_main_job

    summary = run_main_job(
        cfg, config_file=args.config, progress=not args.json,
        log=None if args.json else console().print,
    )  # fmt: skip
    if not args.json:
        print_counts(summary["data"])
        print_validation(summary["validation"]["tables"], "contract validation")
        if "dag" in summary:
            print_published(summary["dag"], summary["published"])
    return summary, exit_status(summary)


def exit_status(summary: dict[str, Any]) -> int:
    """0 when the data validated and the DAG run succeeded (a refused gate included:
    the run did its job and kept what was live), 1 otherwise."""
    if not summary["validation"]["ok"]:
        return 1
    return 0 if summary["dag"]["state"] == "success" else 1


def print_published(run: dict[str, Any], pub: dict[str, Any]) -> None:
    """The run's task states, then what is live: artifacts, gate, index, Redis, the
    ranker, one user."""
    c = console()
    c.print(f"\n[bold]{run['dag_id']}[/bold] run {run['run_id']}: {run['state']}")
    c.print("  " + ", ".join(f"{t} {s}" for t, s in run["tasks"].items()))
    c.print(f"artifacts (MLflow: {pub['mlflow']}):")
    for what, uri in pub["artifacts"].items():
        c.print(f"  {what}: {uri}")
    g = pub.get("gate")
    if g:
        c.print(f"gate: {g['model']} v{g['version']} [bold]{g['decision']}[/bold]: {g['reason']}")
    f = pub.get("index_figures")
    if f:
        c.print(
            f"index: {f['factory']}, {f['vector_count']:,} vectors, recall@{f['recall_k']} "
            f"{f['recall']} (target {f['recall_target']}) at nprobe {f['nprobe']}, "
            f"{f['qps']:,} QPS"
        )
    c.print(f"Redis generation: {pub['generation']}")
    r = pub.get("ranking") or {}
    if r.get("version"):
        print_ranker(r)
    u = pub.get("sample_user")
    if u and u.get("user_id") is not None:
        c.print(f"user {u['user_id']}'s recommendations (generation {u['generation']}):")
        for i, item in enumerate(u["items"], 1):
            c.print(f"  {i:2}. {item['title']} (video {item['video_id']}, {item['score']:.3f})")


def print_ranker(r: dict[str, Any]) -> None:
    """The ranker's funnel beside retrieval alone, its gate, the served ranker."""
    from videorec.cli.rank import funnel_line

    c = console()
    c.print(f"ranker {r['version']}: {funnel_line(r['funnel'], r['retrieval'])}")
    g = r.get("gate")
    if g:
        c.print(f"  gate: {g['model']} v{g['version']} [bold]{g['decision']}[/bold]: {g['reason']}")
    p = r.get("pointer") or {}
    c.print(f"  served ranker: {p.get('version') or 'none published'}")
