"""Shared fixtures: small synthetic data sets, a config rooted in a temp folder, Redis."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from videorec.config import Config, parse_config
from videorec.services import free_port

# `make test` runs two pytest-xdist workers, a test file to each. There, each worker's
# OpenMP (torch, FAISS) and BLAS use one thread: two workers each spinning two OpenMP
# threads on two cores made the training tests 2.1 times slower than alone. Set here,
# before any test module imports torch; the subprocesses the tests start inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

# The slowest test files first (their shares of a serial run, 2026-12-08: 258, 232,
# 160, 130, 115, 111, 100 and 74 s of 1,456 s), so that neither worker is left alone
# with one of them at the end; the rest keep their order. Only the run's length
# depends on this list.
HEAVY_FIRST = (
    "test_dags_e2e", "test_features", "test_features_incremental", "test_cli",
    "test_features_s3a", "test_training", "test_cli_human", "test_cli_bad_input",
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """HEAVY_FIRST's files first, in its order; the rest as collected."""
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable


SHARED = Path(__file__).resolve().parents[2] / "shared"
SKIP_ALLOWLIST = Path(__file__).with_name("skip_allowlist.yaml")
MOVIELENS_SMALL = SHARED / "datasets" / "ml-latest-small"


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    """The local profile with every path under this test's temp folder."""
    return parse_config(
        {
            "artifacts": {"root": str(tmp_path / "artifacts")},
            "data": {"dir": str(tmp_path / "data")},
            "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
        },
        "test",
    )


@pytest.fixture(scope="session")
def small_platform(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small clean synthetic platform, generated once per test session."""
    from videorec.datagen.synthetic import GeneratorParams, generate

    out = tmp_path_factory.mktemp("platform") / "small"
    params = GeneratorParams(
        users=3000, videos=4000, days=30, seed=7, end_date=dt.date(2026, 11, 1)
    )
    generate(params, out, config_digest="test", progress=False)
    return out


@pytest.fixture(scope="session")
def corrupt_platform(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic platform with 2% deliberately malformed events."""
    from videorec.datagen.synthetic import GeneratorParams, generate

    out = tmp_path_factory.mktemp("platform") / "corrupt"
    params = GeneratorParams(
        users=1500, videos=1000, days=14, seed=11, end_date=dt.date(2026, 11, 1), corrupt=0.02
    )
    generate(params, out, config_digest="test", progress=False)
    return out


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis server, found the way the product finds one (``resolve_redis``).

    The machine's server at 127.0.0.1:6379 when it answers; otherwise a private
    ``redis-server`` (or an embedded one) is started for the session. Never a skip:
    a test that needs Redis runs against a real one or fails.
    """
    from videorec.services import resolve_redis

    endpoint = resolve_redis(parse_config({}), folder=tmp_path_factory.mktemp("redis"))
    yield endpoint.url  # endpoint.keepalive holds an embedded server until the session ends
    if "started" in endpoint.how or endpoint.keepalive is not None:
        import redis

        with contextlib.suppress(redis.exceptions.RedisError):
            redis.Redis.from_url(endpoint.url).shutdown(nosave=True)


@pytest.fixture(scope="session")
def spark():
    """One real local Spark for the whole session (starting one costs about 10 s)."""
    from videorec.features.session import spark_session

    cfg = parse_config(
        {"spark": {"master": "local[2]", "shuffle_partitions": 4, "driver_memory": "2g"}}
    )
    session = spark_session(cfg, "videorec-tests")
    yield session
    session.stop()


# The S3 endpoint is moto's standalone server (an in-memory S3 API spoken to over HTTP):
# no S3-compatible server is packaged for this machine.
@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    # The venv's own moto (the pinned one) first: a machine-wide older moto fails
    # pyarrow's multipart uploads.
    venv_moto = Path(sys.executable).parent / "moto_server"
    exe = str(venv_moto) if venv_moto.is_file() else shutil.which("moto_server")
    assert exe, "no moto_server: `make setup` installs moto[server] into .venv"
    port = free_port()
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def s3_client(endpoint: str) -> Any:
    """A boto3 client for the moto endpoint."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def moto_env(endpoint: str) -> dict[str, str]:
    """The environment a subprocess (the CLI, Spark's driver) needs to reach the moto
    endpoint through boto3 and pyarrow's S3 filesystem, as a deployment's would."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


def upload_tree(client: Any, bucket: str, folder: Path, prefix: str) -> None:
    """Every file under ``folder`` to ``s3://bucket/prefix/<its relative path>``."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder)}")


class FailingUploads:
    """A real boto3 client whose n-th ``upload_file`` drops the connection
    (unit-level fault injection for the S3 store's failure paths)."""

    def __init__(self, client: Any, fail_at: int) -> None:
        self._client, self._n, self._fail_at = client, 0, fail_at

    def upload_file(self, *args: Any, **kwargs: Any) -> None:
        self._n += 1
        if self._n == self._fail_at:
            raise ConnectionError("network dropped mid-upload")
        self._client.upload_file(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@pytest.fixture
def s3_store(s3_endpoint: str, tmp_path: Path) -> Any:
    """An S3ArtifactStore in a fresh bucket of the moto server."""
    from videorec.artifacts import S3ArtifactStore

    client = s3_client(s3_endpoint)
    bucket = f"b-{tmp_path.name.lower().replace('_', '-')[:40]}"
    client.create_bucket(Bucket=bucket)
    return S3ArtifactStore(bucket, "videorec", client, cache_dir=tmp_path / "cache")


# --- the skip guard: a skip outside tests/skip_allowlist.yaml fails the run ----------


def load_skip_allowlist(path: Path = SKIP_ALLOWLIST) -> list[dict[str, Any]]:
    """The allow-list's entries; each must say which tests, which reason and why."""
    import yaml

    entries = yaml.safe_load(path.read_text()) or []
    for e in entries:
        missing = {"nodeid", "reason", "why"} - set(e)
        if missing:
            raise ValueError(f"{path}: entry {e} lacks {sorted(missing)}")
    return entries


def skip_is_allowed(nodeid: str, reason: str, entries: list[dict[str, Any]], in_ci: bool) -> bool:
    """True when an allow-list entry covers this skipped test (and, in CI, allows it there)."""
    import fnmatch
    import re

    for e in entries:
        if e.get("outside_ci_only") and in_ci:
            continue
        if fnmatch.fnmatch(nodeid, e["nodeid"]) and re.search(e["reason"], reason):
            return True
    return False


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # A skip can happen in setup (a fixture), in the call, or be an xfail; xfails
    # are expected outcomes, not skips.
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPPED.append((report.nodeid, _skip_reason(report)))


_SKIPPED: list[tuple[str, str]] = []
_UNALLOWED: list[tuple[str, str]] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import os

    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    entries = load_skip_allowlist()
    _UNALLOWED[:] = [(n, r) for n, r in _SKIPPED if not skip_is_allowed(n, r, entries, in_ci)]
    if _UNALLOWED and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _UNALLOWED:
        terminalreporter.section("skips outside tests/skip_allowlist.yaml fail the run", red=True)
        for nodeid, reason in _UNALLOWED:
            terminalreporter.line(f"SKIPPED (not allowed) {nodeid}: {reason}", red=True)
