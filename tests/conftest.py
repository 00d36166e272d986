"""Shared fixtures: small synthetic data sets, a config rooted in a temp folder, Redis."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from videorec.config import Config, parse_config

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
