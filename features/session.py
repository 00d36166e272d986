"""Building the SparkSession from the config, and the contract's schemas in Spark terms."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import pyarrow as pa

from videorec.config import Config
from videorec.services import find_java

if TYPE_CHECKING:
    from pyspark.sql import Column, SparkSession
    from pyspark.sql.types import DataType, StructType


def spark_session(cfg: Config, app_name: str = "videorec") -> SparkSession:
    """A SparkSession on the config's master (``local[*]`` locally), UTC, Arrow on;
    under ``spark-submit``, on the master it was submitted to.

    Reuses an active session (``spark-submit`` makes one; tests share one). Raises
    ServiceUnavailable, saying what to install, when no Java runtime is found.
    """
    java = find_java()
    os.environ.setdefault("JAVA_HOME", os.path.dirname(os.path.dirname(os.path.realpath(java))))
    # Executors run this interpreter, so they import the same videorec and pyarrow.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        # Not under spark-submit: the config says where to run. Under spark-submit
        # (the DAG's operator) the connection's --master and the submit's driver memory
        # and JVM options win, so one DAG runs locally or on a cluster by changing the
        # connection.
        builder = (
            builder.master(cfg.spark.master)
            .config("spark.driver.memory", cfg.spark.driver_memory)
            .config("spark.driver.extraJavaOptions", cfg.spark.java_options)
        )
    builder = (
        builder.config("spark.sql.shuffle.partitions", str(cfg.spark.shuffle_partitions))
        .config("spark.executor.extraJavaOptions", cfg.spark.java_options)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # A frame made from an Arrow table (the catalogue, the users, the id lookups)
        # references its rows as an RDD rather than holding them in the plan: a plan
        # holding 500k users' rows made every later transformation of every frame
        # built on it re-analyse them (53 ms a withColumn against 7 ms, measured here).
        # Joins that should broadcast such a frame say so.
        .config("spark.sql.execution.arrow.localRelationThreshold", "0")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
        # Write UTC instants as Parquet TIMESTAMP(MICROS, adjusted to UTC), the contract's
        # type, rather than legacy INT96, so Arrow readers get tz-aware UTC timestamps.
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        # Persisted frames (the checked events, the plays, the users' sequences, the
        # merged partials) are cached without Spark's columnar compression: building the
        # compressed cache cost more CPU than it saved here (5M-event full pass 111 and
        # 117 s against 128 and 134 s; 7.5M cached events 955 MB against 492 MB). A
        # cluster short of executor memory sets it back to "true" in spark.conf.
        .config("spark.sql.inMemoryColumnarStorage.compressed", "false")
        # Whole-stage code whose method would pass HotSpot's JIT limit (8,000 bytes of
        # bytecode) is not generated: those operators run Spark's own compiled code.
        # Compiling the huge methods instead (spark.java_options) was slower: 5M-event
        # full passes, A B B A, 140.0 and 129.9 s with the flag alone against 116.7
        # and 109.1 s with this limit too; daily runs 80.0 and 76.5 s against 74.1 and
        # 71.7 s (docs/benchmarks.md).
        .config("spark.sql.codegen.hugeMethodLimit", "8000")
    )
    for key, value in cfg.spark.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    if LISTING_PARALLELISM not in cfg.spark.conf:
        spark.conf.set(LISTING_PARALLELISM, str(listing_tasks(spark)))
    return spark


# The stage reads exactly the event files its version was planned from, one path each
# (1,980 at 5M events, 7,920 at 20M). Past 32 paths Spark checks them in a listing job
# of min(paths, this setting) tasks, 10,000 by default: one task a file. On local[2]
# those tasks took 5.5 to 9.9 s of a 5M full pass before its first row was read, and
# 0.5 to 2.5 s as two tasks (docs/benchmarks.md). As many tasks as the cluster has
# cores keeps the listing parallel there (S3 answers each file's status in a request).
LISTING_PARALLELISM = "spark.sql.sources.parallelPartitionDiscovery.parallelism"


def listing_tasks(spark: SparkSession) -> int:
    """The tasks of a file-listing job: Spark's default parallelism (the cores of
    ``local[N]``, the executors' cores on a cluster), at least 1."""
    return max(1, int(spark.sparkContext.defaultParallelism))


def spark_type(t: pa.DataType) -> DataType:
    """The Spark SQL type of an Arrow type used by the contract."""
    from pyspark.sql import types as T

    if pa.types.is_string(t):
        return T.StringType()
    if pa.types.is_int64(t):
        return T.LongType()
    if pa.types.is_int32(t):
        return T.IntegerType()
    if pa.types.is_float64(t):
        return T.DoubleType()
    if pa.types.is_float32(t):
        return T.FloatType()
    if pa.types.is_boolean(t):
        return T.BooleanType()
    if pa.types.is_timestamp(t):
        return T.TimestampType()
    if pa.types.is_list(t):
        return T.ArrayType(spark_type(t.value_type))
    raise TypeError(f"no Spark type for Arrow {t}")


def spark_schema(schema: pa.Schema) -> StructType:
    """The Spark StructType of an Arrow schema (all fields nullable, as Spark reads them)."""
    from pyspark.sql import types as T

    return T.StructType([T.StructField(f.name, spark_type(f.type), True) for f in schema])


def spark_uri(uri: str) -> str:
    """Spark's name for a location: ``s3://`` becomes ``s3a://`` (Hadoop's S3 connector)."""
    return "s3a://" + uri[len("s3://") :] if uri.startswith("s3://") else uri


class SparkRuleOps:
    """The contract's :class:`videorec.contract.RuleOps` over Spark columns, so the
    feature job evaluates :func:`videorec.contract.event_row_checks` in the JVM."""

    @staticmethod
    def col(name: str) -> Column:
        from pyspark.sql import functions as F

        return F.col(name)

    @staticmethod
    def is_null(x: Column) -> Column:
        return x.isNull()

    @staticmethod
    def non_finite(x: Column) -> Column:
        from pyspark.sql import functions as F

        # isnan(null) is false in Spark; the contract wants null, as Arrow gives.
        return F.when(x.isNotNull(), F.isnan(x) | (F.abs(x) == F.lit(float("inf"))))

    @staticmethod
    def isin(x: Column, values: tuple[str, ...]) -> Column:
        return x.isin(*values)

    @staticmethod
    def or_false(x: Column) -> Column:
        from pyspark.sql import functions as F

        return F.coalesce(x, F.lit(False))

    @staticmethod
    def micros(x: Column) -> Column:
        from pyspark.sql import functions as F

        return F.unix_micros(x)


class SparkExampleOps:
    """:class:`videorec.examples.WeightOps` and :class:`videorec.examples.PlayOps` over
    Spark columns: the feature job's :func:`videorec.examples.example_weight` and
    :func:`videorec.examples.played_enough`."""

    @staticmethod
    def num(name: str) -> Column:
        from pyspark.sql import functions as F

        return F.col(name).cast("double")

    @staticmethod
    def least(x: Column, cap: float) -> Column:
        from pyspark.sql import functions as F

        return F.least(x, F.lit(float(cap)))

    @staticmethod
    def power(x: Column, exp: float) -> Column:
        from pyspark.sql import functions as F

        return F.pow(x, F.lit(float(exp)))

    @staticmethod
    def if_null(x: Column, value: float) -> Column:
        from pyspark.sql import functions as F

        return F.coalesce(x, F.lit(float(value)))

    @staticmethod
    def is_null(x: Column) -> Column:
        return x.isNull()

    @staticmethod
    def is_watch() -> Column:
        from pyspark.sql import functions as F

        return F.col("event_type") == "watch"

    @staticmethod
    def at_least(x: Column, bound: float) -> Column:
        from pyspark.sql import functions as F

        # Spark orders NaN above every number: NaN >= bound is true.
        return x >= F.lit(float(bound))

    @staticmethod
    def if_else(cond: Column, then: Column, otherwise: Column) -> Column:
        from pyspark.sql import functions as F

        return F.when(cond, then).otherwise(otherwise)


def partition_start_us(partition_dt: Column) -> Column:
    """A ``dt=YYYY-MM-DD`` partition value as its UTC midnight in µs (the session is
    UTC), null when it is not such a date, as the contract's Arrow reader parses it."""
    from pyspark.sql import functions as F

    return F.unix_micros(F.try_to_timestamp(partition_dt, F.lit("yyyy-MM-dd")))
