"""What every ``videorec`` command shares: printing, argument types, the error exit."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from videorec.config import Config

Handler = Callable[[argparse.Namespace, Config], tuple[dict[str, Any], int]]


def print_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True, default=str) + "\n")


def console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def print_validation(report: dict[str, Any], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in ("table", "rows in", "valid", "quarantined", "by reason", "kept, noted"):
        table.add_column(
            col, justify="right" if col in ("rows in", "valid", "quarantined") else "left"
        )
    for name, r in report.items():
        reasons = ", ".join(f"{k}={v:,}" for k, v in r["by_reason"].items()) or "-"
        # Rows kept but worth knowing about: events of users missing from `users`, and
        # the minimal user rows added for them.
        noted = {**r.get("accepted", {})}
        if r.get("rows_added"):
            noted["rows_added"] = r["rows_added"]
        table.add_row(
            name,
            f"{r['rows_in']:,}",
            f"{r['rows_valid']:,}",
            f"{r['rows_quarantined']:,}",
            reasons,
            ", ".join(f"{k}={v:,}" for k, v in noted.items()) or "-",
        )
    console().print(table)


def print_counts(summary: dict[str, Any]) -> None:
    c = console()
    c.print(f"data set: [bold]{summary['out']}[/bold] (as of {summary['as_of']})")
    c.print("rows: " + ", ".join(f"{k}={v:,}" for k, v in summary["counts"].items()))
    if summary.get("events_by_type"):
        c.print(
            "events by type: "
            + ", ".join(f"{k}={v:,}" for k, v in summary["events_by_type"].items())
        )
    if summary.get("injected_corruption"):
        c.print(
            "injected bad rows: "
            + ", ".join(f"{k}={v:,}" for k, v in summary["injected_corruption"].items())
        )
    if summary.get("next_command"):
        c.print(f"next: [bold]{summary['next_command']}[/bold]")


def print_collection(res: dict[str, Any]) -> None:
    """A retention collector's result (``videorec.retention``): what went (or would go,
    on a dry run) per artifact, the first date kept whole, what was kept as served."""
    c = console()
    verb = "would delete" if res["dry_run"] else "deleted"
    for name, versions in res["deleted"].items():
        c.print(
            f"{name}: {verb} {len(versions)}" + (f" ({', '.join(versions)})" if versions else "")
        )
    c.print(f"kept: every date from {res['keep_from']}, and {len(res['served'])} served")
    for problem in res["problems"]:
        c.print(f"[yellow]{problem}[/yellow]")


def print_warnings(warnings: list[str]) -> None:
    """Loud, on stderr, so they show even when stdout goes to a file or a pipe."""
    from rich.console import Console

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    for w in warnings:
        err.print(f"[bold yellow]WARNING[/bold yellow] {w}")


def check_writable_dir(path: str, what: str) -> None:
    """ValueError naming ``path`` unless it is, or could be made, a writable folder.

    Nothing is created: the nearest existing ancestor must be a writable folder.
    """
    import os

    p = Path(path).absolute()
    existing = next(a for a in (p, *p.parents) if a.exists())
    if not existing.is_dir():
        raise ValueError(f"{path}: cannot create the {what} folder: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{path}: cannot create the {what} folder: {existing} is not writable")


# Logical dates and times a command accepts: windows, retention cut-offs and hours are
# computed from them, and Python's dates end at years 1 and 9999.
FIRST_DATE, END_DATE = dt.date(1971, 1, 1), dt.date(9000, 1, 1)


def parse_date(s: str) -> dt.date:
    try:
        d = dt.date.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {s!r}") from None
    if not FIRST_DATE <= d < END_DATE:
        raise argparse.ArgumentTypeError(f"{s!r}: outside {FIRST_DATE}..{END_DATE}")
    return d


def parse_timestamp(s: str) -> dt.datetime:
    """An ISO-8601 time; one without a zone is taken as UTC (the contract's only zone)."""
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {s!r}") from None
    t = t if t.tzinfo else t.replace(tzinfo=dt.UTC)
    if not FIRST_DATE <= t.date() < END_DATE:
        raise argparse.ArgumentTypeError(f"{s!r}: outside {FIRST_DATE}..{END_DATE}")
    return t


def _in_range(s: str, convert: type, what: str, lo: float, hi: float) -> Any:
    """``convert(s)`` when it lies in [lo, hi] (NaN does not), else argparse's error."""
    try:
        x = convert(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {s!r}") from None
    if not lo <= x <= hi:
        raise argparse.ArgumentTypeError(f"{s!r}: {what} lies in [{lo:g}, {hi:g}]")
    return x


def parse_share(s: str) -> float:
    """A fraction in [0, 1] (NaN is not one: it would turn a gate off)."""
    return _in_range(s, float, "a share", 0.0, 1.0)


def parse_count(s: str) -> int:
    """A whole number, at least 1."""
    return _in_range(s, int, "a whole number", 1, 2**63 - 1)


def parse_port(s: str) -> int:
    """A TCP port number, 1 to 65535."""
    return _in_range(s, int, "a port number", 1, 65535)


def fail(args: argparse.Namespace, kind: str, err: Exception, status: int) -> int:
    if getattr(args, "json", False):
        print_json({"ok": False, "error": kind, "message": str(err)})
    else:
        print(f"videorec {args.command}: error: {err}", file=sys.stderr)
    return status
