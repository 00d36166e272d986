"""Redis precompute: base recommendations, similar videos, trending and popular lists,
written as one generation per run and published by one pointer flip (issue 11).

``precompute(cfg, index_version=..., logical_time=...)`` is the stage function;
``status(cfg, redis, at=...)`` reports the active generation. Key names and
encodings live in :mod:`videorec.redis_keys` (docs/redis-keys.md).
"""

from videorec.precompute.publish import PrecomputeError, PrecomputeInputError, RedisWriteError
from videorec.precompute.run import generation_id, precompute, status

__all__ = [
    "PrecomputeError",
    "PrecomputeInputError",
    "RedisWriteError",
    "generation_id",
    "precompute",
    "status",
]
