"""Base recommendations as a Spark job, for when one machine cannot refresh every user.

Writing base recommendations is a pure map over chunks of users
(``compute.top_unwatched``), so it runs unchanged in Spark executors: the users, their
embeddings and watched sets are a DataFrame read by Spark from the artifacts; the
index file is shipped to every executor (``SparkContext.addFile``); each partition opens the index once, searches its users in
Arrow batches of ``precompute.users_per_chunk``, writes its own pipelined keys into
the same generation, counts them back with ``EXISTS`` and returns only its counts.
The driver compares the sums with what it meant to write before the publish. The
rest of the generation (similar videos, features, trending) stays on the driver:
it is catalogue-sized, not user-sized.

PySpark is imported inside the functions: this module is loaded only when a caller
hands ``precompute`` a SparkSession (``videorec precompute run --engine spark``).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from videorec import artifact_names as names
from videorec import redis_keys
from videorec.precompute import compute, inputs
from videorec.precompute.publish import GenerationWriter, RedisWriteError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from videorec.precompute.run import Inputs

RESULT_SCHEMA = pa.schema([
    ("written", pa.int64()), ("present", pa.int64()), ("short", pa.int64()),
    ("items", pa.int64()), ("pairs", pa.int64()), ("max_watched", pa.int64()),
])  # fmt: skip


def users_frame(
    spark: SparkSession, inp: Inputs, user_embeddings: Path, t: dt.datetime, active_days: int
) -> DataFrame:
    """user_id, embedding (array<float>), watched (array<long>) of every active user with
    an embedding: the model's user embeddings joined with the watched set, read by Spark."""
    from pyspark.sql import functions as F

    since = t - dt.timedelta(days=active_days)
    watched = (
        spark.read.parquet(str(inp.fdir / names.WATCHED))
        .groupBy("user_id")
        .agg(F.max("last_played_at").alias("_last"), F.collect_list("video_id").alias("watched"))
        .where((F.col("_last") >= F.lit(since)) & (F.col("_last") <= F.lit(t)))
        .drop("_last")
    )
    emb = spark.read.parquet(str(user_embeddings)).select(
        "user_id", F.col("embedding").cast("array<float>").alias("embedding")
    )
    return watched.join(emb, "user_id")


def write_recs_spark(
    spark: SparkSession, w: GenerationWriter, inp: Inputs, users: DataFrame, *,
    redis_url: str, k: int, partitions: int, users_per_chunk: int,
) -> dict[str, Any]:  # fmt: skip
    """Write every user's base recommendations from Spark executors; the driver's count."""
    from pyspark import SparkFiles

    from videorec.artifact_names import INDEX_FILE

    index_file = str(Path(inp.index_dir) / INDEX_FILE)
    spark.sparkContext.addFile(index_file)
    manifest, metric, d = inp.index.manifest, inp.metric, inp.index.index.d
    root, gen, ttl_s, batch = w.keys.root, w.gen, w.ttl_s, w.batch

    def partition(batches: Any) -> Any:
        import redis

        from videorec.indexing.reader import open_index_file

        index = open_index_file(SparkFiles.get(Path(index_file).name), manifest)
        part = GenerationWriter(
            redis.Redis.from_url(redis_url), redis_keys.RedisKeys(root), gen,
            ttl_s=ttl_s, batch=batch,
        )  # fmt: skip
        fam = part.family("recs", lambda u: part.keys.user_recs(gen, u))
        stats = dict.fromkeys(RESULT_SCHEMA.names, 0)
        for b in batches:
            top, rows = _chunk(index, b, d, k, metric)
            part.put_blobs(
                fam,
                inputs.ids(b.column(b.schema.get_field_index("user_id"))),
                redis_keys.encode_rows(top.ids, top.scores, top.lengths),
            )
            stats["written"] += b.num_rows
            stats["short"] += int((top.lengths < k).sum())
            stats["items"] += int(top.lengths.sum())
            stats["pairs"] += len(rows)
            if len(rows):
                stats["max_watched"] = max(stats["max_watched"], int(np.bincount(rows).max()))
        stats["present"] = part.count_present(fam)
        yield pa.RecordBatch.from_pylist([stats], schema=RESULT_SCHEMA)

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(users_per_chunk))
    from pyspark.sql import functions as F

    parts = (
        users.repartition(partitions, "user_id")
        .sortWithinPartitions(F.size("watched"))  # a batch's users share a search width
        .mapInArrow(partition, ", ".join(f"{n} long" for n in RESULT_SCHEMA.names))
        .collect()
    )
    total = {n: sum(r[n] for r in parts) for n in RESULT_SCHEMA.names if n != "max_watched"}
    if total["present"] != total["written"]:
        raise RedisWriteError(
            f"generation {gen}: recs: {total['present']} keys present of {total['written']} "
            f"written by the Spark executors; not published"
        )
    w.add_verified("recs", total["written"])
    return {
        "active_users": total["written"], "users_without_embedding": None,
        "watched_pairs": total["pairs"],
        "max_watched": max((r["max_watched"] for r in parts), default=0),
        "recs_per_user_mean": round(total["items"] / max(total["written"], 1), 2),
        "users_short_of_k": total["short"], "engine": "spark", "partitions": partitions,
    }  # fmt: skip


def _chunk(
    index: Any, b: pa.RecordBatch, d: int, k: int, metric: str
) -> tuple[compute.TopK, np.ndarray]:
    """One Arrow batch of users: their top ``k`` unwatched, and the watched rows."""
    emb = b.column(b.schema.get_field_index("embedding"))
    q = np.asarray(pc.list_flatten(emb).to_numpy(zero_copy_only=False), np.float32)
    watched = b.column(b.schema.get_field_index("watched"))
    rows = pc.list_parent_indices(watched).to_numpy(zero_copy_only=False)
    vids = inputs.ids(pc.list_flatten(watched))
    top = compute.top_unwatched(index, q.reshape(b.num_rows, d), rows, vids, k, metric=metric)
    return top, rows
