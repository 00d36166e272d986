"""The delta index: videos published since the active index's model, searchable within the hour.

The main index is rebuilt nightly from the model's exported embeddings, so a video
uploaded after that training is in no index. Every hour, :func:`build_delta` embeds
those videos with the active index's model in content mode (``training/fresh.py``)
and stores them as a small flat index, a versioned artifact of its own
(``index-delta/<yyyymmddThhmm>-<digest>``), and :func:`publish_delta` points the
``index-delta`` pointer at it by compare-and-swap. ``IndexReader`` searches main and
delta and merges the two by score.

Compaction needs no separate job: a delta holds exactly the videos its main index
lacks, and it names that main index version. When the nightly build of a newer model
goes live, the old delta no longer matches (readers ignore it: its vectors are in
the old model's space), and the next hourly run builds the delta of the new index,
without the videos the nightly build now includes. :func:`collect_delta_garbage`
deletes versions that are neither live nor recent.

Two writers: an Airflow retry beside a zombie builds the same version (same inputs,
the same digest; the second write finds it committed); a publish of a delta built for
an index that is no longer active is refused; a late run never replaces the delta of
a later logical time for the same index.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from videorec.artifact_names import (
    DELTA_INDEX,
    DELTA_POINTER,
    ID_MAP_FILE,
    INDEX,
    INDEX_FILE,
    MODEL,
    NEW_VIDEOS_FILE,
)
from videorec.artifacts import ArtifactStore, VersionExistsError, VersionNotFoundError, open_store
from videorec.config import Config, config_digest, source_digest
from videorec.indexing.build import add_vectors, new_index
from videorec.indexing.reader import IndexInputError
from videorec.indexing.slots import SlotError, active_version, cas_update


class DeltaError(IndexInputError):
    """A delta that cannot be built or published; the pointer is unchanged. The
    message names the version and why (the CLI exits 2 with it)."""


def _utc(t: dt.datetime) -> dt.datetime:
    if t.tzinfo is None:
        raise ValueError(f"logical_time must be timezone-aware, got {t!r}")
    return t.astimezone(dt.UTC)


def delta_version(cfg: Config, index_version: str, t: dt.datetime, ids: np.ndarray) -> str:
    """``<yyyymmddThhmm>-<digest>`` of (main index version, logical time, the new
    videos' ids, the fresh_videos fields that shape it, the code). The time is in it
    because a vector depends on the video's age at ``t``."""
    shaping = cfg.fresh_videos.model_dump(mode="json", include={"delta_factory"})
    digest = config_digest({
        "index": index_version, "t": t.isoformat(), "fresh": shaping,
        "ids": hashlib.sha256(np.ascontiguousarray(ids, "<i8").tobytes()).hexdigest(),
        "code": source_digest("videorec.indexing") + source_digest("videorec.training"),
    })  # fmt: skip
    return f"{t:%Y%m%dT%H%M}-{digest[:10]}"


def _main_inputs(store: ArtifactStore, index_version: str) -> tuple[dict[str, Any], np.ndarray]:
    """(the main index's manifest, its video ids (n,) int64), checked to have passed."""
    try:
        man = store.read_manifest(INDEX, index_version)
    except VersionNotFoundError:
        raise DeltaError(f"index version {index_version!r} does not exist") from None
    if man.get("gate") != "passed" or not man.get("model_version"):
        raise DeltaError(f"index version {index_version!r} did not pass its gate")
    ids = pq.read_table(store.local_path(INDEX, index_version) / ID_MAP_FILE)["video_id"]
    return man, ids.to_numpy().astype(np.int64)


def build_delta(
    cfg: Config,
    *,
    index_version: str,
    logical_time: dt.datetime,
    data: str | None = None,
    store: ArtifactStore | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Build (or find) the delta of ``index_version`` as of ``logical_time``.

    Returns {"version", "index_version", "model_version", "videos", "known_channels",
    "content_path_trained", "skipped"}. Raises DeltaError on an unusable main index or
    more new videos than ``fresh_videos.max_videos``.
    """
    from videorec.training.fresh import embed_new_videos

    say = log or (lambda _m: None)
    store = store or open_store(cfg)
    t = _utc(logical_time)
    man, main_ids = _main_inputs(store, index_version)
    model_version = man["model_version"]
    data = data or cfg.resolve_location(cfg.data.dir)  # the live catalogue
    new = embed_new_videos(
        cfg, model_dir=store.local_path(MODEL, model_version), data=data,
        exclude_ids=main_ids, logical_time=t,
    )  # fmt: skip
    fc = cfg.fresh_videos
    if len(new.ids) > fc.max_videos:
        raise DeltaError(
            f"{len(new.ids):,} videos are missing from index {index_version!r} (more than "
            f"fresh_videos.max_videos={fc.max_videos:,}): the nightly build is overdue"
        )
    d = man.get("dimension")
    if d is not None and new.vectors.shape[1] != d:
        raise DeltaError(
            f"the new videos' vectors have dimension {new.vectors.shape[1]}, index "
            f"{index_version!r} has {d}"
        )
    version = delta_version(cfg, index_version, t, new.ids)
    result = {
        "version": version, "index_version": index_version, "model_version": model_version,
        "videos": len(new.ids), "known_channels": new.known_channels,
        "content_path_trained": new.content_path_trained, "skipped": False,
    }  # fmt: skip
    if store.exists(DELTA_INDEX, version):
        return {**result, "skipped": True}
    metric = man.get("metric", "inner_product")
    index = new_index(fc.delta_factory, new.vectors.shape[1], metric)
    add_vectors(index, new.vectors, new.ids)
    _check_self_search(index, new.vectors, new.ids)
    manifest = {
        **{k: v for k, v in result.items() if k != "skipped"},
        "logical_time": t.isoformat(), "data": data, "metric": metric,
        "factory": fc.delta_factory, "dim": int(new.vectors.shape[1]),
        "config_digest": cfg.digest(), "gate": "passed",
    }  # fmt: skip
    try:
        with store.write_version(DELTA_INDEX, version, manifest) as out:
            import faiss

            faiss.write_index(index, str(out / INDEX_FILE))
            d = new.vectors.shape[1]
            table = pa.table({
                "video_id": new.ids,
                "embedding": pa.FixedSizeListArray.from_arrays(new.vectors.ravel(), d),
                "published_at": pa.array(new.published_at, pa.timestamp("us", "UTC")),
            })  # fmt: skip
            pq.write_table(table, out / NEW_VIDEOS_FILE)
    except VersionExistsError:  # a twin attempt committed the same inputs first
        return {**result, "skipped": True}
    say(f"delta {version}: {len(new.ids):,} new videos beside index {index_version}")
    return result


def _check_self_search(index: Any, vectors: np.ndarray, ids: np.ndarray) -> None:
    """Exact search must find each vector's own id among its best hits (a sample):
    the delta's recall gate, which a flat index passes unless the ids or vectors were
    mangled. Among, not first: a re-upload has the same content, so the same vector."""
    if not len(ids):
        return
    rows = np.linspace(0, len(ids) - 1, min(64, len(ids))).astype(np.int64)
    _, found = index.search(vectors[rows], min(16, len(ids)))
    if not (found == ids[rows][:, None]).any(axis=1).all():
        raise DeltaError("the delta index does not find its own vectors; not stored")


def _normalised(value: dict[str, Any] | None) -> dict[str, Any]:
    state = {"version": None, "index_version": None, "logical_time": None, "previous": None,
             "generation": 0, "revision": 0}  # fmt: skip
    return {**state, **(value or {})}


def read_delta_pointer(store: ArtifactStore) -> dict[str, Any]:
    """The delta pointer's state: version, index_version, logical_time, previous, generation."""
    return _normalised(store.read_pointer(DELTA_POINTER)[0])


def publish_delta(store: ArtifactStore, version: str) -> dict[str, Any]:
    """Make ``version`` the live delta, by compare-and-swap; returns the state in force
    and ``published`` (False when it was live already or a later delta of the same
    index is). Raises DeltaError when the version does not exist or was built for an
    index that is not the active one."""
    try:
        man = store.read_manifest(DELTA_INDEX, version)
    except VersionNotFoundError:
        raise DeltaError(f"delta version {version!r} does not exist") from None
    t = man["logical_time"]
    wrote = False

    def change(state: dict[str, Any]) -> bool:
        nonlocal wrote
        active, _ = active_version(store)
        if man["index_version"] != active:
            raise DeltaError(
                f"delta {version!r} extends index {man['index_version']!r}, but the active "
                f"index is {active!r}: the next run builds the delta of the active one"
            )
        if state["version"] == version:
            return False
        same_index = state["index_version"] == man["index_version"]
        if same_index and state["logical_time"] and state["logical_time"] > t:
            return False  # a later run's delta is live: never go back in time
        state["previous"] = state["version"]
        state.update(version=version, index_version=man["index_version"], logical_time=t)
        state["generation"] = int(state["generation"]) + 1
        wrote = True
        return True

    try:
        state = cas_update(store, DELTA_POINTER, change, _normalised)
    except SlotError as err:
        raise DeltaError(str(err)) from None
    return {**state, "published": wrote}


def collect_delta_garbage(
    store: ArtifactStore, *, logical_time: dt.datetime, keep_s: float
) -> list[str]:
    """Delete delta versions that the pointer names neither as live nor as previous and
    whose logical time is more than ``keep_s`` before ``logical_time``; their names."""
    state = read_delta_pointer(store)
    keep = {state["version"], state["previous"]}
    cutoff = _utc(logical_time) - dt.timedelta(seconds=keep_s)
    deleted = []
    for version in store.list_versions(DELTA_INDEX):
        if version in keep:
            continue
        try:
            at = dt.datetime.fromisoformat(
                store.read_manifest(DELTA_INDEX, version)["logical_time"]
            )
        except (VersionNotFoundError, KeyError):
            continue
        if at < cutoff:
            with contextlib.suppress(VersionNotFoundError):  # a twin run deleted it first
                store.delete_version(DELTA_INDEX, version)
                deleted.append(version)
    return deleted
