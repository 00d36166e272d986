"""Build a FAISS index over a model's video embeddings, validate it, write a version.

``build_index(cfg)`` is a function of (embedding export, index config, code):

1. Read ``video_embeddings.parquet`` (and, for the gate, ``user_embeddings.parquet``)
   from a two-tower artifact version: the ids and the (N, d) float32 unit vectors.
2. Resolve the ``index_factory`` string (``{nlist}`` and ``{pca_dim}`` filled in),
   train the quantizers on a seeded sample (a leading PCA with ``inner_product_pca``
   for inner-product indexes; k-means on the GPU when FAISS sees one), add every
   vector with its video id. The trained and the filled index are saved under the
   work folder, so a retried build resumes from the last finished step.
3. The gate: recall@k against exact (flat) search on *user query embeddings* of the
   same model, drawn as two disjoint seeded samples. nprobe (efSearch for HNSW) is
   tuned on the first (the tuning sample); the recall that is reported and gated on
   is measured once, at the chosen probe, on the second (the held-out sample).
   See ``build_index`` for why, and for what a held-out shortfall does. Single-query
   p50/p99 latency and batch throughput, beside exact search's.
4. Only a build that passes is written, as ``index/<version>`` (index file, id map,
   manifest), and assigned to the standby slot; what readers serve changes only
   with ``slots.publish``.

A failed gate raises ``IndexGateError``; nothing is published.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from videorec.artifact_names import (
    ID_MAP_FILE,
    INDEX,
    INDEX_FILE,
    MODEL,
    USER_EMBEDDINGS_FILE,
    VIDEO_EMBEDDINGS_FILE,
)
from videorec.artifacts import ArtifactStore, VersionExistsError, open_store
from videorec.config import Config, IndexConfig, config_digest, source_digest
from videorec.indexing.reader import (
    IndexInputError,
    read_embeddings,
    set_search_params,
)
from videorec.indexing.slots import assign_standby, ensure_in_a_slot
from videorec.retention import holding_model


class IndexBuildError(IndexInputError):
    """The inputs cannot make an index (missing export, bad vectors, bad factory)."""


class IndexGateError(IndexBuildError):
    """The built index failed validation; ``report`` holds what was measured."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


def auto_nlist(n: int, train_points: int | None = None) -> int:
    """About 4·sqrt(n), rounded to a power of two, at most the power of two <= n // 39.

    FAISS's k-means wants 39+ training points per list; fewer lists than that
    would leave lists empty or noisy.
    """
    nlist = 2 ** round(math.log2(max(4 * math.sqrt(max(n, 1)), 1)))
    points = n if train_points is None else min(n, train_points)
    cap = 2 ** int(math.log2(max(points // 39, 1)))
    return int(min(nlist, cap))


def resolve_factory(icfg: IndexConfig, n: int, d: int) -> tuple[str, int | None]:
    """The factory string for n vectors of dimension d, and the nlist used (None if unused).

    ``{nlist}`` is filled from ``nlist``; ``{pca_dim}`` from ``pca_dim``, capped at d
    (a PCA to d dimensions is a rotation: no loss, and the codes still fit).
    """
    factory = icfg.factory.replace("{pca_dim}", str(min(icfg.pca_dim, d)))
    if "{nlist}" not in factory:
        return factory, None
    nlist = auto_nlist(n, icfg.train_sample) if icfg.nlist == "auto" else int(icfg.nlist)
    return factory.replace("{nlist}", str(nlist)), nlist


def _metric(name: str) -> int:
    import faiss

    return faiss.METRIC_INNER_PRODUCT if name == "inner_product" else faiss.METRIC_L2


def probe_parameter(index: Any) -> str | None:
    """The search knob the gate tunes: nprobe (IVF), efSearch (HNSW), or None (exact)."""
    import faiss

    try:
        faiss.extract_index_ivf(index)
        return "nprobe"
    except RuntimeError:
        pass
    # HNSW may be wrapped (IDMap, PreTransform, Refine); the parameter space reaches it.
    probe = index
    while True:
        if isinstance(probe, faiss.IndexHNSW):
            return "efSearch"
        inner = getattr(probe, "index", None) or getattr(probe, "base_index", None)
        if inner is None:
            return None
        probe = faiss.downcast_index(inner)


def new_index(factory: str, d: int, metric: str) -> Any:
    """An empty index from a factory string, able to take ids (IDMap2 added if needed)."""
    import faiss

    try:
        index = faiss.index_factory(d, factory, _metric(metric))
    except RuntimeError as err:
        raise IndexBuildError(f"index factory {factory!r} (d={d}): {err}") from None
    problems = structure_problems(index)
    if problems:
        raise IndexBuildError(f"index factory {factory!r} (d={d}): {'; '.join(problems)}")
    # IVF lists store ids themselves (also under a pre-transform such as OPQ); flat,
    # HNSW and Refine indexes number vectors 0..n-1, so their ids live in a side map.
    top = faiss.downcast_index(index)
    if isinstance(top, faiss.IndexPreTransform):
        top = faiss.downcast_index(top.index)
    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:
        ivf = None
    if isinstance(ivf, faiss.IndexIVFPQ):
        # Polysemous training reorders PQ codes for Hamming pre-filtering, which the
        # search here never uses; it is an annealing pass that dominates training time
        # (56 s of 56 s for PQ64 on 10k vectors, measured).
        ivf.do_polysemous_training = False
    if not isinstance(top, faiss.IndexIVF):
        index = faiss.IndexIDMap2(index)
    return index


def _index_tree(index: Any) -> Iterator[Any]:
    """``index`` and every index inside it (pre-transformed, refined, quantizer,
    storage), each downcast to its own FAISS class."""
    import faiss

    index = faiss.downcast_index(index)
    yield index
    for field in ("index", "base_index", "refine_index", "quantizer", "storage"):
        inner = getattr(index, field, None)
        if isinstance(inner, faiss.Index):
            yield from _index_tree(inner)


def structure_problems(index: Any) -> list[str]:
    """What in a freshly made index would crash the process later, not raise.

    FAISS's ``index_factory`` accepts these, but training, adding or searching then
    segfaults, aborts or never ends (FAISS 1.15, each seen): HNSW with M < 2, NSG with
    R < 8, a transform to no dimensions, IVF with no lists, PQ codes of 0 or more than
    16 bits; an id map in the string is refused as the build adds its own."""
    import faiss

    problems = []
    if isinstance(faiss.downcast_index(index), faiss.IndexIDMap | faiss.IndexIDMap2):
        problems.append("IDMap in the factory string (the build maps ids itself)")
    for part in _index_tree(index):
        if isinstance(part, faiss.IndexPreTransform):
            for i in range(part.chain.size()):
                vt = faiss.downcast_VectorTransform(part.chain.at(i))
                if vt.d_out < 1:
                    problems.append(f"{type(vt).__name__} to {vt.d_out} dimensions")
        if isinstance(part, faiss.IndexHNSW):
            try:
                links = part.hnsw.nb_neighbors(0)
            except RuntimeError:  # M = 1: FAISS cannot lay out its levels
                links = 0
            if links < 4:
                problems.append("HNSW with M < 2 links a node")
        if isinstance(part, faiss.IndexIVF) and part.nlist < 1:
            problems.append(f"IVF with {part.nlist} lists")
        if isinstance(part, faiss.IndexNSG) and part.nsg.R < 8:
            problems.append(f"NSG with R={part.nsg.R} (8 or more)")
        pq_ = getattr(part, "pq", None)
        if isinstance(pq_, faiss.ProductQuantizer) and not 1 <= pq_.nbits <= 16:
            problems.append(f"PQ codes of {pq_.nbits} bits (1 to 16)")
    return problems


def train_on(index: Any, sample: np.ndarray) -> None:
    """Train the quantizers; k-means runs on the GPU when FAISS sees one.

    The index itself stays on the CPU (what is stored and served); only the
    clustering's nearest-centroid search moves, the way FAISS's own benchmarks do it.
    """
    import faiss

    if index.is_trained:
        return
    _fit_inner_product_pca(index, sample)
    ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    ivf = gpu_flat = None
    if ngpu > 0:
        try:
            ivf = faiss.extract_index_ivf(index)
        except RuntimeError:
            ivf = None  # no IVF layer: nothing k-means-heavy to move
        if ivf is not None:
            # Held in a local: the SWIG attribute does not keep the GPU index alive.
            gpu_flat = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(ivf.d))
            ivf.clustering_index = gpu_flat
    try:
        index.train(sample)
    finally:
        if ivf is not None and gpu_flat is not None:
            ivf.clustering_index = None


def inner_product_pca(sample: np.ndarray, out_dim: int) -> np.ndarray:
    """(out_dim, d) orthonormal rows that keep inner products of the sample's vectors.

    FAISS's PCAMatrix subtracts the sample's mean m from vectors and queries alike.
    That keeps L2 distances but not inner products: it scores <q - m, x - m>, not
    <q, x> (recall@100 0.58 against 0.98 for this, on the 9-dimensional test data of
    tests/test_indexing.py). Here the first row is the mean's direction, which carries
    most of an embedding's length when the vectors share a direction, and the others
    are the top out_dim - 1 principal axes of the sample with that direction projected
    out. The rows span a subspace, so <Aq, Ax> is the inner product of q and x
    projected onto it; with out_dim = d, A is a rotation and every inner product is
    exact.

    ``sample`` is (n, d) float32; raises ValueError when out_dim is not in [1, d].
    """
    n, d = sample.shape
    if not 1 <= out_dim <= d:
        raise ValueError(f"PCA to {out_dim} dimensions from {d}")
    x = sample.astype(np.float64)
    mean = x.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    # A zero mean (centred data) leaves no direction to keep: plain uncentred PCA.
    u = mean / norm if norm > 1e-12 else np.eye(d)[0]
    rest = x - np.outer(x @ u, u)
    rest -= rest.mean(axis=0)
    _, vecs = np.linalg.eigh(rest.T @ rest / max(n - 1, 1))  # ascending eigenvalues
    basis = np.column_stack([u, vecs[:, ::-1][:, : out_dim - 1]])
    # Re-orthonormalise: axes of zero variance may lean on u when the sample has
    # fewer distinct directions than out_dim. QR keeps u first (up to its sign).
    q, _ = np.linalg.qr(basis)
    return np.ascontiguousarray(q.T, dtype=np.float32)


def _fit_inner_product_pca(index: Any, sample: np.ndarray) -> None:
    """Train an inner-product index's leading PCA with ``inner_product_pca``.

    A no-op for L2 indexes (FAISS's centred PCA keeps L2 distances) and for indexes
    with no PCA. The matrix is set as the transform's A with a zero bias and marked
    trained, so ``index.train`` trains only what follows it, on projected vectors.
    """
    import faiss

    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        return
    top = faiss.downcast_index(index)
    if isinstance(top, faiss.IndexIDMap | faiss.IndexIDMap2):  # new_index's id map
        top = faiss.downcast_index(top.index)
    if not isinstance(top, faiss.IndexPreTransform) or top.chain.size() == 0:
        return
    pca = faiss.downcast_VectorTransform(top.chain.at(0))
    if not isinstance(pca, faiss.PCAMatrix) or pca.is_trained:
        return
    a = inner_product_pca(sample, pca.d_out)
    faiss.copy_array_to_vector(a.ravel(), pca.A)
    faiss.copy_array_to_vector(np.zeros(pca.d_out, dtype=np.float32), pca.b)
    pca.is_trained = True


def add_vectors(index: Any, vectors: np.ndarray, ids: np.ndarray) -> None:
    """Add (n, d) vectors with their int64 ids, in batches that bound the temporaries."""
    for lo in range(0, len(ids), 100_000):
        index.add_with_ids(vectors[lo : lo + 100_000], ids[lo : lo + 100_000])


def exact_search(
    vectors: np.ndarray, queries: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, float]:
    """(nq, k) row positions of the exact top-k (flat search over every vector), and
    the seconds the search took (building the flat index excluded)."""
    import faiss

    flat = faiss.IndexFlat(vectors.shape[1], _metric(metric))
    flat.add(vectors)
    t0 = time.perf_counter()
    _, idx = flat.search(queries, k)
    return idx, time.perf_counter() - t0


def _hits(found: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query, |found ∩ truth| and |truth| (both (nq, k) id matrices; -1 = none)."""
    hits = np.array(
        [len(np.intersect1d(f[f >= 0], t[t >= 0])) for f, t in zip(found, truth, strict=True)],
        dtype=np.int64,
    )
    return hits, (truth >= 0).sum(axis=1)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (both (nq, k) id matrices; -1 = none)."""
    hits, sizes = _hits(found, truth)
    return int(hits.sum()) / max(int(sizes.sum()), 1)


# How many standard errors the tuning sample's recall must clear the target by. The
# smallest probe that meets a bar on one sample is, by being the smallest, the one
# whose figure there is most likely a lucky overestimate; with fine probe steps its
# true recall sits right at the target, so an independent sample would fall short
# about half the time. Tuning to target + z·SE(tuning − held-out) bounds that to
# about Φ(-z) ≈ 2% at z = 2, at the price of a few more probes (a margin of 0.0025
# recall for 2,000 queries a sample and a per-query spread of 0.04).
TUNING_MARGIN_Z = 2.0


class ProbeTuning(NamedTuple):
    """What ``tune_probe`` chose and saw on the tuning sample."""

    probe: int | None  # None when the index has no search knob
    recall: float  # the tuning sample's recall at ``probe``
    required: float  # the bar it had to meet there: the target plus the noise margin
    met: bool  # whether ``recall`` met ``required`` (False: the largest probe fell short)
    curve: dict[str, float]  # recall at every probe tried, keyed by the probe as a string


def tune_probe(
    index: Any,
    queries: np.ndarray,
    truth_ids: np.ndarray,
    icfg: IndexConfig,
    holdout_size: int | None = None,
) -> ProbeTuning:
    """The smallest probe value in [probe_min, probe_max] whose recall on ``queries``
    meets the target plus a sampling-noise margin.

    The margin is ``TUNING_MARGIN_Z`` standard errors of the difference between this
    sample's recall and that of an independent ``holdout_size``-query sample (the
    per-query recall spread at the probe, over sqrt(1/nq + 1/holdout_size)); it is
    zero when ``holdout_size`` is None. Recall grows with the probe count, so a
    binary search needs about log2(range) evaluations. The chosen value is left set
    on the index.
    """
    knob = probe_parameter(index)
    k = truth_ids.shape[1]
    curve: dict[str, float] = {}
    seen: dict[int | None, tuple[float, float]] = {}
    noise = 0.0 if holdout_size is None else math.sqrt(1 / len(queries) + 1 / holdout_size)

    def measure(p: int | None) -> tuple[float, float]:
        """(recall, required recall) at probe ``p``."""
        if p not in seen:
            if p is not None:
                set_search_params(index, {knob: p})
            _, found = index.search(queries, k)
            hits, sizes = _hits(found, truth_ids)
            per = hits / np.maximum(sizes, 1)
            spread = float(per.std(ddof=1)) if len(per) > 1 else 0.0
            r = int(hits.sum()) / max(int(sizes.sum()), 1)
            seen[p] = (r, icfg.recall_target + TUNING_MARGIN_Z * spread * noise)
            curve[str(p)] = round(r, 5)
        return seen[p]

    def tuned(p: int | None) -> ProbeTuning:
        r, bar = measure(p)
        if p is not None:
            # The search may have ended on another probe value: leave the chosen one
            # set, since the held-out check, latency and the saved index use it.
            set_search_params(index, {knob: p})
        return ProbeTuning(p, r, round(bar, 5), r >= bar, curve)

    if knob is None:
        return tuned(None)
    lo, hi = icfg.probe_min, icfg.probe_max
    if knob == "nprobe":
        hi = min(hi, faiss_nlist(index))  # more probes than lists change nothing
        lo = min(lo, hi)
    r_hi, bar_hi = measure(hi)
    if r_hi < bar_hi:
        return tuned(hi)
    while lo < hi:
        mid = (lo + hi) // 2
        r, bar = measure(mid)
        if r >= bar:
            hi = mid
        else:
            lo = mid + 1
    return tuned(lo)


def query_samples(n_users: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint seeded samples of user rows: (tuning rows, held-out rows), each sorted.

    Each holds ``size`` rows when there are 2·size users or more; otherwise the users
    are split half and half (the held-out sample gets the odd one, being the one the
    gate decides on). Raises IndexBuildError when a sample would be empty.
    """
    if n_users < 2:
        raise IndexBuildError(
            f"{n_users} user embeddings: the gate needs at least 2, for disjoint tuning "
            "and held-out query samples"
        )
    n_tune = min(size, n_users // 2)
    n_held = min(size, n_users - n_tune)
    rows = np.random.default_rng(seed).choice(n_users, n_tune + n_held, replace=False)
    return np.sort(rows[:n_tune]), np.sort(rows[n_tune:])


def faiss_nlist(index: Any) -> int:
    import faiss

    return int(faiss.extract_index_ivf(index).nlist)


def measure_speed(index: Any, queries: np.ndarray, k: int, n_single: int) -> dict[str, float]:
    """Single-query p50/p99 latency (ms, one query per call) and batch QPS (all queries)."""
    lat = []
    for q in queries[:n_single]:
        t0 = time.perf_counter()
        index.search(q[None, :], k)
        lat.append((time.perf_counter() - t0) * 1e3)
    t0 = time.perf_counter()
    index.search(queries, k)
    batch_s = time.perf_counter() - t0
    return {
        "p50_ms": round(float(np.percentile(lat, 50)), 4),
        "p99_ms": round(float(np.percentile(lat, 99)), 4),
        "qps": round(len(queries) / batch_s, 1),
    }


def index_version(model_version: str, icfg: IndexConfig) -> str:
    """``<model version>.<digest>``: the embeddings, what shapes the index, and the code.

    Runtime-only knobs (reload interval, how many versions to keep, the work folder)
    are left out so changing them does not rebuild.
    """
    shaping = icfg.model_dump(
        mode="json", exclude={"reload_interval_s", "keep_versions", "work_dir"}
    )
    return f"{model_version}.{config_digest({'index': shaping, 'code': source_digest('videorec.indexing')})}"


def build_index(
    cfg: Config,
    *,
    model_version: str,
    store: ArtifactStore | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Build, validate and write one index version; returns its manifest.

    ``model_version`` is the two-tower version to index, passed by the caller (the
    DAG's training task; the CLI picks the latest as a convenience). A build
    whose version exists already returns the stored manifest with ``skipped: true``.
    Raises IndexBuildError on bad inputs and IndexGateError when validation fails.

    The gate draws two disjoint seeded samples of user query embeddings (``query_samples``;
    ``validation_queries`` each, or the users split half and half when there are fewer
    than twice that). The probe is tuned on the first; the recall reported as
    ``recall@k`` and gated on is measured on the second, once, at the chosen probe.
    A recall measured on the queries the probe was picked on is a selected figure: the
    smallest probe that clears the bar there is the one most likely to have cleared it
    by luck. The held-out figure has seen no choice, so it estimates what readers get.

    When the held-out recall falls below the target although tuning met its bar, the
    gate fails (and names both figures). It does not step the probe up and look at the
    held-out sample again: retrying until that sample passes would select on it, and
    its figure would be as optimistic as the tuning one. Such a shortfall is made rare
    rather than routine by the tuning bar's margin (``TUNING_MARGIN_Z``); when it
    happens the samples disagree by more than their noise, and the operator decides:
    raise ``probe_min`` above the chosen probe, or ``validation_queries``.
    """
    store = store or open_store(cfg)
    # The model and its features version (the precompute reads both once the index is
    # live), held from before they are read until the index is in a slot: a collection
    # beside a build from an old model cannot delete them in between.
    with holding_model(store, model_version, why=f"index build from {model_version}") as man:
        if man is None:
            raise IndexBuildError(f"{store.uri(MODEL)}/{model_version}: no such model version")
        return _build(cfg, model_version, store, log or (lambda _m: None))


def _build(cfg: Config, model_version: str, store: ArtifactStore, say: Any) -> dict[str, Any]:
    """:func:`build_index`'s work, its inputs held."""
    import faiss

    icfg = cfg.index
    version = index_version(model_version, icfg)
    if store.exists(INDEX, version):
        return _reuse(store, version)

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    mdir = store.local_path(MODEL, model_version)
    videos = read_embeddings(mdir / VIDEO_EMBEDDINGS_FILE)
    users = read_embeddings(mdir / USER_EMBEDDINGS_FILE)
    n, d = videos.vectors.shape
    if n < icfg.min_vectors:
        raise IndexBuildError(
            f"{model_version}: {n} vectors, fewer than min_vectors {icfg.min_vectors}"
        )
    if len(users.ids) == 0:
        raise IndexBuildError(f"{model_version}: no user embeddings to validate with")
    if users.vectors.shape[1] != d:
        raise IndexBuildError(f"query dim {users.vectors.shape[1]} != video dim {d}")
    # Drawn before training so too few users fail fast; seeded apart from the training
    # sample, so the queries do not depend on resuming.
    try:
        tune_rows, held_rows = query_samples(len(users.ids), icfg.validation_queries, icfg.seed + 1)
    except IndexBuildError as err:
        raise IndexBuildError(f"{model_version}: {err}") from None
    factory, nlist = resolve_factory(icfg, n, d)
    say(f"index {version}: {factory} over {n:,} × {d} vectors")

    # The work folder is keyed by what shapes the trained and filled index only, so a
    # retry after a failed gate with a wider probe range or another target resumes.
    shaping = icfg.model_dump(
        include={"factory", "nlist", "pca_dim", "metric", "train_sample", "seed"}
    )
    work = cfg.resolve_path(icfg.work_dir) / (
        f"{model_version}.{config_digest({'index': shaping, 'code': source_digest('videorec.indexing')})}"
    )
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(icfg.seed)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    trained_f, filled_f = work / "trained.faiss", work / "filled.faiss"
    if filled_f.is_file():
        index = faiss.read_index(str(filled_f))
        say("resumed from the filled index")
    else:
        if trained_f.is_file():
            index = faiss.read_index(str(trained_f))
            say("resumed from the trained index")
        else:
            index = new_index(factory, d, icfg.metric)
            # A bad name fails before training; tried on a copy, as FAISS saves some
            # search parameters with the index and the resume files must not hold them
            # (the work folder is not keyed by them).
            set_search_params(faiss.clone_index(index), icfg.search_params)
            take = min(icfg.train_sample, n)
            sample = videos.vectors[np.sort(rng.choice(n, take, replace=False))]
            t0 = time.perf_counter()
            try:
                train_on(index, sample)
            except RuntimeError as err:
                raise IndexBuildError(f"training {factory} on {take:,} vectors: {err}") from None
            timings["train_s"] = round(time.perf_counter() - t0, 3)
            _write_atomic(index, trained_f)
        t0 = time.perf_counter()
        add_vectors(index, videos.vectors, videos.ids)
        timings["add_s"] = round(time.perf_counter() - t0, 3)
        if index.ntotal == n:  # never resume from an index that cannot pass
            _write_atomic(index, filled_f)

    report: dict[str, Any] = {
        "version": version, "model_version": model_version, "factory": factory, "nlist": nlist,
        "metric": icfg.metric, "dimension": d, "vector_count": int(index.ntotal),
        "export_count": n, "recall_k": icfg.recall_k, "recall_target": icfg.recall_target,
    }  # fmt: skip
    if index.ntotal != n:
        _write_failure(work, report)
        filled_f.unlink(missing_ok=True)  # a stale resume file: the retry re-adds
        raise IndexGateError(
            f"index holds {index.ntotal:,} vectors but the export has {n:,}", report
        )

    nt, nh = len(tune_rows), len(held_rows)
    queries = users.vectors[np.concatenate([tune_rows, held_rows])]
    k = min(icfg.recall_k, n)
    exact_rows, exact_s = exact_search(videos.vectors, queries, k, icfg.metric)
    truth = videos.ids[exact_rows]
    set_search_params(index, icfg.search_params)
    try:
        tuning = tune_probe(index, queries[:nt], truth[:nt], icfg, holdout_size=nh)
        # The held-out sample's one look: at the probe tune_probe left set.
        _, found = index.search(queries[nt:], k)
        speed = measure_speed(index, queries[nt:], k, icfg.latency_queries)
    except RuntimeError as err:  # FAISS refusing the search (k against a search parameter)
        raise IndexBuildError(
            f"searching {factory} with {dict(icfg.search_params)} at k={k}: {err}"
        ) from None
    recall = recall_at_k(found, truth[nt:])
    index_bytes = len(faiss.serialize_index(index))
    knob, probe = probe_parameter(index), tuning.probe
    report.update({
        "probe_parameter": knob, "nprobe": probe, f"recall@{icfg.recall_k}": round(recall, 5),
        f"tuning_recall@{icfg.recall_k}": round(tuning.recall, 5),
        "tuning_required_recall": tuning.required, "tuning_queries": nt, "heldout_queries": nh,
        "recall_curve": tuning.curve, "search_params": dict(icfg.search_params), **speed,
        "exact_qps": round((nt + nh) / exact_s, 1),
        "index_bytes": index_bytes, "bytes_per_vector": round(index_bytes / n, 2),
        "code_bytes": int(index.sa_code_size()) if _has_sa_code(index) else None,
    })  # fmt: skip
    # Which users each figure was measured on, for an audit of the split; only in the
    # validation files, since manifests are read whole by status and the CLI.
    samples = {
        "tuning_user_ids": users.ids[tune_rows].tolist(),
        "heldout_user_ids": users.ids[held_rows].tolist(),
    }
    if recall < icfg.recall_target:
        # Kept beside the resumable files, for whoever is on call to read.
        _write_failure(work, {**report, **samples})
        at = f"at {knob} {probe}" if knob else "(no search knob)"
        if tuning.met:
            why = (
                f"although the tuning sample's {tuning.recall:.4f} met its bar "
                f"{tuning.required:.4f} there: the two samples ({nt:,} and {nh:,} queries) "
                "disagree by more than their noise; raise probe_min above "
                f"{probe} or validation_queries to retry"
            )
        else:
            largest = ", the largest in the range" if knob else ""
            why = (
                f"(tuning sample: {tuning.recall:.4f}, bar {tuning.required:.4f}){largest}: "
                f"{factory} cannot meet it"
            )
        raise IndexGateError(
            f"held-out recall@{k} {recall:.4f} < target {icfg.recall_target} {at} {why}; "
            "the active index is unchanged",
            report,
        )

    timings["total_s"] = round(time.perf_counter() - t_start, 3)
    manifest = {
        **report, "build_seconds": timings["total_s"], "timings": timings,
        "config_digest": cfg.digest(), "index_config_digest": config_digest(icfg.model_dump(mode="json")),
        "train_sample": min(icfg.train_sample, n), "faiss_version": faiss.__version__,
        "gate": "passed",
    }  # fmt: skip
    try:
        with store.write_version(INDEX, version, manifest) as out:
            faiss.write_index(index, str(out / INDEX_FILE))
            pq.write_table(pa.table({"video_id": videos.ids}), out / ID_MAP_FILE)
            (out / "validation.json").write_text(
                json.dumps({**report, **samples}, indent=1, sort_keys=True)
            )
    except VersionExistsError:
        # A concurrent attempt (an Airflow retry beside a zombie) committed this
        # version first, from the same inputs: use the winner's.
        shutil.rmtree(work, ignore_errors=True)
        return _reuse(store, version)

    assign_standby(store, version)
    shutil.rmtree(work, ignore_errors=True)  # the version holds it all now
    say(
        f"recall@{k} {recall:.4f} held out ({tuning.recall:.4f} tuning) at {knob}={probe}; "
        f"{speed['qps']:,} QPS"
    )
    return {**manifest, "skipped": False}


def _write_failure(work: Path, report: dict[str, Any]) -> None:
    """The failed gate's report beside the resumable files, for whoever is on call."""
    work.mkdir(parents=True, exist_ok=True)  # a finished concurrent attempt removed it
    (work / "gate_failure.json").write_text(json.dumps(report, indent=1, sort_keys=True))


def _reuse(store: ArtifactStore, version: str) -> dict[str, Any]:
    """The stored manifest of a version built before (or by a concurrent attempt).

    It goes back into the standby slot unless a slot already holds it: a build cut
    off between its write and its slot assignment is finished here.
    """

    ensure_in_a_slot(store, version)
    return {**store.read_manifest(INDEX, version), "skipped": True}


def _has_sa_code(index: Any) -> bool:
    try:
        index.sa_code_size()
        return True
    except RuntimeError:
        return False


def _write_atomic(index: Any, path: Path) -> None:
    """Save an index for resuming; a concurrent attempt of the same build shares the
    folder, so the temporary name is this write's own, and the folder is made again
    if the attempt that finished first removed it."""
    import faiss

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        faiss.write_index(index, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
