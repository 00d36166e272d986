"""The one validated config schema, its profiles and its digest.

A profile is a YAML file under ``conf/`` (``local.yaml``, ``prod.yaml``). The
``local`` profile is the schema's embedded defaults: an empty file gives it, so
``make run`` works with no config at all. Every section rejects unknown keys,
``${VAR}`` / ``${VAR:-default}`` are expanded from the environment, and every
error names the file and the dotted key that is wrong.

Stages take the whole :class:`Config` and read their own section; each output
records :meth:`Config.digest` so any artifact can be traced to the exact config.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = Path(os.environ.get("VIDEOREC_CONF_DIR", REPO_ROOT / "conf"))

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A config file is unreadable or invalid; the message names the file and key."""


class _Section(BaseModel):
    # Unknown keys are an error: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArtifactsConfig(_Section):
    # Local path (relative paths are taken from the repo root) or s3://bucket/prefix.
    root: str = "var/artifacts"
    # S3 only: a custom endpoint (MinIO, moto, Ceph) and region; None means AWS defaults.
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    # Features versions of the last this many logical dates are kept; older ones go
    # unless a stored index's model was trained on them (`videorec features gc`, and
    # the retrain DAG's last task; features/retention.py). A version is about 425 MiB
    # at 20M events a window (docs/benchmarks.md).
    keep_features_days: int = Field(default=7, ge=1)
    # Two-tower and ranker versions and ranking examples of the last this many logical
    # dates are kept; older ones go unless a stored index was built from the model or
    # the ranker pointer serves the ranker (`videorec models gc`, and the retrain DAG;
    # training/retention.py, ranking/retention.py). A two-tower version is mostly its
    # video embeddings: videos x dimension x 4 B (512 GB at 500M videos, 256-d).
    keep_model_days: int = Field(default=7, ge=1)

    @field_validator("s3_endpoint_url", "s3_region", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        # `${VAR:-}` in a profile yields "", which means "not set".
        return None if v == "" else v


class SparkConfig(_Section):
    # local[*] on one machine; spark://host:7077, yarn or k8s://... in production.
    master: str = "local[*]"
    driver_memory: str = "4g"
    # Small on purpose for local runs: Spark's default of 200 makes tiny tasks.
    shuffle_partitions: int = Field(default=8, ge=1)
    # JVM options of the driver and the executors. HotSpot does not JIT-compile a method
    # of more than 8,000 bytes of bytecode unless told to, and some of Spark's generated
    # code for the feature job is that large: without the flag it stays interpreted.
    # 5M-event full passes, A B B A: 117.5 and 121.3 s without, 103.5 and 112.1 s with
    # (docs/benchmarks.md). The session also keeps whole-stage code under that size
    # (spark.sql.codegen.hugeMethodLimit), which gained more; the flag covers the rest.
    # "" passes none; spark.*.extraJavaOptions in `conf` replace these.
    java_options: str = "-XX:-DontCompileHugeMethods"
    # Extra Spark properties passed as-is (e.g. spark.hadoop.fs.s3a.* for prod).
    conf: dict[str, str] = Field(default_factory=dict)


class MlflowConfig(_Section):
    tracking_uri: str = "sqlite:///var/mlflow/mlflow.db"
    experiment: str = "videorec"
    registered_model: str = "videorec-two-tower"
    registered_ranker: str = "videorec-ranker"  # the stage-2 ranker (ranking/)
    # Where the experiment keeps its runs' artifacts (the registered checkpoints the
    # gate loads its champion from), set when the experiment is created: a path
    # (relative to the repo root) or s3://bucket/prefix. None: `<artifacts.root>/mlflow`,
    # the store every worker reads; MLflow's own default is ./mlruns under the working
    # directory of whichever process created the experiment.
    artifact_location: str | None = None

    @field_validator("artifact_location", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v == "" else v


class AirflowConfig(_Section):
    """Where the local Airflow keeps its state (`make run`, `make airflow`).

    Production runs Airflow's metadata database on PostgreSQL (LocalExecutor and
    CeleryExecutor need it; the prod profile takes it from the environment); the
    embedded default is SQLite under ``home``.
    """

    # AIRFLOW_HOME: airflow.cfg, logs, and the SQLite metadata database.
    home: str = "var/airflow"
    # SQLAlchemy URL of the metadata database; empty: sqlite under ``home``.
    metadata_db: str = ""
    # Executor for `make airflow` (the scheduler); `airflow dags test` runs in-process.
    executor: str = "LocalExecutor"


class RedisConfig(_Section):
    # None: use $REDIS_URL if set, else 127.0.0.1:6379 if it answers, else start
    # a private redis-server under var/redis (see videorec.redis_server).
    url: str | None = None


class DataConfig(_Section):
    # The data set directory `make run` generates into and later stages read.
    dir: str = "var/data/synthetic-default"


class GenerateConfig(_Section):
    """Size and seed of the default synthetic platform (`videorec generate`)."""

    users: int = Field(default=20_000, ge=10, le=10**9)
    videos: int = Field(default=10_000, ge=20, le=10**9)
    days: int = Field(default=30, ge=1, le=366)
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    # The end of the generated window (exclusive), UTC midnight. Fixed rather than
    # "today" so that a seed always gives the same data.
    end_date: dt.date = dt.date(2026, 11, 1)
    # Share of deliberately malformed watch events, to exercise the validator.
    corrupt: float = Field(default=0.0, ge=0.0, le=0.5)
    # Share of sessions whose served requests (impressions, clicks) are logged.
    impressions: float = Field(default=0.03, ge=0.0, le=1.0)


class ContractConfig(_Section):
    """The data contract's limits (docs/data-contract.md); every reader applies them."""

    # A table read fails when more than this share of its rows is quarantined;
    # below it the bad rows are quarantined, counted and reported.
    max_invalid_share: float = Field(default=0.05, ge=0.0, le=1.0)
    # No play reports more watch time than this (a day), with or without a duration:
    # a play whose duration is unknown cannot be held to the 3x rule, and a garbage
    # watch time beside an equally garbage duration passes it; either would become a
    # full-weight positive.
    max_watch_time_s: float = Field(default=86_400.0, gt=0.0)
    # Durations above this (a day; uploads are capped at 12 h, live archives aside)
    # are invalid, like non-finite or non-positive ones.
    max_duration_s: float = Field(default=86_400.0, gt=0.0)
    # Events before this instant (UTC) are quarantined: an unset client clock reports
    # 1970. The default admits every source read so far (MovieLens starts in 1995).
    min_timestamp: dt.datetime = dt.datetime(1995, 1, 1, tzinfo=dt.UTC)
    # Ingestion files events by arrival day (dt=): an event may be filed up to this
    # many hours after the day it happened (a phone back online uploads its backlog),
    # never before it (ts after its partition day means a clock ahead: future_timestamp).
    late_arrival_hours: float = Field(default=72.0, ge=0.0)

    @field_validator("min_timestamp", mode="before")
    @classmethod
    def _date_is_midnight(cls, v: Any) -> Any:
        # A plain date (`1995-01-01` in YAML) means that day's UTC midnight.
        if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
            return dt.datetime.combine(v, dt.time(), dt.UTC)
        return v

    @field_validator("min_timestamp")
    @classmethod
    def _naive_is_utc(cls, v: dt.datetime) -> dt.datetime:
        # UTC is the contract's only zone, so a time without one is taken as UTC.
        return v.replace(tzinfo=dt.UTC) if v.tzinfo is None else v


class FeaturesConfig(_Section):
    """The Spark feature stage (`videorec features`): window, examples, split."""

    # Events read: [date - window_days, date).
    # MovieLens-style data spans years: give it a window that covers all of it.
    window_days: int = Field(default=30, ge=1, le=20_000)
    # A window holding less than this share of the data set's events is reported loudly
    # (a warning naming the fix): 30 days of a 22-year data set trains an empty model.
    # A window with no positive example at all is an error, whatever this says. 0 turns
    # the warning off (a production log that grows for years).
    min_window_share: float = Field(default=0.05, ge=0.0, le=1.0)
    # A play is a positive training example when completion >= this, or it was liked.
    # Sources without watch time (MovieLens) count every play as a positive.
    positive_min_completion: float = Field(default=0.5, ge=0.0, le=1.0)
    # Watch history kept per example and per user (most recent, time-ordered).
    history_len: int = Field(default=50, ge=1, le=500)
    # Most recent positives kept per user, so heavy users do not dominate training.
    max_examples_per_user: int = Field(default=300, ge=1)
    # Importance weight = completion^a * (min(watch_time, cap) / cap)^b + like_bonus·liked.
    # Completion leads, so a long video half-watched does not outweigh a short one
    # watched to the end; the capped watch-time term favours real viewing time.
    weight_completion_exp: float = Field(default=1.0, ge=0.0)
    weight_watch_time_cap_s: float = Field(default=300.0, gt=0.0)
    weight_watch_time_exp: float = Field(default=1.0, ge=0.0)
    like_bonus: float = Field(default=0.5, ge=0.0)
    # Temporal hold-out. last_days: the last eval_days of the window. per_user: each
    # user's last eval_fraction of plays by time (MovieLens-style data, where one
    # calendar day holds almost nobody). auto: per_user for MovieLens, else last_days.
    split: Literal["auto", "last_days", "per_user"] = "auto"
    eval_days: int = Field(default=1, ge=1)
    eval_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    # Categories kept per user in preferred_categories.
    top_categories: int = Field(default=5, ge=1)
    # The watched set (`watched/`, every video a user played in the window, hold-out
    # included) keeps each user's this many most recently played videos. Precompute
    # excludes them from base recommendations and asks the index for recs_k + the
    # chunk's largest count, so this bounds its search width as well as the table.
    max_watched_per_user: int = Field(default=2_000, ge=0)
    # Incremental by day (split last_days only; per_user always recomputes): each event
    # day's validated events, partial aggregates and examples with their history are
    # computed once, as day-keyed versions, and the window's tables are merged from
    # them (features/incremental.py). false: one Spark pass over the whole window.
    incremental: bool = True
    # Late events: an event is read for its day from the partitions filed on that day
    # and the next late_horizon_days (the day, and the day after it, whose duplicates
    # it decides, are recomputed when a file filed since holds a row timestamped on it).
    # Filed later than that, it is counted as `too_late` and left out of the features
    # (it stays in the event log). 3 days covers contract.late_arrival_hours (72), so no
    # valid event is left out; a smaller horizon recomputes fewer days each run.
    late_horizon_days: int = Field(default=3, ge=0, le=7)


class TrainingConfig(_Section):
    """The two-tower retrieval model and its training task (`videorec train`)."""

    embed_dim: int = Field(default=256, ge=8)  # output of both towers
    id_dim: int = Field(default=64, ge=8)
    hidden_dim: int = Field(default=512, ge=8)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    # Hash buckets: more than the ids expected, so collisions stay rare.
    user_buckets: int = Field(default=200_003, ge=2)
    video_buckets: int = Field(default=200_003, ge=2)
    channel_buckets: int = Field(default=20_011, ge=2)
    use_user_id: bool = True
    # Id dropout (DropoutNet, Volkovs et al., NeurIPS 2017): the share of training
    # examples whose candidate tower sees no video id embedding (and, independently,
    # no channel embedding), so that the tower learns to embed a video from its content
    # (text, category, channel, duration, age) alone. A video without training plays
    # is then embedded in content mode instead of from an untrained hashed id; 0 keeps
    # the id-only behaviour (and no content mode).
    id_dropout: float = Field(default=0.3, ge=0.0, lt=1.0)
    channel_dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    # all-MiniLM-L6-v2 over title + tags; "none" trains without text.
    text_encoder: Literal["all-MiniLM-L6-v2", "none"] = "all-MiniLM-L6-v2"
    text_cache_dir: str = "var/cache/text-embeddings"
    temperature: float = Field(default=0.05, gt=0.0)
    learn_temperature: bool = False
    logq_correction: bool = True
    # Uniformly sampled negatives added to the in-batch ones (mixed negative sampling).
    uniform_negatives: int = Field(default=0, ge=0)
    epochs: int = Field(default=20, ge=1)
    # The global batch: with N data-parallel processes (torchrun, training/distributed.py)
    # each takes batch_size / N examples a step (a multiple of N) and the in-batch
    # softmax gathers every process's candidates, so the loss is one process's.
    batch_size: int = Field(default=1024, ge=2)
    # Where the examples come from. "memory": the whole examples/ folder is read into
    # arrays (memory grows with the examples: about 0.5 KB each held at history_len 50,
    # 2.2 KB each at the peak while loading). "stream": read one Parquet row group (a
    # shard) at a time, a record batch at a time (training/stream.py): peak memory
    # stays flat whatever their number (bench/training_stream.py: 675 vs 692 MiB for
    # 200k vs 800k examples), about 8% fewer examples/s; logQ of the validation phase
    # comes from one streamed pass over the label column.
    data: Literal["memory", "stream"] = "memory"
    # The order of an epoch's examples. "permutation": a seeded permutation of all of
    # them (memory only). "shards": the seeded shard-and-buffer order (the shards in a
    # random order per epoch, then a shuffle buffer of shuffle_buffer examples; seed and
    # epoch determine it, training/stream.py documents it): the only order "stream"
    # has, and with "memory" the very batches "stream" trains on. "auto": permutation
    # in memory, shards streamed.
    shuffle: Literal["auto", "permutation", "shards"] = "auto"
    # Examples in the shuffle buffer of each process (about 0.5 KB each); at least the
    # number of examples makes the shards order a uniform permutation.
    shuffle_buffer: int = Field(default=65_536, ge=1)
    learning_rate: float = Field(default=2e-3, gt=0.0)
    weight_decay: float = Field(default=1e-5, ge=0.0)
    warmup_steps: int = Field(default=100, ge=0)
    # Early stopping on validation Recall@200 (the harness, on a split carved from
    # training the same way as the hold-out); then refit on all training data for
    # the best epoch count, so the most recent interactions are not left out.
    early_stopping_patience: int = Field(default=3, ge=1)
    refit_full: bool = True
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    # auto: CUDA when torch sees a GPU (one per process under torchrun: LOCAL_RANK;
    # NCCL between processes), else the CPU (gloo between processes).
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Mixed precision on CUDA: bf16 autocast (fp16 with a gradient scaler on a GPU
    # without bf16); the CPU always trains in fp32.
    amp: bool = True
    # The champion gate: the registered model and the current champion are both scored
    # on this run's hold-out (the features version's eval/ split, which neither trained
    # on); promote to `champion` only if the new model's NDCG@20 there is not worse
    # than the champion's by more than this fraction.
    gate_max_ndcg_drop: float = Field(default=0.02, ge=0.0, le=1.0)
    # When the champion cannot be loaded or scored (artifact gone, incompatible
    # checkpoint): "refuse" keeps it (nothing goes live unchecked; the error is in the
    # reason), "promote" lets a new model replace a champion that is known broken.
    gate_unscorable_champion: Literal["refuse", "promote"] = "refuse"

    @model_validator(mode="after")
    def _stream_order(self) -> TrainingConfig:
        if self.data == "stream" and self.shuffle == "permutation":
            raise ValueError(
                "data: stream reads shard by shard and has no global permutation; "
                "use shuffle: shards (or auto)"
            )
        return self


class IndexConfig(_Section):
    """The FAISS ANN index over the video embeddings (`videorec index`)."""

    # A FAISS index_factory string, with {nlist} standing for the coarse quantizer's
    # list count and {pca_dim} for pca_dim. The default projects the embeddings onto
    # their top pca_dim directions (an inner-product-keeping PCA: indexing/build.py,
    # inner_product_pca) and stores 8-bit scalar codes: 96 bytes a vector, plus 8 of
    # id, against 1,024 for exact search at 256 dimensions. On 1M model embeddings it
    # reaches recall@100 0.95+ at about 16x exact search's batch QPS; 6-bit codes over
    # all 256 dimensions (the earlier default) need 204 bytes for the same recall, and
    # 64-byte PQ codes top out at 0.84 (docs/benchmarks.md).
    factory: str = "PCA{pca_dim},IVF{nlist},SQ8"
    # Dimensions kept by a {pca_dim} PCA; capped at the model's dimension (a rotation).
    pca_dim: int = Field(default=96, ge=1)
    # Lists: "auto" is about 4·sqrt(N) rounded to a power of two (1M -> 4096, 50k ->
    # 1024): enough lists that a probe scans a small share, few enough that each list
    # gets dozens of training points.
    nlist: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    metric: Literal["inner_product", "l2"] = "inner_product"
    # Vectors the quantizers are trained on (a seeded sample); FAISS wants 39+ per list.
    train_sample: int = Field(default=200_000, ge=1_000)
    # A build with fewer vectors than this is refused (an empty or truncated export).
    min_vectors: int = Field(default=100, ge=1)
    # Extra FAISS search parameters set on every search, e.g. {k_factor_rf: 4} for Refine.
    search_params: dict[str, float] = {}
    # The validation gate: recall@recall_k against exact search on two disjoint
    # samples of user query embeddings (validation_queries each). nprobe (efSearch
    # for HNSW) is tuned in [probe_min, probe_max] on the first, to the smallest
    # value that clears recall_target plus a noise margin; the recall reported and
    # gated on is the second sample's, measured once at that value.
    recall_k: int = Field(default=100, ge=1)
    recall_target: float = Field(default=0.95, gt=0.0, le=1.0)
    probe_min: int = Field(default=1, ge=1)
    probe_max: int = Field(default=256, ge=1)
    validation_queries: int = Field(default=2_000, ge=10)
    latency_queries: int = Field(default=300, ge=10)
    # Versions kept; older ones are deleted, never the active or previous one.
    keep_versions: int = Field(default=4, ge=2)
    # Trained and filled indexes are saved here so a retried build resumes.
    work_dir: str = "var/cache/index-build"
    # Readers check the pointer this often (seconds) and hot-swap to a new index.
    reload_interval_s: float = Field(default=30.0, gt=0.0)
    seed: int = Field(default=42, ge=0, le=2**32 - 1)

    @model_validator(mode="after")
    def _probe_range(self) -> IndexConfig:
        if self.probe_min > self.probe_max:
            raise ValueError(f"probe_min {self.probe_min} > probe_max {self.probe_max}")
        return self


class PrecomputeConfig(_Section):
    """Redis precompute (`videorec precompute`): what each generation holds, and for how long.

    See docs/redis-keys.md for the keys. Every field but ``key_prefix``, ``ttl_s``,
    ``users_per_chunk``, ``pipeline_commands``, the engine's, the fresh lists' and the
    leases' (``precompute.run.RUNTIME_FIELDS``) shapes what is written, so it goes into
    the generation id (a change makes a new generation instead of reusing one).
    """

    # The root of every key the product writes (docs/redis-keys.md). A plain name: no
    # braces (they would become a Redis Cluster hash tag) and no whitespace.
    key_prefix: str = Field(default="videorec", pattern=r"^[A-Za-z0-9_.:-]+$")
    # Every generation key expires this long after it is written: two 4-hour refreshes
    # plus an hour of grace, so one missed run still serves the previous generation and a
    # superseded one stays readable for about 5 h by readers that resolved it.
    ttl_s: int = Field(default=32_400, ge=60)
    # A user is active (gets base recommendations) with a play this recent before the
    # logical time; users without one get no key (serving's cold-start path).
    active_window_days: float = Field(default=30.0, gt=0.0)
    recs_k: int = Field(default=200, ge=1, le=10_000)
    similar_k: int = Field(default=100, ge=1, le=10_000)
    # Users per FAISS batch and per pipelined write; bounds the run's memory.
    users_per_chunk: int = Field(default=4_096, ge=1)
    # Commands per pipeline round trip.
    pipeline_commands: int = Field(default=1_000, ge=1)
    # A run holds its generation's lease while it writes and publishes (renewed while it
    # lives; a killed run's lapses after lease_s), so a twin run for the same generation
    # (the retrain's beside the one the index's asset triggers, a hand run) waits for it
    # and skips instead of writing every key again. A twin still waiting after
    # lease_wait_s fails with nothing written (the task's retry comes back later): keep
    # it under the precompute DAG task's 90-minute timeout, so the run says why.
    lease_s: float = Field(default=60.0, ge=1.0)
    lease_wait_s: float = Field(default=3_600.0, ge=0.0)
    # Where base recommendations are computed: "local" (this process, all cores) or
    # "spark" (executors of the config's Spark master, each writing its own users'
    # keys; see README "Precompute past one machine"). Either writes the same keys.
    engine: Literal["local", "spark"] = "local"
    # Spark partitions of the users for engine "spark"; 0: the cluster's parallelism.
    spark_partitions: int = Field(default=0, ge=0)
    # Item-to-item recall@similar_k against exact search, on a seeded sample of videos;
    # a generation below the floor is not published.
    similar_recall_sample: int = Field(default=1_000, ge=1)
    similar_recall_min: float = Field(default=0.8, ge=0.0, le=1.0)
    # Trending: views of the last hour weigh 1, those of the 23 before it
    # 2^(-12.5 h / half-life) (the decay at that bucket's mid-age); videos seen by fewer
    # distinct viewers in 24 h than trending_min_viewers are left out (one user's replays).
    trending_half_life_h: float = Field(default=6.0, gt=0.0)
    trending_min_viewers: int = Field(default=2, ge=1)
    trending_top_n: int = Field(default=200, ge=1)
    # Popular per country and per language: positive plays, each weighing
    # 2^(-age / half-life) at the logical time, summed per video within the group.
    popular_half_life_h: float = Field(default=72.0, gt=0.0)
    popular_top_n: int = Field(default=200, ge=1)
    # The 15-minute fresh lists (videorec_trending, `videorec precompute trending`): the
    # event log's newest day partitions are read back this far before the logical time
    # (24 h for trending; popular sums its decayed plays over all of it), and their
    # keys expire after fresh_ttl_s (several refreshes, so a missed one is harmless).
    fresh_lookback_h: float = Field(default=48.0, ge=24.0)
    fresh_ttl_s: int = Field(default=7_200, ge=60)
    seed: int = Field(default=42, ge=0, le=2**32 - 1)


class ApiKeyConfig(_Section):
    """One caller of the serving API: its key is stored only as a SHA-256 digest."""

    name: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # hex digest of the key itself
    # "read": recommendations and similar videos; "feedback": POST feedback.
    scopes: list[Literal["read", "feedback"]] = ["read"]


class ServingConfig(_Section):
    """The serving shim (`videorec serve`, or `uvicorn videorec.serving.app:app` with
    ``$VIDEOREC_CONFIG`` or ``$VIDEOREC_PROFILE`` naming the config)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=2, ge=1)
    # Budget of each Redis call (socket timeout); past it the request fails over.
    redis_timeout_ms: float = Field(default=50.0, gt=0.0)
    # /readyz fails when the active generation was built longer ago than this (its
    # keys live precompute.ttl_s; one missed 4-hourly run is within bounds).
    max_generation_age_s: int = Field(default=30_600, ge=60)
    similar_limit_max: int = Field(default=100, ge=1)
    home_limit_max: int = Field(default=50, ge=1)
    # Callers (none: every request is refused with 401).
    api_keys: list[ApiKeyConfig] = []
    # Each worker re-reads the generation pointers and the exploration counts this
    # often (so a request needs no pointer round trip), and the in-process snapshot of
    # trending and popular lists (the answer when Redis is down) every snapshot_refresh_s.
    refresh_s: float = Field(default=5.0, gt=0.0)
    snapshot_refresh_s: float = Field(default=60.0, gt=0.0)
    # A home feed's later pages are read from the list its first page stored; a cursor
    # older than this answers 410.
    feed_ttl_s: int = Field(default=1800, ge=10)
    # Post-rank filters and diversity, per page.
    max_per_channel: int = Field(default=3, ge=1)
    max_category_share: float = Field(default=0.3, gt=0.0, le=1.0)
    mmr_lambda: float = Field(default=0.7, ge=0.0, le=1.0)  # 1: relevance only
    quality_min_completion: float = Field(default=0.15, ge=0.0, le=1.0)
    quality_max_dislike_ratio: float = Field(default=0.3, ge=0.0, le=1.0)
    quality_min_views: int = Field(default=20, ge=0)  # fewer views: too few to judge
    # Freshness: [max age in hours, score multiplier], youngest first.
    freshness_boosts: list[tuple[float, float]] = [(24.0, 1.2), (168.0, 1.1)]
    # Exploration: this share of each page's slots; of those, up to fresh_slots go by
    # Thompson sampling to videos younger than fresh_age_h, the rest ε-greedy to
    # well-rated videos outside the user's usual categories.
    exploration_share: float = Field(default=0.1, ge=0.0, le=0.5)
    fresh_slots: int = Field(default=1, ge=0)
    fresh_age_h: float = Field(default=24.0, gt=0.0)
    # A user with a query embedding: the new videos (the hourly new-videos generation)
    # and those younger than fresh_age_h are scored by inner product with it (an exact
    # search of the delta); the best fresh_candidates the filters allow join the
    # personal pool (re-ranked with the rest), and the Thompson-sampling slots choose
    # among them.
    fresh_candidates: int = Field(default=50, ge=0)
    # Cold start: a user with fewer plays than cold_start_plays[i] gets
    # cold_start_popular_share[i] of the page from popular/trending lists, else the last.
    cold_start_plays: list[int] = [5, 20]
    cold_start_popular_share: list[float] = [0.8, 0.4, 0.1]
    # not_interested or dislike signals against one channel before it is suppressed.
    channel_strike_limit: int = Field(default=2, ge=1)
    state_ttl_s: int = Field(default=30 * 86_400, ge=60)  # a user's live state
    idempotency_ttl_s: int = Field(default=86_400, ge=60)
    # Rate limits per window (fixed windows in Redis, shared by every worker).
    rate_limit_window_s: int = Field(default=60, ge=1)
    rate_limit_per_user: int = Field(default=600, ge=1)
    rate_limit_per_key: int = Field(default=600_000, ge=1)
    autoplay_countdown_s: float = Field(default=10.0, ge=0.0)
    # Re-ranking's circuit breaker: this many consecutive errors or overruns of
    # rerank_timeout_ms open it; it closes again after breaker_cooldown_s.
    rerank_timeout_ms: float = Field(default=20.0, gt=0.0)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=30.0, gt=0.0)
    stream_maxlen: int = Field(default=1_000_000, ge=1000)  # approximate cap of the stream
    # Fault drills (on-call rehearsals and tests): "rerank_error" makes re-ranking raise;
    # "feedback_reply_lost" drops the reply of every feedback's transaction after Redis
    # applied it (the client sees a 503; a retry with its idempotency key replays).
    fault_injection: list[Literal["rerank_error", "feedback_reply_lost"]] = []

    @model_validator(mode="after")
    def _cold_start_shape(self) -> ServingConfig:
        if len(self.cold_start_popular_share) != len(self.cold_start_plays) + 1:
            raise ValueError("cold_start_popular_share needs one share more than cold_start_plays")
        if self.cold_start_plays != sorted(self.cold_start_plays):
            raise ValueError("cold_start_plays must be increasing")
        if any(not 0.0 <= x <= 1.0 for x in self.cold_start_popular_share):
            raise ValueError("cold_start_popular_share values must lie in [0, 1]")
        return self


class StreamingConfig(_Section):
    """The event stream's hourly drain into the event log (`videorec drain-events`,
    the videorec_event_drain DAG)."""

    drain_batch_size: int = Field(default=50_000, ge=1)  # entries per read and file
    # Entries delivered to another consumer and idle this long are claimed (a crashed run).
    drain_claim_min_idle_ms: int = Field(default=60_000, ge=0)
    # Events may be this far ahead of the last arrival before they count as future.
    drain_max_clock_skew_s: float = Field(default=300.0, ge=0.0)
    # XDEL what was acknowledged: safe while the drain is the stream's only group.
    drain_delete_acked: bool = True
    # One drain at a time holds the stream: a live run renews its lease every third of
    # this; a killed run's lapses after it, and the next run (a retry) may start.
    drain_lease_s: float = Field(default=30.0, gt=0.0)


class FreshVideosConfig(_Section):
    """The hourly new-videos path (`videorec fresh-videos`, the videorec_fresh_videos
    DAG): videos published since the active index's model was trained are embedded by
    its candidate tower in content mode and published as a delta index and a Redis
    generation, until the nightly build includes them."""

    # The delta is a flat (exact) index: at an hour's or a day's uploads it is small,
    # and exact search needs no training and no recall gate.
    delta_factory: str = "Flat"
    similar_k: int = Field(default=50, ge=1)  # similar list written for each new video
    # More new videos than this means the nightly build is overdue: refuse, loudly.
    max_videos: int = Field(default=200_000, ge=1)
    # Redis keys of a new-videos generation live this long: two missed runs still serve.
    ttl_s: int = Field(default=3 * 3600, ge=60)
    # Delta versions not live and older than this are deleted by the run (GC).
    keep_versions_s: float = Field(default=6 * 3600.0, ge=0.0)


class RankingConfig(_Section):
    """The stage-2 ranker (`ranking/`): its examples, model, training, score and gate."""

    # Retrieval's top-K the ranker reorders, offline (examples, evaluation) and served.
    candidates: int = Field(default=200, ge=2)
    history_len: int = Field(default=50, ge=1)  # plays the sequence features look back
    # Users whose candidates become training pairs (a deterministic sample by id hash
    # beyond this), and users evaluated on the hold-out.
    # (5,000 users are ~300k training pairs, about 10 s an epoch on one CPU core.)
    max_users: int = Field(default=5_000, ge=1)
    max_eval_users: int = Field(default=2_000, ge=1)
    # Training pairs per user: every played or shown candidate, plus this many of the
    # other candidates (sampled; 0 keeps all of them).
    negatives_per_user: int = Field(default=50, ge=0)
    # The watch head's weight of a candidate shown and not played (the strongest
    # negative: the user saw it and passed); other unplayed candidates weigh 1.
    impression_negative_weight: float = Field(default=2.0, ge=0.0)
    # "watch_time": the watch head learns E[watch time] (played weighted by watch
    # time); "click": it learns P(play) (unit weights), the clickbait-prone baseline.
    objective: Literal["watch_time", "click"] = "watch_time"
    architecture: Literal["mmoe", "shared_bottom"] = "mmoe"
    cross_layers: int = Field(default=3, ge=0)
    deep_dim: int = Field(default=128, ge=4)
    experts: int = Field(default=4, ge=1)
    expert_dim: int = Field(default=64, ge=4)
    tower_dim: int = Field(default=32, ge=2)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    # Features zeroed (ablations), by name in ranking.features.FEATURE_NAMES (the
    # ranker's training refuses an unknown name).
    disabled_features: list[str] = Field(default_factory=list)
    epochs: int = Field(default=12, ge=1)
    batch_size: int = Field(default=1024, ge=2)
    learning_rate: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=1e-5, ge=0.0)
    # Early stopping on the played-NDCG@20 of a tenth of the training users.
    early_stopping_patience: int = Field(default=3, ge=1)
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    # Loss weight of each head (watch, like, dislike, skip); 0 drops a head.
    head_weights: dict[str, float] = Field(
        default_factory=lambda: {"watch": 1.0, "like": 1.0, "dislike": 1.0, "skip": 1.0}
    )
    # The served score: w_watch·E[watch time] + w_like·P(like) − w_dislike·P(dislike)
    # − w_skip·P(skip), E[watch time] in units of the mean play.
    score_weights: dict[str, float] = Field(
        default_factory=lambda: {"watch": 1.0, "like": 0.5, "dislike": 1.0, "skip": 0.5}
    )
    # The ranker's champion gate: its funnel NDCG@20 on the hold-out must not be worse
    # than the champion ranker's by more than this fraction, nor below retrieval alone.
    gate_max_ndcg_drop: float = Field(default=0.02, ge=0.0, le=1.0)

    @field_validator("head_weights", "score_weights")
    @classmethod
    def _heads(cls, v: dict[str, float]) -> dict[str, float]:
        heads = ("watch", "like", "dislike", "skip")
        unknown = sorted(set(v) - set(heads))
        if unknown:
            raise ValueError(f"unknown heads {unknown}; the heads are {list(heads)}")
        if any(not w >= 0 for w in v.values()):
            raise ValueError("weights must be >= 0 (the score subtracts dislike and skip)")
        return {h: float(v.get(h, 0.0)) for h in heads}


class Config(_Section):
    """The whole videorec config: one section per concern."""

    profile: str = "local"
    artifacts: ArtifactsConfig = ArtifactsConfig()
    spark: SparkConfig = SparkConfig()
    mlflow: MlflowConfig = MlflowConfig()
    airflow: AirflowConfig = AirflowConfig()
    redis: RedisConfig = RedisConfig()
    data: DataConfig = DataConfig()
    generate: GenerateConfig = GenerateConfig()
    contract: ContractConfig = ContractConfig()
    features: FeaturesConfig = FeaturesConfig()
    training: TrainingConfig = TrainingConfig()
    index: IndexConfig = IndexConfig()
    precompute: PrecomputeConfig = PrecomputeConfig()
    serving: ServingConfig = ServingConfig()
    streaming: StreamingConfig = StreamingConfig()
    fresh_videos: FreshVideosConfig = FreshVideosConfig()
    ranking: RankingConfig = RankingConfig()

    @field_validator("profile")
    @classmethod
    def _profile_is_a_name(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", v):
            raise ValueError("profile must be a lower-case name like 'local' or 'prod'")
        return v

    def digest(self) -> str:
        """12 hex chars of SHA-256 over the canonical JSON of the whole config."""
        return config_digest(self.model_dump(mode="json"))

    def section_digest(self, *sections: str) -> str:
        """Digest of only the named sections: what a stage's output depends on."""
        dumped = self.model_dump(mode="json")
        return config_digest({s: dumped[s] for s in sections})

    def resolve_path(self, path: str | os.PathLike[str]) -> Path:
        """A config path made absolute: relative paths are taken from the repo root.
        Local paths only: a location that may be a URI goes through
        :meth:`resolve_location`."""
        p = Path(path)
        return p if p.is_absolute() else REPO_ROOT / p

    def resolve_location(self, location: str | os.PathLike[str]) -> str:
        """A location that may be on S3 (``data.dir``, ``mlflow.artifact_location``): a
        URI (``s3://bucket/prefix``) as it is, a path made absolute as
        :meth:`resolve_path` makes it (``Path`` would fold ``s3://`` to ``s3:/``)."""
        s = str(location)
        return s if "://" in s else str(self.resolve_path(s))


def config_digest(obj: Any) -> str:
    """12 hex chars of SHA-256 over ``obj`` as sorted, compact JSON."""
    canon = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:12]


def source_digest(package: str) -> str:
    """12 hex chars of SHA-256 over the ``.py`` sources of an installed package.

    Goes into artifact versions beside the config digest, so that a change to the
    code that produces an artifact (a model's layers, an index's build) makes a new
    version instead of silently reusing one built by older code.
    """
    import importlib

    root = Path(importlib.import_module(package).__file__ or "").parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\x00" + f.read_bytes())
    return h.hexdigest()[:12]


def _expand_env(value: Any, where: str, source: str) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string of a parsed YAML tree."""
    if isinstance(value, dict):
        return {
            k: _expand_env(v, f"{where}.{k}" if where else str(k), source) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_expand_env(v, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{source}: {where}: environment variable ${{{name}}} is not set")

    return _ENV_REF.sub(sub, value)


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top>"
        msg = "unknown key (not in the schema)" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any] | None, source: str = "<dict>") -> Config:
    """Validate an already-parsed mapping; ``source`` names it in errors."""
    data = _expand_env(data or {}, "", source)
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(path: str | os.PathLike[str] | None = None, profile: str | None = None) -> Config:
    """Load a config file, or the named profile from ``conf/``, or the local defaults.

    ``path`` wins over ``profile``; with neither, ``$VIDEOREC_CONFIG`` (a file: how
    Airflow workers and spark-submit jobs are pointed at one config) and then
    ``$VIDEOREC_PROFILE`` or ``local``. The profile name is recorded in the config so
    outputs say where they came from.
    """
    if path is None and profile is None and os.environ.get("VIDEOREC_CONFIG"):
        path = os.environ["VIDEOREC_CONFIG"]
    if path is None:
        profile = profile or os.environ.get("VIDEOREC_PROFILE", "local")
        path = CONF_DIR / f"{profile}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
            raise ConfigError(f"{path}: no such profile {profile!r}; known profiles: {known}")
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{source}: cannot read config: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{source}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    data = dict(data or {})
    # The file's name is the profile's when it is one ("prod.yaml"); else "custom".
    named = path.stem if re.fullmatch(r"[a-z][a-z0-9_-]*", path.stem) else "custom"
    data.setdefault("profile", profile or named)
    return parse_config(data, source)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key twice in one mapping: a second ``training:``
    section would otherwise silently replace the first, settings and all."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                first, again = seen[key] + 1, key_node.start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice (lines {first} and {again})"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def available_profiles() -> list[str]:
    """Names of the profiles shipped under conf/."""
    return sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
