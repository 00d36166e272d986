"""``POST /api/v1/recommendations/feedback``: validate, record durably, apply at once.

The synchronous path is validate → append → respond: the event goes to the Redis
Stream (drained hourly into the event log, so the next retrain learns from it) in the
same MULTI/EXEC transaction that changes the user's live state, so either both happen
or neither, and the answer is sent only after they did. A client retry with the same
idempotency key (header ``Idempotency-Key`` or field ``idempotency_key``) gets the first
answer again, marked ``replayed``, and changes nothing; the event id is derived from
the key, so even a duplicate that slipped through would be one event in the log.

The key is claimed as ``pending`` for ``PENDING_TTL_S`` (a concurrent twin gets 409),
and the answer is stored in the same transaction as the state and the event: so when
the transaction's reply is lost (a timeout after Redis applied it), the retry finds the
answer and replays it instead of applying the feedback twice. A claim whose request
did not apply (429, Redis errors) is released, and if Redis cannot be told, it lapses
within seconds, not after the answer's 24 hours.

Effects on the next response: ``watch`` hides the video; ``not_interested`` and
``dislike`` hide it and add a strike against its channel, which is hidden after
``serving.channel_strike_limit`` strikes; ``click`` counts toward the video's
Thompson-sampling posterior.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from videorec.contract import MAX_WATCH_TO_DURATION
from videorec.redis_keys import (
    DELETE_IF_EQUAL_LUA,
    STATE_CHANNEL_STRIKES,
    STATE_DISLIKED,
    STATE_NOT_INTERESTED,
    STATE_WATCHED,
    STATS_CLICKS,
    encode_stream_event,
)
from videorec.serving import metrics
from videorec.serving.feed import MAX_ID, ApiError, Ctx, check_rate, iso_now, now_s, rate_limit_cmds

Action = Literal["like", "dislike", "not_interested", "watch", "skip", "share", "click"]
PLAYBACK = ("watch", "skip")
IDEMPOTENCY = r"^[A-Za-z0-9_.:-]{8,128}$"
# How long a claimed key stays "pending": far longer than a request's Redis round trips
# (serving.redis_timeout_ms: tens of milliseconds), short enough that a claim left by a
# failed request blocks the client's retries for seconds only.
PENDING_TTL_S = 10
PENDING = b"pending"


class Feedback(BaseModel):
    """The request body."""

    model_config = ConfigDict(extra="forbid")

    video_id: int = Field(ge=0, le=MAX_ID)
    action: Action
    watch_time: float | None = Field(default=None, ge=0.0, le=86_400.0, allow_inf_nan=False)
    reason: str | None = Field(default=None, max_length=200)
    request_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    position: int | None = Field(default=None, ge=0, le=10_000)
    idempotency_key: str | None = Field(default=None, pattern=IDEMPOTENCY)


def check(body: Feedback, duration_s: float | None) -> None:
    """The rules a schema cannot say: watch time for playback actions only, and within
    the contract's bound of the video's duration."""
    if body.action == "watch" and body.watch_time is None:
        raise ApiError(400, "missing_field", "watch_time is required for a watch", "watch_time")
    if body.watch_time is not None and body.action not in PLAYBACK:
        raise ApiError(422, "invalid_value", "watch_time: only for watch and skip", "watch_time")
    if (
        body.watch_time is not None
        and duration_s
        and body.watch_time > MAX_WATCH_TO_DURATION * duration_s
    ):
        raise ApiError(422, "invalid_value",
                       f"watch_time: over {MAX_WATCH_TO_DURATION:g}× the video's duration", "watch_time")  # fmt: skip


async def record(
    ctx: Ctx, caller: str, user_id: int, body: Feedback, header_key: str | None
) -> dict[str, Any]:
    """Apply and log one feedback; returns the answer (the stored one on a replay)."""
    t = now_s()
    cat, s = ctx.state.catalogue, ctx.cfg.serving
    if not len(cat):
        raise ApiError(503, "not_ready", "the catalogue is not loaded yet")
    row = cat.row(body.video_id)
    if row is None:
        raise ApiError(
            404, "unknown_video", f"video {body.video_id} is not in the catalogue", "video_id"
        )
    duration = None if cat.duration_s[row] != cat.duration_s[row] else float(cat.duration_s[row])
    check(body, duration)
    key = header_key or body.idempotency_key
    event_id = (
        hashlib.sha256(f"{caller}\0{user_id}\0{key}".encode()).hexdigest()[:32]
        if key
        else uuid.uuid4().hex
    )
    idem = ctx.live.idempotency(caller, f"{user_id}:{key}") if key else None
    pipe = ctx.client.pipeline(transaction=False)
    n_rl = rate_limit_cmds(pipe, ctx, caller, user_id, t)
    if idem:
        pipe.set(idem, PENDING, nx=True, ex=PENDING_TTL_S)
        pipe.get(idem)
    replies = await _execute(pipe)
    claimed = bool(idem and replies[n_rl])
    try:
        check_rate(replies[:n_rl], ctx, True, t)
    except ApiError:
        if claimed:  # refused before anything applied: the retry Retry-After asks for is new
            await _release(ctx, idem)
        raise
    if idem and not claimed:  # the key was used before
        stored = replies[n_rl + 1]
        if stored in (None, PENDING):
            raise ApiError(409, "in_progress", "a request with this idempotency key is in progress",
                           "idempotency_key")  # fmt: skip
        return {**json.loads(stored), "replayed": True}
    answer = {"accepted": True, "event_id": event_id, "video_id": body.video_id,
              "action": body.action, "replayed": False}  # fmt: skip
    try:
        age_h = (t - float(cat.published_at[row])) / 3600.0  # NaN (unknown) is not fresh
        fresh = 0.0 <= age_h < s.fresh_age_h
        stored = (idem, json.dumps(answer)) if idem else None
        await _apply(
            ctx, user_id, body, int(cat.channel[row]), duration, event_id, t, fresh, stored
        )
    except Exception as err:
        # Applied or not is unknown (a lost reply); the answer, stored with the state,
        # tells a retry with the key which, so only a still-pending claim is released.
        if idem:
            await _release(ctx, idem)
        retry = "retry with the same idempotency key" if idem else "not safe to retry blindly"
        raise ApiError(503, "unavailable",
                       f"feedback outcome unknown ({type(err).__name__}): {retry}") from err  # fmt: skip
    metrics.FEEDBACK.labels(body.action).inc()
    return answer


async def _release(ctx: Ctx, idem: str) -> None:
    """Drop the claim on ``idem`` if it is still pending; quietly (Redis may be down:
    the claim then lapses after ``PENDING_TTL_S``)."""
    await _execute_quiet(ctx.client.eval(DELETE_IF_EQUAL_LUA, 1, idem, PENDING))


async def _execute(pipe: Any) -> list[Any]:
    try:
        return await pipe.execute()
    except Exception as err:
        raise ApiError(503, "unavailable", f"feedback not recorded: {type(err).__name__}") from err


async def _execute_quiet(awaitable: Any) -> None:
    with contextlib.suppress(Exception):
        await awaitable


async def _apply(ctx: Ctx, user_id: int, body: Feedback, channel: int, duration: float | None,
                 event_id: str, t: float, fresh: bool,
                 stored: tuple[str, str] | None = None) -> None:  # fmt: skip
    """One transaction: the user's live state, the event on the stream and, with
    ``stored`` (idempotency key, answer JSON), the answer a retry replays."""
    s = ctx.cfg.serving
    state = ctx.live.user_state(user_id)
    tx = ctx.client.pipeline(transaction=True)
    if body.action in ("watch", "skip"):
        tx.hset(state, f"{STATE_WATCHED}{body.video_id}", int(t))
    if body.action == "not_interested":
        tx.hset(state, f"{STATE_NOT_INTERESTED}{body.video_id}", int(t))
    if body.action == "dislike":
        tx.hset(state, f"{STATE_DISLIKED}{body.video_id}", int(t))
    if body.action in ("not_interested", "dislike") and channel >= 0:
        tx.hincrby(state, f"{STATE_CHANNEL_STRIKES}{channel}", 1)
    tx.expire(state, s.state_ttl_s)
    if body.action == "click" and fresh:  # the posteriors are of fresh videos only
        tx.hincrby(ctx.live.explore_stats, f"{STATS_CLICKS}{body.video_id}", 1)
    event = {"event_id": event_id, "ts": iso_now(t), "user_id": user_id, "video_id": body.video_id,
             "event_type": body.action, "watch_time_s": body.watch_time,
             "video_duration_s": duration, "request_id": body.request_id, "position": body.position}  # fmt: skip
    tx.xadd(
        ctx.live.events_stream, encode_stream_event(event), maxlen=s.stream_maxlen, approximate=True
    )
    if stored is not None:
        tx.set(stored[0], stored[1], ex=s.idempotency_ttl_s)
    await tx.execute()
    if "feedback_reply_lost" in s.fault_injection:
        raise TimeoutError("fault injection: feedback_reply_lost (applied, reply dropped)")
