"""Serve the active index and hot-swap to a newly published one.

``IndexReader`` loads the version the blue-green pointer names, with the nprobe its
manifest recorded. ``refresh()`` reads the pointer; when it names another version,
the new index is loaded *completely* (read, parameters set) and only then does one
reference assignment make it current. A search takes the reference once at its
start, so a search in flight finishes on the index it started with and no request
waits for a load. A load that fails leaves the current index serving.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from videorec.artifact_names import INDEX, INDEX_FILE
from videorec.artifacts import ArtifactStore
from videorec.indexing.slots import active_version

log = logging.getLogger(__name__)


class IndexInputError(RuntimeError):
    """An index input is unusable: an embedding export (missing, bad vectors) or a
    search parameter that does not apply. The message names the file or parameter."""


@dataclass
class Embeddings:
    """An id column and its vectors: ids (N,) int64, vectors (N, d) float32."""

    ids: np.ndarray
    vectors: np.ndarray


def read_embeddings(path: str | os.PathLike[str]) -> Embeddings:
    """Read an embedding export (an id column and a fixed-size-list ``embedding``).

    Raises IndexInputError naming the file when it is missing, has no id column,
    repeats an id, or holds a non-finite value.
    """
    path = Path(path)
    if not path.is_file():
        raise IndexInputError(f"{path}: no embedding export")
    t = pq.read_table(path)
    id_cols = [c for c in t.column_names if c.endswith("_id")]
    if len(id_cols) != 1 or "embedding" not in t.column_names:
        raise IndexInputError(f"{path}: want one *_id column and 'embedding'; got {t.column_names}")
    col = t["embedding"].combine_chunks()
    if not pa.types.is_fixed_size_list(col.type):
        raise IndexInputError(f"{path}: 'embedding' must be a fixed-size list; got {col.type}")
    for name, c in ((id_cols[0], t[id_cols[0]]), ("embedding", col)):
        if c.null_count:
            raise IndexInputError(f"{path}: {c.null_count} null values in {name!r}")
    ids = t[id_cols[0]].to_numpy().astype(np.int64)
    d = col.type.list_size
    flat = col.flatten()  # honours the array's offset, unlike .values
    if flat.null_count:
        raise IndexInputError(f"{path}: {flat.null_count} null components in 'embedding'")
    vectors = np.ascontiguousarray(
        flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(ids), d)
    )
    if len(np.unique(ids)) != len(ids):
        raise IndexInputError(f"{path}: {len(ids) - len(np.unique(ids))} repeated ids")
    if not np.isfinite(vectors).all():
        bad = int((~np.isfinite(vectors)).any(axis=1).sum())
        raise IndexInputError(f"{path}: {bad} vectors hold NaN or infinity")
    return Embeddings(ids=ids, vectors=vectors)


def set_search_params(index: Any, params: dict[str, float]) -> None:
    """Set FAISS search parameters by name (nprobe, efSearch, k_factor, ...)."""
    import faiss

    ps = faiss.ParameterSpace()
    for name, value in params.items():
        try:
            ps.set_index_parameter(index, name, float(value))
        except RuntimeError:
            raise IndexInputError(
                f"search parameter {name}={value} does not apply to this index"
            ) from None


class NoActiveIndexError(RuntimeError):
    """Nothing has been published yet, so there is nothing to search."""


@dataclass(frozen=True)
class LoadedIndex:
    """One loaded index version with its manifest."""

    version: str
    generation: int
    index: Any
    manifest: dict[str, Any]


def load_index(store: ArtifactStore, version: str, generation: int = 0) -> LoadedIndex:
    """Read an index version and set the search parameters its build validated."""
    manifest = store.read_manifest(INDEX, version)
    index = open_index_file(store.local_path(INDEX, version) / INDEX_FILE, manifest)
    return LoadedIndex(version=version, generation=generation, index=index, manifest=manifest)


def open_index_file(path: str | Path, manifest: dict[str, Any]) -> Any:
    """The FAISS index in ``path`` with the search parameters ``manifest`` recorded (a
    copy of an index file shipped to a worker, such as a Spark executor, opens here)."""
    import faiss

    index = faiss.read_index(str(path))
    params = dict(manifest.get("search_params") or {})
    if manifest.get("nprobe") is not None and manifest.get("probe_parameter"):
        params[manifest["probe_parameter"]] = manifest["nprobe"]
    set_search_params(index, params)
    return index


class IndexReader:
    """The active index for a long-running process (precompute, the serving shim)."""

    def __init__(self, store: ArtifactStore, *, reload_interval_s: float = 30.0) -> None:
        self.store = store
        self.reload_interval_s = reload_interval_s
        self._current: LoadedIndex | None = None
        self._swap_lock = threading.Lock()  # one load at a time; searches never take it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.swaps = 0
        self.load_failures = 0

    @property
    def current(self) -> LoadedIndex | None:
        return self._current

    def refresh(self) -> bool:
        """Swap to the pointer's version if it changed; True when a swap happened."""
        with self._swap_lock:
            version, generation = active_version(self.store)
            cur = self._current
            if version is None or (cur is not None and cur.version == version):
                return False
            try:
                loaded = load_index(self.store, version, generation)
            except Exception:  # keep serving the current index; report and retry later
                self.load_failures += 1
                log.exception("loading index %s failed; still serving %s", version,
                              cur.version if cur else None)  # fmt: skip
                return False
            self._current = loaded  # one reference assignment: the swap
            self.swaps += 1
            log.info("index swapped to %s (generation %d)", version, generation)
            return True

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores (nq, k) float32, video ids (nq, k) int64; -1 pads) for (nq, d) queries."""
        cur = self._current  # taken once: a concurrent swap does not affect this search
        if cur is None:
            raise NoActiveIndexError("no index is published yet (videorec index publish)")
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != cur.index.d:
            raise ValueError(f"query dim {q.shape[1]} != index dim {cur.index.d}")
        return cur.index.search(q, k)

    def start(self) -> IndexReader:
        """Load now, then poll the pointer every ``reload_interval_s`` in a daemon thread."""
        self.refresh()

        def loop() -> None:
            while not self._stop.wait(self.reload_interval_s):
                try:
                    self.refresh()
                except Exception:  # a pointer read failing must not kill the poller
                    log.exception("index pointer refresh failed")

        self._thread = threading.Thread(target=loop, name="index-reader", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
