"""The serving app: ``create_app(cfg)``, and ``app`` for ``uvicorn videorec.serving.app:app``.

Endpoints so far (issue 13 adds the home feed, up-next, feedback and metrics):

- ``GET /healthz``: the process answers.
- ``GET /readyz``: Redis answers, a Redis generation is active and younger than
  ``serving.max_generation_age_s``, and an index is published; 503 naming what is not.
- ``GET /api/v1/recommendations/similar/{video_id}?limit=10``: the precomputed similar
  list with titles (two pipelined round trips); 404 for a video the generation does
  not know.

Every error is a JSON body ``{"error", "message", "field"?}``: 400 malformed JSON or a
missing field, 401 no or unknown key, 403 a key without the scope, 404 unknown video
or route, 422 a well-formed but invalid value, 503 nothing published yet.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations,
# which use values local to create_app (the configured limits).

import datetime as dt
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from videorec.config import Config, load_config
from videorec.redis_keys import (
    BUILT_AT_FIELD,
    VIDEO_FEATURES,
    RedisKeys,
    decode_features,
    decode_scored,
)
from videorec.serving.auth import Caller, Keyring, presented_key

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# The video fields a list item carries (the hash's other fields stay in Redis).
ITEM_FIELDS = ("title", "channel_id", "channel_name", "category", "duration_s", "published_at",
               "views")  # fmt: skip


class ApiError(Exception):
    """An error answered as JSON with its status."""

    def __init__(self, status: int, error: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.error, self.message, self.field = status, error, message, field

    def response(self) -> JSONResponse:
        body = {"error": self.error, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return JSONResponse(body, status_code=self.status)


def redis_url(cfg: Config) -> str:
    """The config's Redis, else ``$REDIS_URL``, else 127.0.0.1:6379 (never started here)."""
    return cfg.redis.url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


def create_app(cfg: Config | None = None) -> FastAPI:
    """The app over ``cfg`` (default: ``$VIDEOREC_CONFIG``, else the profile)."""
    import redis.asyncio as aioredis

    cfg = cfg or load_config()
    s = cfg.serving
    keys = RedisKeys(cfg.precompute.key_prefix)
    keyring = Keyring(s.api_keys)
    budget_s = s.redis_timeout_ms / 1000.0

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.redis = aioredis.Redis.from_url(
            redis_url(cfg), socket_timeout=budget_s, socket_connect_timeout=budget_s
        )
        yield
        await app.state.redis.aclose()

    app = FastAPI(title="videorec serving", version="1", lifespan=lifespan)
    _error_handlers(app)

    def require(scope: str) -> Callable[..., Awaitable[Caller]]:
        async def check(
            authorization: str | None = Header(default=None),
            x_api_key: str | None = Header(default=None),
        ) -> Caller:
            key = presented_key(authorization, x_api_key)
            if key is None:
                raise ApiError(
                    401, "unauthenticated", "an API key is required (Bearer or X-API-Key)"
                )
            caller = keyring.caller(key)
            if caller is None:
                raise ApiError(401, "unauthenticated", "unknown API key")
            if scope not in caller.scopes:
                raise ApiError(403, "forbidden", f"this key lacks the {scope!r} scope")
            return caller

        return check

    can_read = require("read")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        checks = await _readiness(request.app.state.redis, keys, cfg)
        ok = all(c["ok"] for c in checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.get("/api/v1/recommendations/similar/{video_id}")
    async def similar(
        request: Request,
        _caller: Annotated[Caller, Depends(can_read)],
        video_id: Annotated[int, Path(ge=0)],
        limit: Annotated[int, Query(ge=1, le=s.similar_limit_max)] = 10,
    ) -> dict[str, Any]:
        return await _similar(request.app.state.redis, keys, video_id, limit)

    return app


async def _generation(client: Any, keys: RedisKeys) -> str:
    """The active generation, or a 503 when nothing is published."""
    raw = await client.get(keys.pointer)
    if raw is None:
        raise ApiError(503, "not_ready", "no generation is published yet")
    return raw.decode() if isinstance(raw, bytes) else raw


async def _similar(client: Any, keys: RedisKeys, video_id: int, limit: int) -> dict[str, Any]:
    """The video's precomputed similar list, best first, with each item's fields."""
    gen = await _generation(client, keys)
    pipe = client.pipeline(transaction=False)
    pipe.get(keys.similar(gen, video_id))
    pipe.hget(keys.video_features(gen, video_id), "title")
    blob, title = await pipe.execute()
    if blob is None and title is None:
        raise ApiError(
            404, "unknown_video", f"video {video_id} is not in the catalogue", "video_id"
        )
    ids, scores = decode_scored(blob) if blob is not None else (np.zeros(0, np.int64), np.zeros(0))
    ids, scores = ids[:limit], scores[:limit]
    pipe = client.pipeline(transaction=False)
    for vid in ids.tolist():
        pipe.hmget(keys.video_features(gen, vid), ITEM_FIELDS)
    rows = await pipe.execute() if len(ids) else []
    name = title.decode() if isinstance(title, bytes) else f"video {video_id}"
    items = []
    for vid, score, values in zip(ids.tolist(), scores.tolist(), rows, strict=True):
        raw = {f: v for f, v in zip(ITEM_FIELDS, values, strict=True) if v is not None}
        item = {"video_id": vid, **decode_features(raw, VIDEO_FEATURES)}
        items.append({**item, "similarity_score": round(float(score), 4),
                      "reason": f"Similar to “{name}”", "source": "similar"})  # fmt: skip
    return {"video_id": video_id, "generation": gen, "items": items}


async def _readiness(client: Any, keys: RedisKeys, cfg: Config) -> dict[str, dict[str, Any]]:
    """{check: {"ok", ...}} for Redis, the generation's age and the index pointer."""
    import redis as redis_lib

    from videorec.artifacts import open_store
    from videorec.indexing.slots import active_version

    checks: dict[str, dict[str, Any]] = {}
    try:
        await client.ping()
        checks["redis"] = {"ok": True}
        gen = await client.get(keys.pointer)
        built = await client.hget(keys.meta(gen.decode()), BUILT_AT_FIELD) if gen else None
    except (redis_lib.exceptions.RedisError, OSError) as err:
        checks["redis"] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        gen = built = None
    if gen is None:
        checks["generation"] = {"ok": False, "error": "no generation is published"}
    else:
        # A health check compares with the wall clock; no output depends on it.
        age = dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(built.decode()) if built else None
        ok = age is not None and age.total_seconds() <= cfg.serving.max_generation_age_s
        checks["generation"] = {
            "ok": ok, "id": gen.decode(),
            "age_s": None if age is None else round(age.total_seconds(), 1),
            "max_age_s": cfg.serving.max_generation_age_s,
        }  # fmt: skip
    try:
        version, _ = active_version(open_store(cfg))
        checks["index"] = {"ok": version is not None, "version": version}
    except Exception as err:  # any store failure makes the process not ready, named
        checks["index"] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    return checks


def _error_handlers(app: FastAPI) -> None:
    """Every error as JSON naming the problem (and the field, where there is one)."""

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, err: ApiError) -> JSONResponse:
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        if first.get("type") == "json_invalid":
            return ApiError(400, "malformed_json", "the body is not valid JSON").response()
        if first.get("type") == "missing":
            return ApiError(400, "missing_field", f"{field} is required", field).response()
        return ApiError(422, "invalid_value", f"{field}: {first.get('msg')}", field).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if err.status_code == 404 else "http_error"
        return ApiError(err.status_code, kind, str(err.detail)).response()


app = create_app()
