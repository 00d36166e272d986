"""Where and when a benchmark ran, stated the same way by every script in ``bench/``.

A figure without its machine, date and load cannot be compared with another
(docs/benchmarks.md): each script takes :func:`load_average` when it starts, before its
own work loads the machine, and prints :func:`header` with its results. Scripts here run
as ``python bench/<name>.py``, so Python puts this folder on ``sys.path`` and
``import bench_host`` finds this file.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float | None:
    """The machine's memory in GiB (MemTotal), None where /proc/meminfo is missing."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages, rounded to 0.01."""
    return [round(x, 2) for x in os.getloadavg()]


def commit() -> str:
    """The repository's commit (short hash), "+dirty" when tracked files changed since;
    "unknown" outside a git checkout."""
    repo = Path(__file__).resolve().parents[1]
    git = ["git", "--no-optional-locks", "-C", str(repo)]  # read-only: takes no index lock
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown"
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    )
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def header(load_before: list[float] | None = None) -> dict[str, Any]:
    """The run's code, machine, date (UTC, now: this describes the run, it computes
    nothing) and load: ``load_before`` as taken when the script started (now, if None),
    and the load average at this call as ``load_after``."""
    return {
        "commit": commit(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {cpu_model()}",
        "memory_gib": memory_gib(),
        "python": platform.python_version(),
        "load_before": load_average() if load_before is None else load_before,
        "load_after": load_average(),
    }


def mib(path: Path) -> float:
    """The bytes of every file under ``path``, in MiB (a benchmark's size figures)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


BENCH_END = dt.date(2026, 11, 1)  # the last day (exclusive) of the daily-run benches' platforms


def daily_platform(
    work: Path, *, users: int, videos: int, days: int, corrupt: float = 0.0
) -> tuple[Path, Any]:
    """(data set, config) for a bench of daily incremental runs: a synthetic platform of
    ``days`` days ending on :data:`BENCH_END` under ``work/platform`` (generated once,
    seed 7, ``corrupt`` of its events malformed), and a ``local[2]`` config (driver 4g)
    whose store is ``work/artifacts``."""
    from videorec.config import parse_config
    from videorec.datagen.synthetic import GeneratorParams, generate

    data = work / "platform"
    if not data.exists():
        params = GeneratorParams(users=users, videos=videos, days=days, seed=7,
                                 end_date=BENCH_END, corrupt=corrupt)  # fmt: skip
        generate(params, data, config_digest="bench", progress=False)
    cfg = parse_config({"artifacts": {"root": str(work / "artifacts")},
                        "spark": {"master": "local[2]", "driver_memory": "4g"}})  # fmt: skip
    return data, cfg
