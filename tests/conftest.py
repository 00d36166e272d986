"""Shared fixtures: small synthetic data sets, a config rooted in a temp folder, Redis."""

from __future__ import annotations

import datetime as dt
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

SHARED = Path(__file__).resolve().parents[2] / "shared"
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


@pytest.fixture
def redis_url() -> str:
    """The real Redis server this machine runs (skip only where none can be found)."""
    from videorec.services import DEFAULT_REDIS_URL, redis_answers

    if not redis_answers(DEFAULT_REDIS_URL):
        pytest.skip("no Redis at 127.0.0.1:6379")
    return DEFAULT_REDIS_URL


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
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
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


@pytest.fixture
def s3_store(s3_endpoint: str, tmp_path: Path) -> Any:
    """An S3ArtifactStore in a fresh bucket of the moto server."""
    from videorec.artifacts import S3ArtifactStore

    client = s3_client(s3_endpoint)
    bucket = f"b-{tmp_path.name.lower().replace('_', '-')[:40]}"
    client.create_bucket(Bucket=bucket)
    return S3ArtifactStore(bucket, "videorec", client, cache_dir=tmp_path / "cache")
