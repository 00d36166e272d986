"""The serving app: ``create_app(cfg)``, and ``app`` for ``uvicorn videorec.serving.app:app``.

Endpoints so far (issue 13 adds the home feed, up-next, feedback and metrics):

- ``GET /healthz``: the process answers.
- ``GET /readyz``: Redis answers, a Redis generation is active and younger than
  ``serving.max_generation_age_s``, and an index is published; 503 naming what is not.
  It also reports the catalogue and the ranker in use (``checks.ranker.version``, null
  while none is published; never a reason for a 503: the rule ranks without one).
- ``GET /api/v1/recommendations/similar/{video_id}?limit=10``: the precomputed similar
  list with titles (two pipelined round trips); 404 for a video the generation does
  not know.

Every error is a JSON body ``{"error", "message", "field"?}``: 400 malformed JSON or a
missing field, 401 no or unknown key, 403 a key without the scope, 404 unknown video
or route, 422 a well-formed but invalid value, 503 nothing published yet.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations,
# which use values local to create_app (the configured limits).

import asyncio
import datetime as dt
import gc
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from videorec.config import Config, load_config
from videorec.redis_keys import BUILT_AT_FIELD, RedisKeys
from videorec.serving import feed, metrics
from videorec.serving.auth import Caller, Keyring
from videorec.serving.feed import MAX_ID, ApiError, Breaker, Context, Ctx
from videorec.serving.feedback import IDEMPOTENCY, Feedback, record
from videorec.serving.live import LiveState, refresh
from videorec.serving.ranker import ranker_check, refresh_ranker

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_url(cfg: Config) -> str:
    """The config's Redis, else ``$REDIS_URL``, else 127.0.0.1:6379 (never started here)."""
    return cfg.redis.url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


def create_app(cfg: Config | None = None) -> FastAPI:
    """The app over ``cfg`` (default: ``$VIDEOREC_CONFIG``, else the profile)."""
    import redis
    import redis.asyncio as aioredis

    cfg = cfg or load_config()
    s = cfg.serving
    keys = RedisKeys(cfg.precompute.key_prefix)
    keyring = Keyring(s.api_keys)
    budget_s = s.redis_timeout_ms / 1000.0

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = aioredis.Redis.from_url(
            redis_url(cfg), socket_timeout=budget_s, socket_connect_timeout=budget_s
        )
        # Bulk reads (a catalogue reload) get a longer budget, in a worker thread.
        bulk = redis.Redis.from_url(redis_url(cfg), socket_timeout=30, socket_connect_timeout=2)
        app.state.redis = client
        app.state.ctx = Ctx(
            cfg, client, LiveState(), Breaker(s.breaker_failures, s.breaker_cooldown_s)
        )
        await _refresh_once(app.state.ctx, bulk)
        task = asyncio.create_task(_refresher(app.state.ctx, bulk))
        yield
        task.cancel()
        await client.aclose()
        bulk.close()

    app = FastAPI(title="videorec serving", version="1", lifespan=lifespan)
    _error_handlers(app)
    app.add_middleware(LatencyMiddleware)

    # FastAPI's security schemes read the two headers straight off the request (and
    # document them in the OpenAPI); plain Header parameters cost several times more.
    bearer = HTTPBearer(auto_error=False, description="an API key as a bearer token")
    api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")

    def require(scope: str) -> Callable[..., Awaitable[Caller]]:
        async def check(
            token: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
            x_api_key: Annotated[str | None, Depends(api_key)],
        ) -> Caller:
            key = (token.credentials.strip() or None) if token else x_api_key
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

    can_read, can_feedback = require("read"), require("feedback")

    class HomeQuery(BaseModel):
        """The home feed's query: one model, validated in one pass (a parameter each
        cost FastAPI about 0.1 ms per request)."""

        limit: int = Field(default=20, ge=1, le=s.home_limit_max)
        cursor: str | None = Field(default=None, max_length=64)
        device: Device | None = None
        tz: str | None = Field(default=None, max_length=64, description="IANA time zone")
        country: str | None = Field(default=None, pattern="^[A-Z]{2}$")
        language: str | None = Field(default=None, pattern="^[a-z]{2}$")
        interests: str | None = Field(
            default=None, max_length=500, description="comma-separated categories"
        )

    UserId = Annotated[int, Header(alias="X-User-Id", ge=0, le=MAX_ID)]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        ctx = request.app.state.ctx
        checks = await _readiness(request.app.state.redis, keys, cfg)
        cat = ctx.state.catalogue
        checks["catalogue"] = {"ok": len(cat) > 0, "generation": cat.generation or None,
                               "videos": len(cat),
                               "new_videos": {"generation": cat.new_generation,
                                              "videos": int(cat.is_new.sum()),
                                              "ignored": ctx.state.new_ignored},
                               "refresh_errors": ctx.state.errors}  # fmt: skip
        checks["ranker"] = ranker_check(ctx.state, ctx.ranker_breaker.open)
        ok = all(c["ok"] for c in checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/api/v1/recommendations/home", response_model=dict[str, Any])
    async def home(
        request: Request,
        caller: Annotated[Caller, Depends(can_read)],
        user_id: UserId,
        q: Annotated[HomeQuery, Query()],
    ) -> Fast:
        context = _context(q.device, q.tz, q.country, q.language, q.interests)
        return Fast(
            await feed.home(request.app.state.ctx, caller.name, user_id, q.limit, q.cursor, context)
        )

    @app.get("/api/v1/recommendations/up-next", response_model=dict[str, Any])
    async def up_next(
        request: Request,
        caller: Annotated[Caller, Depends(can_read)],
        user_id: UserId,
        current_video: Annotated[int, Query(ge=0, le=MAX_ID)],
        watch_time: Annotated[float, Query(ge=0.0, le=86_400.0, allow_inf_nan=False)] = 0.0,
        total_duration: Annotated[
            float | None, Query(gt=0.0, le=86_400.0, allow_inf_nan=False)
        ] = None,
        limit: Annotated[int, Query(ge=1, le=s.similar_limit_max)] = 10,
        device: Annotated[Device | None, Query()] = None,
    ) -> Fast:
        context = _context(device, None, None, None, None)
        return Fast(await feed.up_next(request.app.state.ctx, caller.name, user_id, current_video,
                                  watch_time, total_duration, limit, context))  # fmt: skip

    @app.get("/api/v1/recommendations/similar/{video_id}", response_model=dict[str, Any])
    async def similar(
        request: Request,
        caller: Annotated[Caller, Depends(can_read)],
        video_id: Annotated[int, Path(ge=0, le=MAX_ID)],
        limit: Annotated[int, Query(ge=1, le=s.similar_limit_max)] = 10,
    ) -> Fast:
        return Fast(await feed.similar(request.app.state.ctx, caller.name, video_id, limit))

    @app.post("/api/v1/recommendations/feedback", status_code=202)
    async def feedback(
        request: Request,
        body: Feedback,
        caller: Annotated[Caller, Depends(can_feedback)],
        user_id: UserId,
        idempotency_key: Annotated[str | None, Header(pattern=IDEMPOTENCY)] = None,
    ) -> dict[str, Any]:
        return await record(request.app.state.ctx, caller.name, user_id, body, idempotency_key)

    return app


Device = Literal["mobile", "desktop", "tv", "tablet"]


class Fast(JSONResponse):
    """A JSON answer of plain Python values, returned as a Response so FastAPI skips
    ``jsonable_encoder`` (a quarter of a home request's CPU when it ran)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def _context(device: str | None, tz: str | None, country: str | None, language: str | None,
             interests: str | None) -> Context:  # fmt: skip
    """The request context; 422 for an unknown time zone."""
    if tz is not None:
        try:
            ZoneInfo(tz)
        # A folder of the zone database ("America") raises IsADirectoryError, a name it
        # cannot open other OSErrors: each is an unknown zone, not a server error.
        except (ZoneInfoNotFoundError, ValueError, OSError) as err:
            raise ApiError(422, "invalid_value", f"tz: unknown time zone {tz!r}", "tz") from err
    names = [i.strip() for i in (interests or "").split(",") if i.strip()]
    return Context(device, tz, country, language, names[:10])


async def _refresh_once(ctx: Ctx, bulk: Any) -> None:
    """One refresh of the worker's live state in a thread; a failure keeps the old one.
    The ranker pointer too: a new ranker is loaded in the thread and swapped in."""
    from videorec.artifacts import open_store
    from videorec.indexing.slots import active_version

    before = ctx.state.catalogue
    try:
        await asyncio.to_thread(refresh, ctx.state, bulk, ctx.cfg, feed.now_s())
    except Exception:
        ctx.state.errors += 1
    store = None
    try:
        store = open_store(ctx.cfg)
        version, _ = await asyncio.to_thread(active_version, store)
        ctx.state.index_ok = version is not None
    except Exception:
        ctx.state.index_ok = False
    try:
        if store is None:
            raise RuntimeError("the artifact store could not be opened")
        await asyncio.to_thread(refresh_ranker, ctx.state, store, ctx.cfg, feed.now_s())
    except Exception as err:  # the store unreadable: the ranker in use keeps serving
        ctx.state.ranker_status.error = f"pointer unreadable: {type(err).__name__}: {err}"
    if ctx.state.catalogue is not before:
        # A new catalogue is ~10^5 long-lived objects; frozen, the collector stops
        # walking them on every full collection (pauses that landed in the p99).
        gc.collect()
        gc.freeze()
    meta_age = ctx.state.catalogue.generation
    if meta_age:
        metrics.GENERATION_AGE.set(_generation_age(meta_age))


def _generation_age(gen: str) -> float:
    """Seconds since the logical time a generation id starts with (``yyyymmddThhmm``)."""
    try:
        at = dt.datetime.strptime(gen[:13], "%Y%m%dT%H%M").replace(tzinfo=dt.UTC)
    except ValueError:
        return float("nan")
    return feed.now_s() - at.timestamp()


async def _refresher(ctx: Ctx, bulk: Any) -> None:
    while True:
        await asyncio.sleep(ctx.cfg.serving.refresh_s)
        await _refresh_once(ctx, bulk)
        if ctx.spool:
            await ctx.replay_spool()


class LatencyMiddleware:
    """Observes each request's latency by endpoint (pure ASGI: no per-request task)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            metrics.REQUESTS.labels(endpoint_name(scope["path"]), f"{status[0] // 100}xx").observe(
                time.perf_counter() - t0
            )


def endpoint_name(path: str) -> str:
    """A bounded label for ``path``: home, up-next, similar, feedback, healthz, ..."""
    parts = path.strip("/").split("/")
    if len(parts) >= 4 and parts[:3] == ["api", "v1", "recommendations"]:
        return parts[3] if parts[3] in ("home", "up-next", "similar", "feedback") else "other"
    return parts[0] if parts and parts[0] in ("healthz", "readyz", "metrics") else "other"


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
        loc = first.get("loc", ())
        field = ".".join(str(p) for p in loc[1:]) or None
        if first.get("type") == "json_invalid":
            return ApiError(400, "malformed_json", "the body is not valid JSON").response()
        # The body itself, not one of its fields (absent, null, a list, not JSON typed).
        what = field or ("the request body" if loc[:1] == ("body",) else "the request")
        if first.get("type") == "missing":
            return ApiError(400, "missing_field", f"{what} is required", field).response()
        return ApiError(422, "invalid_value", f"{what}: {first.get('msg')}", field).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if err.status_code == 404 else "http_error"
        return ApiError(err.status_code, kind, str(err.detail)).response()


app = create_app()
