"""The serving shim as a real uvicorn process against the real Redis.

A small generation (similar lists and video feature hashes) is written into Redis
under its own key root; the app reads it over HTTP. Every error is JSON.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
import yaml

from videorec.redis_keys import (
    JSON_FIELD,
    STATUS_COMPLETE,
    VIDEO_FEATURES,
    RedisKeys,
    encode_field,
    encode_scored,
)
from videorec.services import free_port

READ_KEY, FEEDBACK_KEY = "test-read-key", "test-feedback-key"
GEN = "20261101T0000-servingtest"
VIDEOS = {
    10: {"title": "Ten", "category": "Music", "channel_id": 1, "channel_name": "One"},
    11: {"title": "Eleven", "category": "Music", "channel_id": 1, "channel_name": "One"},
    12: {"title": "Twelve", "category": "News", "channel_id": 2, "channel_name": "Two"},
    13: {"title": "Thirteen", "category": "News", "channel_id": 2, "channel_name": "Two"},
}
SIMILAR = {10: ([11, 12, 13], [0.9, 0.5, 0.25]), 11: ([10], [0.9])}


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def world(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("serving")
    root = f"servingtest{uuid.uuid4().hex[:8]}"
    keys = RedisKeys(root)
    client = redis.Redis.from_url(redis_url)
    for vid, fields in VIDEOS.items():
        mapping = {f: encode_field(VIDEO_FEATURES[f], v) for f, v in fields.items()}
        client.hset(keys.video_features(GEN, vid), mapping=mapping)
    for vid, (ids, scores) in SIMILAR.items():
        client.set(keys.similar(GEN, vid), encode_scored(ids, scores))
    built = dt.datetime.now(dt.UTC).isoformat()  # readiness compares with the wall clock
    client.hset(keys.meta(GEN), mapping={"status": STATUS_COMPLETE, "built_at": built,
                                         JSON_FIELD: json.dumps({"generation": GEN})})  # fmt: skip
    client.set(keys.pointer, GEN)
    conf = tmp / "serving.yaml"
    conf.write_text(yaml.safe_dump({
        "artifacts": {"root": str(tmp / "artifacts")},
        "redis": {"url": redis_url},
        "precompute": {"key_prefix": root},
        "serving": {"similar_limit_max": 50, "api_keys": [
            {"name": "reader", "sha256": _digest(READ_KEY), "scopes": ["read"]},
            {"name": "feedback-only", "sha256": _digest(FEEDBACK_KEY), "scopes": ["feedback"]},
        ]},
    }))  # fmt: skip
    return {"conf": conf, "tmp": tmp, "keys": keys, "client": client}


@pytest.fixture(scope="module")
def server(world: dict[str, Any]) -> Iterator[str]:
    """``uvicorn videorec.serving.app:app`` on a free port, as production starts it."""
    port = free_port()
    env = {**os.environ, "VIDEOREC_CONFIG": str(world["conf"])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "videorec.serving.app:app", "--port", str(port),
         "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.stdout.read().decode() if proc.stdout else ""
            proc.kill()
            pytest.fail(f"uvicorn did not start: {out[-3000:]}")
        time.sleep(0.2)
    yield base
    proc.terminate()
    proc.wait(timeout=30)


def _get(base: str, path: str, key: str | None = READ_KEY, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{base}{path}", params=params, headers=headers, timeout=10)


def test_similar_videos_best_first_with_their_fields(server: str) -> None:
    r = _get(server, "/api/v1/recommendations/similar/10", limit=2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["generation"] == GEN and body["video_id"] == 10
    assert [i["video_id"] for i in body["items"]] == [11, 12]
    first = body["items"][0]
    assert first["title"] == "Eleven" and first["channel_name"] == "One"
    assert first["category"] == "Music" and first["similarity_score"] == pytest.approx(0.9, 1e-3)
    assert first["reason"] == "Similar to “Ten”" and first["source"] == "similar"
    # X-API-Key works as well as a bearer token; the default limit is 10.
    r = httpx.get(f"{server}/api/v1/recommendations/similar/10", headers={"X-API-Key": READ_KEY})
    assert [i["video_id"] for i in r.json()["items"]] == [11, 12, 13]


@pytest.mark.parametrize(
    ("path", "key", "params", "status", "error", "field"),
    [
        ("/api/v1/recommendations/similar/10", None, {}, 401, "unauthenticated", None),
        ("/api/v1/recommendations/similar/10", "not-a-key", {}, 401, "unauthenticated", None),
        ("/api/v1/recommendations/similar/10", FEEDBACK_KEY, {}, 403, "forbidden", None),
        ("/api/v1/recommendations/similar/999", READ_KEY, {}, 404, "unknown_video", "video_id"),
        ("/api/v1/recommendations/similar/10", READ_KEY, {"limit": 0}, 422, "invalid_value",
         "limit"),
        ("/api/v1/recommendations/similar/10", READ_KEY, {"limit": 51}, 422, "invalid_value",
         "limit"),
        ("/api/v1/recommendations/similar/10", READ_KEY, {"limit": "ten"}, 422, "invalid_value",
         "limit"),
        ("/api/v1/recommendations/similar/ten", READ_KEY, {}, 422, "invalid_value", "video_id"),
        ("/api/v1/nothing-here", READ_KEY, {}, 404, "not_found", None),
    ],
)  # fmt: skip
def test_errors_are_json_naming_the_problem(
    server: str, path: str, key: str | None, params: dict[str, Any], status: int, error: str,
    field: str | None,
) -> None:  # fmt: skip
    r = _get(server, path, key, **params)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == error and body["message"]
    assert body.get("field") == field


def test_readiness_names_what_is_missing_then_passes(server: str, world: dict[str, Any]) -> None:
    from videorec.artifact_names import INDEX
    from videorec.artifacts import LocalArtifactStore
    from videorec.indexing.slots import assign_standby, publish

    assert _get(server, "/healthz", key=None).json() == {"status": "ok"}
    r = _get(server, "/readyz", key=None)
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["redis"]["ok"] and checks["generation"]["ok"]
    assert checks["generation"]["id"] == GEN and checks["generation"]["age_s"] < 600
    assert checks["index"] == {"ok": False, "version": None}
    store = LocalArtifactStore(world["tmp"] / "artifacts")
    with store.write_version(INDEX, "2026-11-01_m.i", {"gate": "passed"}):
        pass
    assign_standby(store, "2026-11-01_m.i")
    publish(store, "2026-11-01_m.i")
    r = _get(server, "/readyz", key=None)
    assert r.status_code == 200 and r.json()["checks"]["index"]["version"] == "2026-11-01_m.i"


def test_no_generation_is_a_503_not_a_crash(server: str, world: dict[str, Any]) -> None:
    client, keys = world["client"], world["keys"]
    client.delete(keys.pointer)
    try:
        r = _get(server, "/api/v1/recommendations/similar/10")
        assert r.status_code == 503 and r.json()["error"] == "not_ready"
        assert _get(server, "/readyz", key=None).json()["checks"]["generation"]["ok"] is False
    finally:
        client.set(keys.pointer, GEN)


def test_a_serving_process_loads_no_torch_spark_or_index_builder(world: dict[str, Any]) -> None:
    """The app built and asked one request in a fresh interpreter: what it loaded."""
    code = (
        "import json, sys\n"
        "from fastapi.testclient import TestClient\n"
        "from videorec.serving.app import app\n"
        "with TestClient(app) as c:\n"
        f"    r = c.get('/api/v1/recommendations/similar/10', headers={{'X-API-Key': '{READ_KEY}'}})\n"
        "    assert r.status_code == 200, r.text\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    env = {**os.environ, "VIDEOREC_CONFIG": str(world["conf"])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    banned = ("torch", "pyspark", "videorec.indexing.build", "videorec.training",
              "videorec.features", "videorec.precompute")  # fmt: skip
    assert not {m for m in loaded if m.split(".")[0] in banned or m.startswith(banned)}
    assert "videorec.serving.app" in loaded and "redis" in loaded
