"""Serve the active index and hot-swap to a newly published one.

``IndexReader`` loads the version the blue-green pointer names, with the nprobe its
manifest recorded, and the delta index of the videos published since (the
``index-delta`` pointer; see ``indexing/delta.py``) when that delta extends the
active version. A search runs on both and merges the results by score. ``refresh()`` reads the pointer; when it names another version,
the new index is loaded *completely* (read, parameters set) and only then does one
reference assignment make it current. A search takes the reference once at its
start, so a search in flight finishes on the index it started with and no request
waits for a load. A load that fails leaves the current index serving.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from videorec.artifact_names import DELTA_INDEX, DELTA_POINTER, INDEX, INDEX_FILE
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


# Search-time fields of RaBitQ IVF indexes that FAISS's ParameterSpace (1.15) does not
# set: the bits each query is quantised to (qb, 0-8) and whether queries are centred
# on their list's centroid first. They are plain fields of the IVF layer.
_IVF_SEARCH_FIELDS: dict[str, type] = {"qb": int, "centered": bool}


# The ranges FAISS accepts without failing at the first search (or, for qb, without a
# SWIG message that names no parameter): [low, high], None for no bound.
_SEARCH_RANGES: dict[str, tuple[float, float | None]] = {
    "nprobe": (1, None), "efSearch": (1, None), "k_factor": (1, None),
    "k_factor_rf": (1, None), "qb": (0, 8), "centered": (0, 1),
}  # fmt: skip


def set_search_params(index: Any, params: dict[str, float]) -> None:
    """Set FAISS search parameters by name (nprobe, efSearch, k_factor_rf, qb, ...).

    Raises IndexInputError naming a parameter that does not apply to ``index`` or whose
    value is outside the range FAISS searches with.
    """
    import faiss

    for name, value in params.items():
        if not math.isfinite(value):
            raise IndexInputError(f"search parameter {name}={value}: not a finite number")
        low, high = _SEARCH_RANGES.get(name, (-math.inf, None))
        if value < low or (high is not None and value > high):
            top = "" if high is None else f" and at most {high:g}"
            raise IndexInputError(
                f"search parameter {name}={value}: it must be at least {low:g}{top}"
            )
    ps = faiss.ParameterSpace()
    for name, value in params.items():
        if name in _IVF_SEARCH_FIELDS and _set_ivf_field(index, name, value):
            continue
        try:
            ps.set_index_parameter(index, name, float(value))
        except RuntimeError:
            raise IndexInputError(
                f"search parameter {name}={value} does not apply to this index"
            ) from None


def _set_ivf_field(index: Any, name: str, value: float) -> bool:
    """Set a field of the index's IVF layer; False when it has no IVF layer or field."""
    import faiss

    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:
        return False
    if not hasattr(ivf, name):
        return False
    setattr(ivf, name, _IVF_SEARCH_FIELDS[name](value))
    return True


class NoActiveIndexError(RuntimeError):
    """Nothing has been published yet, so there is nothing to search."""


@dataclass(frozen=True)
class LoadedIndex:
    """One loaded index version with its manifest."""

    version: str
    generation: int
    index: Any
    manifest: dict[str, Any]


def load_index(
    store: ArtifactStore, version: str, generation: int = 0, *, gpu: bool = False
) -> LoadedIndex:
    """Read an index version and set the search parameters its build validated.

    ``gpu``: search on every GPU FAISS sees (``on_gpus``), for batched callers such as
    the precompute; single-query callers stay on the CPU, where one query is faster.
    """
    manifest = store.read_manifest(INDEX, version)
    index = open_index_file(store.local_path(INDEX, version) / INDEX_FILE, manifest)
    if gpu:
        index = on_gpus(index)
    return LoadedIndex(version=version, generation=generation, index=index, manifest=manifest)


def on_gpus(index: Any) -> Any:
    """``index`` replicated onto every GPU FAISS sees, its search parameters kept; the
    CPU ``index`` itself when FAISS sees none (the CPU build) or cannot move this
    shape (logged). The copy answers ``search`` like the original."""
    import faiss

    ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if ngpu == 0:
        return index
    try:
        return WideOnCpu(faiss.index_cpu_to_all_gpus(index), index)
    except (RuntimeError, AttributeError) as err:
        log.warning("index stays on the CPU: FAISS cannot move it to %d GPU(s): %s", ngpu, err)
        return index


# FAISS's GPU indexes select at most this many neighbours a query (faiss-gpu 1.15,
# GPU_MAX_SELECTION_K); a wider search raises.
GPU_MAX_K = 2048


class WideOnCpu:
    """A GPU index that answers searches wider than ``max_k`` from its CPU original
    (the precompute asks for recs_k plus a user's watched videos, up to thousands);
    every other attribute is the GPU index's."""

    def __init__(self, fast: Any, cpu: Any, max_k: int = GPU_MAX_K) -> None:
        self.fast, self.cpu, self.max_k = fast, cpu, max_k

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, k) distances and ids, as ``faiss.Index.search``."""
        return (self.cpu if k > self.max_k else self.fast).search(x, k)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fast, name)


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


def load_delta(store: ArtifactStore, version: str, generation: int = 0) -> LoadedIndex:
    """Read a delta version (a flat index: no search parameters)."""
    import faiss

    manifest = store.read_manifest(DELTA_INDEX, version)
    index = faiss.read_index(str(store.local_path(DELTA_INDEX, version) / INDEX_FILE))
    return LoadedIndex(version=version, generation=generation, index=index, manifest=manifest)


def merge_results(
    main: tuple[np.ndarray, np.ndarray],
    delta: tuple[np.ndarray, np.ndarray],
    k: int,
    metric: str = "inner_product",
) -> tuple[np.ndarray, np.ndarray]:
    """Merge two FAISS results ((nq, k1) scores, (nq, k1) ids) and ((nq, k2), (nq, k2))
    into the best ``k`` per query: (scores (nq, k), ids (nq, k)), -1 padded. Higher
    scores win for inner product, lower for L2; an id found by both keeps main's hit."""
    (sa, ia), (sb, ib) = main, delta
    worst = -np.inf if metric == "inner_product" else np.inf
    ib = np.where((ib[:, :, None] == ia[:, None, :]).any(-1), -1, ib)  # main's copy wins
    scores = np.concatenate([sa, sb], axis=1).astype(np.float32)
    ids = np.concatenate([ia, ib], axis=1)
    scores = np.where(ids < 0, worst, scores)
    key = -scores if metric == "inner_product" else scores
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    out_s, out_i = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    if out_s.shape[1] < k:  # fewer hits than k in all: pad as FAISS does
        pad = k - out_s.shape[1]
        out_s = np.pad(out_s, ((0, 0), (0, pad)), constant_values=worst)
        out_i = np.pad(out_i, ((0, 0), (0, pad)), constant_values=-1)
    return np.where(out_i < 0, worst, out_s).astype(np.float32), out_i


class IndexReader:
    """The active index for a long-running process (precompute, the serving shim)."""

    def __init__(self, store: ArtifactStore, *, reload_interval_s: float = 30.0) -> None:
        self.store = store
        self.reload_interval_s = reload_interval_s
        self._current: LoadedIndex | None = None
        self._delta: LoadedIndex | None = None  # extends _current, or None
        self._swap_lock = threading.Lock()  # one load at a time; searches never take it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.swaps = 0
        self.load_failures = 0

    @property
    def current(self) -> LoadedIndex | None:
        return self._current

    @property
    def delta(self) -> LoadedIndex | None:
        return self._delta

    def refresh(self) -> bool:
        """Swap to the pointers' versions if they changed; True when a swap happened."""
        with self._swap_lock:
            swapped = self._refresh_main()
            return self._refresh_delta() or swapped

    def _refresh_delta(self) -> bool:
        """Follow the delta pointer: load its version when it extends the current main
        index, drop the delta when it extends another one (its vectors are in another
        model's space). A failed load keeps the previous delta."""
        cur, old = self._current, self._delta
        state = self.store.read_pointer(DELTA_POINTER)[0] or {}
        version = state.get("version")
        if cur is None or not version or state.get("index_version") != cur.version:
            self._delta = None
            return old is not None
        if old is not None and old.version == version:
            return False
        try:
            self._delta = load_delta(self.store, version, int(state.get("generation", 0)))
        except Exception:
            self.load_failures += 1
            log.exception("loading delta %s failed; keeping %s", version,
                          old.version if old else None)  # fmt: skip
            return False
        return True

    def _refresh_main(self) -> bool:
        """Swap to the blue-green pointer's version if it changed."""
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
        """(scores (nq, k) float32, video ids (nq, k) int64; -1 pads) for (nq, d) queries:
        the main index and its delta, merged by score."""
        cur, delta = self._current, self._delta  # taken once: a swap does not affect this
        if cur is None:
            raise NoActiveIndexError("no index is published yet (videorec index publish)")
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != cur.index.d:
            raise ValueError(f"query dim {q.shape[1]} != index dim {cur.index.d}")
        found = cur.index.search(q, k)
        if delta is None or delta.manifest.get("index_version") != cur.version:
            return found
        if not delta.index.ntotal:
            return found
        metric = cur.manifest.get("metric", "inner_product")
        return merge_results(found, delta.index.search(q, min(k, delta.index.ntotal)), k, metric)

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
