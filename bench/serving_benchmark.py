"""Benchmark: the serving API under load, per endpoint, with wrk (issue 13, "Performance").

    .venv/bin/python bench/serving_benchmark.py --config /work/bench-data/bench.yaml \\
        --markdown --json var/serving-bench.json

Against the real Redis and a published generation of the config's key prefix (build it
with the pipeline's CLI first: generate, features, train, index build/publish,
precompute run). One run:

1. writes a temporary copy of the config with a fresh API key added to
   ``serving.api_keys`` (stored as its SHA-256 hex, scopes ``read`` and ``feedback``),
   and ``serving.workers`` / ``serving.port`` set from the options;
2. starts the service as a subprocess (``videorec serve``, or uvicorn directly with
   ``$VIDEOREC_CONFIG``) and waits for ``/healthz``;
3. samples real ids: users and videos from the data set's tables (seeded), kept only
   where the active generation has their keys (base recommendations, video features),
   unless ``--include-cold`` keeps users without recommendations too;
4. per endpoint, one probe request (an endpoint that does not answer 200 is reported
   and skipped), then a sweep of closed-loop load: for each connection count, a
   warm-up run and a measured run of wrk (``bench/serving_wrk.lua`` rotates over the
   ids and sends ``X-API-Key`` and ``X-User-Id``); from wrk's ``--latency`` output:
   p50/p75/p90/p99, requests/s, non-2xx/3xx responses, socket errors;
5. measures CPU during each measured run: wrk's (its rusage: user + sys seconds over
   the run's wall time), the server processes' (``/proc/<pid>/stat`` of the server and
   its descendants), Redis's (``INFO cpu``: the whole server's, other clients' commands
   included) and the whole machine's (``/proc/stat``),
   so a run whose load generator or neighbours took the cores shows it;
6. reads the ranker's own time per home request over each measured run from the
   server's ``videorec_ranker_seconds`` histogram (the feature build and the one
   batched forward pass; its mean, and the bucket bounds its median and p99 fall
   under), and which ranker the server used (``/readyz``'s ``ranker`` check; none: the
   documented rule ranked); ``bench/serving_bench_world.py`` writes a world to run the
   home feed with and without one;
7. prints per endpoint the sweep, the highest error-free rate with its p50/p99 and the
   highest error-free rate within the p99 budget (the goal: home feed p99 under 15 ms
   at 1,000 requests/s or more), and the machine's facts; ``--json PATH`` writes it all.

``--profile-one [ENDPOINT]`` instead profiles requests in-process (``create_app`` over
the same config, called through httpx's ASGI transport, so without uvicorn's HTTP
parsing) with pyinstrument when installed, else cProfile, and prints where the time
goes.

wrk is closed-loop: each connection sends its next request when the previous answer
arrives, so a slow answer delays the requests behind it and the percentiles understate
what an open-loop client at the same rate would see (coordinated omission). ``--rate``
runs wrk2 (``--wrk2-bin``) instead, which holds a fixed request rate and corrects for
it. Run on a quiet machine: the load generator, the server and Redis share its cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_host

LUA = Path(__file__).with_name("serving_wrk.lua")
KEY_ENV = "SERVING_BENCH_API_KEY"  # read by serving_wrk.lua
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"  # the app's default (serving/app.py)
# Paths with {uid} and {vid} standing for the rotated ids (the API of issue 13).
ENDPOINTS: dict[str, str] = {
    "home": "/api/v1/recommendations/home?limit=20",
    "up-next": "/api/v1/recommendations/up-next?current_video={vid}&watch_time=100&total_duration=300",
    "similar": "/api/v1/recommendations/similar/{vid}?limit=10",
    "healthz": "/healthz",
}
CLK_TCK = os.sysconf("SC_CLK_TCK")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # videorec.serving.metrics.MULTIPROC_ENV
# Counters of /metrics whose change over a run is reported: answers that were 200 but
# came from a fallback path (a failing home computation answers from the snapshot, so
# an error can hide there), 429s, impressions not logged, and requests by status class.
SERVER_COUNTERS = (
    "videorec_fallbacks_total",
    "videorec_rate_limited_total",
    "videorec_impressions_dropped_total",
    "videorec_request_seconds_count",
    "videorec_ranker_seconds_sum",
    "videorec_ranker_seconds_count",
    "videorec_ranker_seconds_bucket",
)
_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


# ---- the temporary config and the server


def bench_config(source: Path, key: str, workers: int, port: int, folder: Path) -> Path:
    """A copy of ``source`` with ``key`` added to ``serving.api_keys`` (as its SHA-256)
    and the server's workers, host and port set; validated, written under ``folder``."""
    import yaml

    from videorec.config import load_config, parse_config

    profile = load_config(source).profile  # the name the source resolves to
    data = yaml.safe_load(source.read_text()) or {}
    data["profile"] = profile  # else the temporary file's name would become the profile
    serving = dict(data.get("serving") or {})
    entry = {
        "name": "serving-benchmark",
        "sha256": hashlib.sha256(key.encode()).hexdigest(),
        "scopes": ["read", "feedback"],
    }
    serving["api_keys"] = [*(serving.get("api_keys") or []), entry]
    serving.update(workers=workers, port=port, host="127.0.0.1")
    data["serving"] = serving
    parse_config(data, str(source))  # fail here, with the key named, not in the server
    path = folder / "serving-bench.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one live process (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it (uvicorn's supervisor and workers)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def machine_busy_s() -> float:
    """CPU seconds all cores have spent not idle since boot (``/proc/stat``)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / CLK_TCK  # guest time is already in user


@dataclass
class Server:
    """The service as a subprocess (its own process group), logging to ``log``."""

    config: Path
    port: int
    launcher: str
    workers: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        bin_dir = Path(sys.executable).parent
        if self.launcher == "uvicorn":
            return [
                str(bin_dir / "uvicorn"),
                "videorec.serving.app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
                "--log-level",
                "warning",
                "--no-access-log",
                "--loop",
                "uvloop",
                "--http",
                "httptools",
            ]
        exe = bin_dir / "videorec"
        videorec = str(exe) if exe.exists() else shutil.which("videorec") or "videorec"
        return [videorec, "serve", "--config", str(self.config), "--port", str(self.port)]

    def start(self, timeout_s: float) -> float:
        """Start it and wait until ``/healthz`` answers 200; returns the seconds it took."""
        env = {**os.environ, "VIDEOREC_CONFIG": str(self.config)}
        env.pop("VIDEOREC_PROFILE", None)
        env.pop(MULTIPROC_ENV, None)  # `videorec serve` makes its own for several workers
        if self.launcher == "uvicorn" and self.workers > 1:
            # As `videorec serve` does: every worker's metrics in files that /metrics adds up.
            metrics_dir = self.log.parent / "metrics"
            metrics_dir.mkdir(exist_ok=True)
            env[MULTIPROC_ENV] = str(metrics_dir)
        t0 = time.perf_counter()
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{self.port}/healthz"
        while time.perf_counter() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}):\n{self.tail()}")
            if http_get(url, {})[0] == 200:
                return time.perf_counter() - t0
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"/healthz did not answer within {timeout_s} s:\n{self.tail()}")

    def cpu_s(self) -> float:
        """CPU seconds of the server process and every process below it, so far."""
        return 0.0 if self.proc is None else sum(map(proc_cpu_s, descendants(self.proc.pid)))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait_s)
                return
            except subprocess.TimeoutExpired:
                continue


def http_get(url: str, headers: dict[str, str], timeout_s: float = 5.0) -> tuple[int, str]:
    """(status, body) of one GET; status 0 when nothing answered."""
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return 0, ""


def served_ranker(base: str) -> dict[str, Any] | None:
    """``/readyz``'s ranker check (its version null: the rule ranks); None if absent."""
    _, body = http_get(base + "/readyz", {})
    try:
        return json.loads(body)["checks"].get("ranker")
    except (ValueError, KeyError, TypeError):
        return None


def scrape(base: str) -> dict[str, float]:
    """The ``SERVER_COUNTERS`` series of ``/metrics`` ({"name{labels}": value}); {} if absent."""
    status, body = http_get(base + "/metrics", {})
    out: dict[str, float] = {}
    if status != 200:
        return out
    for line in body.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, _, value = line.rpartition(" ")
        if series.split("{", 1)[0] in SERVER_COUNTERS:
            out[series] = float(value)
    return out


def counter_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The series that changed, by how much (the /metrics requests themselves excluded)."""
    out = {}
    for series, value in after.items():
        d = value - before.get(series, 0.0)
        if d and 'endpoint="metrics"' not in series:
            out[series] = d
    return out


def fallbacks(delta: dict[str, float]) -> dict[str, float]:
    """{reason: count} of fallback answers and {limit: count} of 429s in a delta."""
    out = {}
    for series, d in delta.items():
        m = re.match(r'videorec_(fallbacks|rate_limited)_total\{\w+="([^"]*)"\}', series)
        if m:
            out[m.group(2) if m.group(1) == "fallbacks" else f"429 {m.group(2)}"] = d
        elif series.startswith("videorec_impressions_dropped_total"):
            out["impressions_dropped"] = d
    return out


def ranker_time(delta: dict[str, float]) -> dict[str, Any] | None:
    """The ranker's time per scored request over a run, from the histogram's change:
    {"requests", "mean_ms", "p50_ms_le", "p99_ms_le"} (the quantiles as the bucket bound
    they fall under: an upper bound); None when the ranker scored nothing."""
    n = delta.get("videorec_ranker_seconds_count", 0.0)
    if n <= 0:
        return None
    buckets = []
    for series, d in delta.items():
        m = re.match(r'videorec_ranker_seconds_bucket\{.*le="([^"]+)".*\}', series)
        if m:
            buckets.append((float(m.group(1)), d))
    buckets.sort()

    def under(q: float) -> float | None:
        return next((round(le * 1e3, 3) for le, c in buckets if c >= q * n), None)

    return {
        "requests": int(n),
        "mean_ms": round(1e3 * delta.get("videorec_ranker_seconds_sum", 0.0) / n, 3),
        "p50_ms_le": under(0.5),
        "p99_ms_le": under(0.99),
    }


# ---- ids


def redis_client(cfg: Any) -> Any:
    """The app's Redis: ``redis.url``, else ``$REDIS_URL``, else 127.0.0.1:6379."""
    import redis

    return redis.Redis.from_url(cfg.redis.url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL)


def sample_ids(cfg: Any, n: int, seed: int, include_cold: bool) -> dict[str, Any]:
    """``n`` user ids and ``n`` video ids of the data set, seeded, with what Redis holds.

    Users are drawn uniformly from the ``users`` table; without ``include_cold`` only
    those with base recommendations in the active generation are kept (the warm path
    the latency goal is about). Videos are drawn from the ``videos`` table and kept
    when the generation has their feature hash (the similar endpoint's 404 test).
    """
    import numpy as np

    from videorec.dataset import read_table
    from videorec.redis_keys import RedisKeys, active_generation

    client = redis_client(cfg)
    keys = RedisKeys(cfg.precompute.key_prefix)
    gen = active_generation(client, keys)
    if gen is None:
        raise SystemExit(
            f"no active generation under the key prefix {keys.root!r}: "
            "run the pipeline (precompute run) first"
        )
    data = cfg.resolve_path(cfg.data.dir)
    rng = np.random.default_rng(seed)

    def draw(table: str, column: str, key_of: Any, keep_all: bool) -> tuple[list[int], float]:
        ids = rng.permutation(read_table(data, table).column(column).to_numpy())
        ids = ids[: min(len(ids), 4 * n)]
        pipe = client.pipeline(transaction=False)
        for i in ids.tolist():
            pipe.exists(key_of(gen, i))
        present = np.array(pipe.execute(), bool)
        chosen = ids if keep_all else ids[present]
        return [int(i) for i in chosen[:n]], float(present.mean()) if len(ids) else 0.0

    users, user_share = draw("users", "user_id", keys.user_recs, include_cold)
    videos, video_share = draw("videos", "video_id", keys.video_features, False)
    if not users or not videos:
        raise SystemExit(f"generation {gen}: no sampled user or video has keys in Redis")
    return {
        "generation": gen,
        "users": users,
        "videos": videos,
        "share_of_users_with_recs": round(user_share, 4),
        "share_of_videos_with_features": round(video_share, 4),
        "include_cold": include_cold,
    }


def write_ids(path: Path, users: list[int], videos: list[int]) -> None:
    """One ``<user_id> <video_id>`` pair per line, as long as the longer list."""
    m = max(len(users), len(videos))
    path.write_text(
        "".join(f"{users[i % len(users)]} {videos[i % len(videos)]}\n" for i in range(m))
    )


# ---- wrk


def wrk_version(wrk: str) -> str:
    """wrk's banner line (``wrk -v`` prints it, then the usage, and exits 1)."""
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout
    return out.splitlines()[0].strip() if out else "unknown"


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse_wrk(text: str) -> dict[str, Any]:
    """The figures of wrk's (or wrk2's) ``--latency`` output, latencies in ms.

    Keys: p50, p75, p90, p99 (ms; wrk2's spectrum gives more, under the same names),
    rps, requests, duration_s, non_2xx_3xx, socket_errors {connect, read, write,
    timeout}, and ``wrk`` (what serving_wrk.lua's done() printed), when present.
    """
    out: dict[str, Any] = {
        "non_2xx_3xx": 0,
        "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0},
    }
    for m in re.finditer(r"^\s*(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M):
        pct = float(m.group(1))
        name = f"p{pct:g}"
        if name in ("p50", "p75", "p90", "p99", "p99.9"):
            out[name] = round(_ms(m.group(2), m.group(3)), 3)
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text, re.M)
    if m:
        out["requests"] = int(m.group(1))
        out["duration_s"] = round(_ms(m.group(2), m.group(3)) / 1e3, 2)
    m = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if m:
        out["rps"] = float(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["socket_errors"] = dict(
            zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True)
        )
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        out["non_2xx_3xx"] = int(m.group(1))
    m = re.search(r"^WRKJSON (\{.*\})\s*$", text, re.M)
    if m:
        out["wrk"] = json.loads(m.group(1))
        lat = out["wrk"]["latency_us"]
        out.setdefault("p99.9", round(lat["p99.9"] / 1e3, 3))
        out["max"] = round(lat["max"] / 1e3, 3)
    out["errors"] = out["non_2xx_3xx"] + sum(out["socket_errors"].values())
    return out


@dataclass
class Load:
    """How each run of wrk is driven."""

    wrk: str
    threads: int
    duration_s: int
    warmup_s: int
    timeout_s: float
    rate: int | None = None  # wrk2's -R (requests/s, all connections together)
    env: dict[str, str] = field(default_factory=dict)

    def command(self, url: str, conns: int, seconds: int, ids: Path, template: str) -> list[str]:
        cmd = [
            self.wrk,
            f"-t{min(self.threads, conns)}",
            f"-c{conns}",
            f"-d{seconds}s",
            f"--timeout={self.timeout_s:g}s",
            "--latency",
            "-s",
            str(LUA),
        ]
        if self.rate is not None:
            cmd.append(f"-R{self.rate}")
        return [*cmd, url, "--", str(ids), template]


def run_wrk(load: Load, cmd: list[str]) -> tuple[str, float, float]:
    """Run wrk; (its output, wall seconds, its user + sys CPU seconds from rusage)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **load.env}
    )
    # wrk's report is a few KB, far below a pipe's buffer: waiting first cannot block.
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{text}")
    return text, wall, usage.ru_utime + usage.ru_stime


def redis_cpu_s(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def one_level(
    load: Load, server: Server, client: Any, url: str, conns: int, ids: Path, template: str
) -> dict[str, Any]:
    """A warm-up run, then a measured run at ``conns`` connections, with CPU shares, the
    server's counters (fallbacks, 429s, status classes) and Redis's memory over it."""
    if load.warmup_s > 0:
        run_wrk(load, load.command(url, conns, load.warmup_s, ids, template))
    c0, mem0 = scrape(url), int(client.info("memory")["used_memory"])
    s0, r0, m0 = server.cpu_s(), redis_cpu_s(client), machine_busy_s()
    text, wall, wrk_cpu = run_wrk(load, load.command(url, conns, load.duration_s, ids, template))
    s1, r1, m1 = server.cpu_s(), redis_cpu_s(client), machine_busy_s()
    c1, mem1 = scrape(url), int(client.info("memory")["used_memory"])
    row = {"connections": conns, **parse_wrk(text)}
    row["server_counters"] = counter_delta(c0, c1)
    row["fallbacks"] = fallbacks(row["server_counters"])
    row["ranker"] = ranker_time(row["server_counters"])
    row["redis_used_memory_mb_delta"] = round((mem1 - mem0) / 2**20, 1)
    cores = {
        "wrk": wrk_cpu / wall,
        "server": (s1 - s0) / wall,
        "redis": (r1 - r0) / wall,
        "machine": (m1 - m0) / wall,
    }
    cores["others"] = cores["machine"] - cores["wrk"] - cores["server"] - cores["redis"]
    row["cpu_cores"] = {k: round(v, 3) for k, v in cores.items()}
    row["wall_s"] = round(wall, 2)
    row["raw"] = text
    return row


def best_rows(rows: list[dict[str, Any]], p99_budget_ms: float) -> dict[str, Any]:
    """The highest error-free rate, and the highest error-free one within the p99 budget."""
    clean = [r for r in rows if r["errors"] == 0 and "rps" in r and "p99" in r]
    within = [r for r in clean if r["p99"] <= p99_budget_ms]

    def pick(rs: list[dict[str, Any]]) -> dict[str, Any] | None:
        if not rs:
            return None
        r = max(rs, key=lambda r: r["rps"])
        return {k: r[k] for k in ("connections", "rps", "p50", "p99", "fallbacks")}

    return {
        "highest_error_free": pick(clean),
        "highest_within_p99_budget": pick(within),
        "p99_budget_ms": p99_budget_ms,
    }


def sweep_endpoint(
    name: str,
    template: str,
    args: argparse.Namespace,
    load: Load,
    server: Server,
    client: Any,
    ids: dict[str, Any],
    ids_file: Path,
    key: str,
) -> dict[str, Any]:
    """Probe one endpoint, then sweep the load over it (unless the probe failed)."""
    base = f"http://127.0.0.1:{server.port}"
    uid, vid = ids["users"][0], ids["videos"][0]
    path = template.replace("{uid}", str(uid)).replace("{vid}", str(vid))
    status, body = http_get(base + path, {"X-API-Key": key, "X-User-Id": str(uid)})
    result: dict[str, Any] = {
        "path": template,
        "probe": {"path": path, "status": status, "body": body[:300]},
    }
    if status != 200 and not args.force:
        result["skipped"] = f"the probe answered {status}: {body[:200]}"
        log(f"{name}: skipped, {result['skipped']}")
        return result
    rows = []
    for conns in args.connections:
        if not server.alive():
            raise RuntimeError(f"the server died:\n{server.tail()}")
        row = one_level(load, server, client, base, conns, ids_file, template)
        rows.append(row)
        log(
            f"{name} c={conns}: {row.get('rps', 0):,.0f} req/s, p50 {row.get('p50')} ms, "
            f"p99 {row.get('p99')} ms, errors {row['errors']}, wrk {row['cpu_cores']['wrk']:.2f} "
            f"cores, server {row['cpu_cores']['server']:.2f}, redis {row['cpu_cores']['redis']:.2f}, "
            f"others {row['cpu_cores']['others']:.2f}; fallbacks {row['fallbacks'] or 0}"
            + (f"; ranker {row['ranker']['mean_ms']} ms a request" if row["ranker"] else "")
        )
    result["rows"] = rows
    result.update(best_rows(rows, args.p99_budget_ms))
    return result


# ---- the profile of one request


def profile_one(
    config: Path, endpoint: str, key: str, ids: dict[str, Any], n: int, warmup: int
) -> dict[str, Any]:
    """Profile ``n`` requests to ``endpoint`` in-process, after ``warmup`` unprofiled ones.

    Request ``i`` (warm-up ones first) is for the ``i``-th sampled user and video, so the
    profiled requests are not answered from what the warm-up left in caches. The app is ``create_app`` over ``config``, its lifespan run by hand (it opens the
    Redis client), called through ``httpx.ASGITransport`` in this thread's event loop,
    so the profiler sees the endpoint's own work (but not uvicorn's HTTP parsing).
    """
    import asyncio
    from collections import Counter

    import httpx

    os.environ["VIDEOREC_CONFIG"] = str(config)  # the module builds `app` on import
    from videorec.config import load_config
    from videorec.serving.app import create_app

    app = create_app(load_config(config))

    def request(i: int) -> tuple[str, dict[str, str]]:
        uid = ids["users"][i % len(ids["users"])]
        vid = ids["videos"][i % len(ids["videos"])]
        path = ENDPOINTS[endpoint].replace("{uid}", str(uid)).replace("{vid}", str(vid))
        return path, {"X-API-Key": key, "X-User-Id": str(uid)}

    try:
        from pyinstrument import Profiler  # type: ignore[import-not-found]
    except ImportError:
        Profiler = None

    async def go() -> dict[str, Any]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as c:
                statuses = []
                for i in range(warmup):
                    path, headers = request(i)
                    statuses.append((await c.get(path, headers=headers)).status_code)
                times = []
                if Profiler is not None:
                    prof = Profiler(interval=0.0001, async_mode="enabled")
                    prof.start()
                else:
                    import cProfile

                    prof = cProfile.Profile()
                    prof.enable()
                for i in range(warmup, warmup + n):
                    path, headers = request(i)
                    t0 = time.perf_counter()
                    statuses.append((await c.get(path, headers=headers)).status_code)
                    times.append(time.perf_counter() - t0)
                if Profiler is not None:
                    prof.stop()
                    report = prof.output_text(unicode=True, color=False)
                else:
                    import io
                    import pstats

                    prof.disable()
                    buf = io.StringIO()
                    stats = pstats.Stats(prof, stream=buf).strip_dirs()
                    stats.sort_stats("cumulative").print_stats(35)
                    stats.sort_stats("tottime").print_stats(20)
                    report = buf.getvalue()
        times.sort()
        return {
            "endpoint": endpoint,
            "first_profiled_path": request(warmup)[0],
            "statuses": dict(Counter(statuses)),
            "profiler": "pyinstrument" if Profiler is not None else "cProfile",
            "requests": n,
            "warmup": warmup,
            # Wall time per request under the profiler (cProfile adds its own overhead).
            "median_ms_profiled": round(1e3 * times[len(times) // 2], 3),
            "max_ms_profiled": round(1e3 * times[-1], 3),
            "report": report,
        }

    return asyncio.run(go())


# ---- the report


def machine_facts(
    client: Any, wrk: str, launcher: str, workers: int, load_before: list[float]
) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "redis"):
        try:
            versions[f"{pkg}-py" if pkg == "redis" else pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    info = client.info("server")
    return {
        **bench_host.header(load_before),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "redis": info["redis_version"],
        "wrk": wrk_version(wrk),
        "launcher": launcher,
        "workers": workers,
        **versions,
    }


def markdown(out: dict[str, Any]) -> str:
    m = out["machine"]
    lines = [
        f"commit {m['commit']}; machine: {m['cpu']}, {m['cpus']} CPUs ({m['cpus_usable']} usable), {m['date']}, "
        f"load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}; "
        f"Redis {m['redis']}; {m['wrk']}; {m['launcher']} with {m['workers']} worker(s), "
        f"uvicorn {m['uvicorn']}, fastapi {m['fastapi']}; generation "
        f"{out['ids']['generation']}, {len(out['ids']['users'])} users x "
        f"{len(out['ids']['videos'])} videos rotated; ranker: "
        + (
            f"{r['version']}"
            if (r := out.get("ranker") or {}).get("version")
            else "none (the rule)"
        ),
        "",
    ]
    for name, r in out["endpoints"].items():
        lines.append(f"### {name}: `GET {r['path']}`")
        lines.append("")
        if "skipped" in r:
            lines += [f"skipped: {r['skipped']}", ""]
            continue
        lines.append(
            "| connections | req/s | p50 ms | p75 ms | p90 ms | p99 ms | p99.9 ms | "
            "non-2xx/3xx | socket errors | fallback answers | wrk cores | server cores | "
            "Redis cores | other processes' cores | ranker ms: mean, p50 ≤, p99 ≤ |"
        )
        lines.append("|" + "---|" * 15)
        for row in r["rows"]:
            c = row["cpu_cores"]
            lines.append(
                f"| {row['connections']} | {row.get('rps', 0):,.0f} | {row.get('p50')} | "
                f"{row.get('p75')} | {row.get('p90')} | {row.get('p99')} | "
                f"{row.get('p99.9')} | {row['non_2xx_3xx']} | "
                f"{sum(row['socket_errors'].values())} | "
                f"{', '.join(f'{k} {v:,.0f}' for k, v in row['fallbacks'].items()) or 0} | "
                f"{c['wrk']:.2f} | {c['server']:.2f} | {c['redis']:.2f} | {c['others']:.2f} | "
                + (
                    f"{k['mean_ms']}, {k['p50_ms_le']}, {k['p99_ms_le']} |"
                    if (k := row.get("ranker"))
                    else "– |"
                )
            )
        lines.append("")
        others = max(row["cpu_cores"]["others"] for row in r["rows"])
        if others > 0.2:
            lines += [
                f"(other processes used up to {others:.2f} cores during these runs: "
                "the machine was not quiet, so read the rates as lower bounds and the "
                "latencies as upper bounds)",
                "",
            ]
        for label, k in (
            ("highest error-free rate", "highest_error_free"),
            (
                f"highest error-free rate with p99 ≤ {r['p99_budget_ms']:g} ms",
                "highest_within_p99_budget",
            ),
        ):
            b = r.get(k)
            lines.append(
                f"- {label}: "
                + (
                    f"**{b['rps']:,.0f} req/s** at {b['connections']} "
                    f"connection(s), p50 {b['p50']} ms, p99 {b['p99']} ms"
                    + (f", fallback answers {b['fallbacks']}" if b["fallbacks"] else "")
                    if b
                    else "none"
                )
            )
        lines.append("")
    return "\n".join(lines)


def log(msg: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, type=Path, help="the videorec config to serve")
    ap.add_argument(
        "--endpoints", nargs="+", choices=list(ENDPOINTS), default=["home", "up-next", "similar"]
    )
    ap.add_argument("--connections", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--duration", type=int, default=20, help="seconds per measured run")
    ap.add_argument("--warmup", type=int, default=5, help="seconds of warm-up before each run")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--timeout", type=float, default=2.0, help="wrk's request timeout, s")
    ap.add_argument("--rate", type=int, help="fixed rate (req/s) with wrk2 instead of wrk")
    ap.add_argument("--wrk-bin", default="wrk")
    ap.add_argument("--wrk2-bin", default="wrk2")
    ap.add_argument("--workers", type=int, default=2, help="server worker processes")
    ap.add_argument(
        "--launcher",
        choices=["videorec", "uvicorn"],
        default="videorec",
        help="`videorec serve`, or uvicorn directly (no access log)",
    )
    ap.add_argument("--port", type=int, default=0, help="0: a free port")
    ap.add_argument("--ids", type=int, default=1000, help="users and videos to rotate over")
    ap.add_argument(
        "--include-cold",
        action="store_true",
        help="keep sampled users without base recommendations",
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--p99-budget-ms", type=float, default=15.0)
    ap.add_argument("--startup-timeout", type=float, default=120.0)
    ap.add_argument("--force", action="store_true", help="sweep even when the probe fails")
    ap.add_argument(
        "--profile-one",
        nargs="?",
        const="home",
        choices=list(ENDPOINTS),
        help="profile requests in-process instead of the load test",
    )
    ap.add_argument("--profile-requests", type=int, default=1)
    ap.add_argument("--markdown", action="store_true", help="print the tables")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument(
        "--allow-default-prefix",
        action="store_true",
        help="serve a config whose precompute.key_prefix is the default 'videorec'",
    )
    args = ap.parse_args()
    load_before = bench_host.load_average()

    from videorec.config import PrecomputeConfig, load_config

    cfg = load_config(args.config)
    default_root = PrecomputeConfig().key_prefix
    if cfg.precompute.key_prefix == default_root and not args.allow_default_prefix:
        # The home feed logs impressions to the event stream and changes live state
        # under the key root; the hourly drain would put the benchmark's traffic into
        # the event log that training reads.
        raise SystemExit(
            f"{args.config}: precompute.key_prefix is the default {default_root!r}; give the "
            "benchmark its own key root (a config like /work/bench-data/bench.yaml), or pass "
            "--allow-default-prefix"
        )
    key = secrets.token_urlsafe(24)
    folder = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    try:
        from videorec.services import free_port

        port = args.port or free_port()
        config = bench_config(args.config.resolve(), key, args.workers, port, folder)
        ids = sample_ids(cfg, args.ids, args.seed, args.include_cold)
        log(
            f"generation {ids['generation']}: {len(ids['users'])} users, {len(ids['videos'])} "
            f"videos ({ids['share_of_users_with_recs']:.1%} of sampled users have recs)"
        )
        if args.profile_one:
            prof = profile_one(config, args.profile_one, key, ids, args.profile_requests, 20)
            print(prof.pop("report"))
            print(json.dumps(prof, indent=1))
            if args.json:
                args.json.write_text(json.dumps(prof, indent=1))
            return 0

        wrk = args.wrk2_bin if args.rate else args.wrk_bin
        if shutil.which(wrk) is None:
            raise SystemExit(f"{wrk}: not found (apt-get install wrk; wrk2 builds from source)")
        load = Load(
            wrk, args.threads, args.duration, args.warmup, args.timeout, args.rate, {KEY_ENV: key}
        )
        ids_file = folder / "ids.txt"
        write_ids(ids_file, ids["users"], ids["videos"])
        client = redis_client(cfg)
        out: dict[str, Any] = {
            "machine": machine_facts(client, wrk, args.launcher, args.workers, load_before),
            "config": str(args.config.resolve()),
            "load": {
                "connections": args.connections,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "threads": args.threads,
                "timeout_s": args.timeout,
                "rate": args.rate,
            },
            "ids": ids,
            "endpoints": {},
        }
        server = Server(config, port, args.launcher, args.workers, folder / "server.log")
        out["server_start_s"] = round(server.start(args.startup_timeout), 2)
        log(f"server up on port {port} after {out['server_start_s']} s")
        out["ranker"] = served_ranker(f"http://127.0.0.1:{port}")
        log(f"ranker: {out['ranker']}")
        try:
            for name in args.endpoints:
                out["endpoints"][name] = sweep_endpoint(
                    name, ENDPOINTS[name], args, load, server, client, ids, ids_file, key
                )
        finally:
            server.stop()
        out["server_log_tail"] = server.tail()
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=1))
        if args.markdown:
            print(markdown(out))
        else:
            brief = {
                n: {
                    k: r.get(k)
                    for k in ("skipped", "highest_error_free", "highest_within_p99_budget")
                    if k in r
                }
                for n, r in out["endpoints"].items()
            }
            print(json.dumps({"machine": out["machine"], "endpoints": brief}, indent=1))
        return 0
    finally:
        if args.keep:
            log(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
