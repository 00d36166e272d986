"""Benchmark: FAISS index shapes on a two-tower model's real embeddings.

    .venv/bin/python bench/index_benchmark.py --model-dir DIR [--catalogue 1000000]

DIR is a two-tower artifact version (``videorec train`` prints its URI). Queries are
that model's *user* embeddings (a seeded sample of real users). The indexed vectors
are the model's exported video embeddings, or with ``--catalogue N`` the candidate
tower applied to an N-video catalogue from the synthetic generator (same seed, so
the same categories and channels as the platform the model learned from).

A factory may carry fixed search parameters after a bar, ``"IVF{nlist},RaBitQ4|qb=8"``
(several: ``|qb=8|centered=1``), so one factory is measured at several settings.

For each factory string, in one run: build time (train + add), bytes per vector
(the serialised index over N), recall@100 against exact flat search at several
nprobe/efSearch values and the smallest one meeting 0.95, single-query p50/p99
latency and batch QPS at that setting. Exact flat search is measured the same way.
``meets_goal`` says whether a row reaches the target recall within ``--max-bytes`` a
vector at ``--min-speedup`` times exact search's batch QPS (issue 16's goal: 0.95,
128 B, 10x).
Prints one JSON object (machine, date, rows); ``--markdown`` also prints a table.
The build's own functions (``videorec.indexing.build``) do the work.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from pathlib import Path

import bench_host
import numpy as np

DEFAULT_FACTORIES = [
    "Flat",
    "HNSW32",
    "IVF{nlist},PQ64",  # the seed's production shape: 64-byte PQ codes
    "OPQ64_256,IVF{nlist},PQ64",
    "IVF{nlist},PQ64,Refine(SQ8)",
    "IVF{nlist},PQ128",
    "IVF{nlist},SQ4",
    "IVF{nlist},SQ6",
    "IVF{nlist},SQ8",
    # Issue 16: an eighth of exact search's memory (<= 128 B/vector with ids).
    "PCA64,IVF{nlist},SQ8",
    "PCA96,IVF{nlist},SQ8",  # the default: PCA{pca_dim},IVF{nlist},SQ8
    "PCA112,IVF{nlist},SQ8",
    "PCA128,IVF{nlist},SQ6",
    "IVF{nlist},RaBitQ2|qb=8",
    "IVF{nlist},RaBitQ3|qb=8",
    "IVF{nlist},RaBitQfs2|qb=8",
    "IVF{nlist},PQ32,Refine(SQ4)",
]
PROBES = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256]


def embed_catalogue(
    model_dir: Path, n_videos: int, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """(ids (N,), vectors (N, d)): the model's candidate tower over an N-video catalogue."""
    import torch

    from videorec.artifact_names import CHECKPOINT_FILE
    from videorec.datagen.synthetic import GeneratorParams, catalogue_table
    from videorec.training.data import video_table
    from videorec.training.train import load_checkpoint

    model, _meta = load_checkpoint(model_dir / CHECKPOINT_FILE)
    manifest = json.loads((model_dir / "_manifest.json").read_text())
    as_of = dt.datetime.fromisoformat(manifest["data_manifest"]["as_of"])
    params = GeneratorParams(users=10, videos=n_videos, days=30, seed=seed, end_date=as_of.date())
    videos = catalogue_table(params)
    vt = video_table(videos, None, model.cfg, None, as_of)
    tensors = vt.tensors("cpu")
    out = []
    with torch.no_grad():
        for lo in range(1, n_videos + 1, 16_384):
            rows = torch.arange(lo, min(lo + 16_384, n_videos + 1))
            out.append(model.candidate({k: v[rows] for k, v in tensors.items()}).numpy())
    return vt.video_ids, np.concatenate(out).astype(np.float32)


def bench_factory(
    factory: str, x: np.ndarray, ids: np.ndarray, q: np.ndarray, truth: np.ndarray,
    *, train_sample: int, n_single: int, target: float,
) -> dict:  # fmt: skip
    import faiss

    from videorec.indexing import build as b
    from videorec.indexing.reader import set_search_params

    n, d = x.shape
    nlist = b.auto_nlist(n)
    spec, *fixed = factory.split("|")
    params = {name: float(v) for name, v in (f.split("=") for f in fixed)}
    fac = spec.replace("{nlist}", str(nlist))
    t0 = time.perf_counter()
    index = b.new_index(fac, d, "inner_product")
    sample = x[np.sort(np.random.default_rng(0).choice(n, min(train_sample, n), replace=False))]
    b.train_on(index, sample)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    b.add_vectors(index, x, ids)
    add_s = time.perf_counter() - t1
    size = len(faiss.serialize_index(index))
    knob = b.probe_parameter(index)
    k = truth.shape[1]
    curve: dict[str, float] = {}
    chosen = None
    values = [None] if knob is None else [p for p in PROBES if knob != "nprobe" or p <= nlist]
    if knob == "efSearch":
        values = [16, 32, 64, 128, 256, 512]
    if spec.endswith(")") and "Refine" in spec:
        params.setdefault("k_factor_rf", 4)
    set_search_params(index, params)
    for p in values:
        if p is not None:
            b.set_search_params(index, {knob: p})
        _, found = index.search(q, k)
        r = b.recall_at_k(found, truth)
        curve[str(p)] = round(r, 4)
        if chosen is None and r >= target:
            chosen = p
    setting = chosen if chosen is not None else values[-1]
    if setting is not None:
        b.set_search_params(index, {knob: setting})
    speed = b.measure_speed(index, q, k, n_single)
    return {
        "factory": fac + "".join(f"|{k}={v:g}" for k, v in params.items()), "train_s": round(train_s, 2), "add_s": round(add_s, 2),
        "build_s": round(train_s + add_s, 2), "bytes_per_vector": round(size / n, 1),
        "probe": knob, "recall_curve": curve, "chosen": setting,
        "recall_at_chosen": curve[str(setting)], "meets_target": chosen is not None or knob is None,
        **speed,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--catalogue", type=int, default=0, help="embed an N-video catalogue")
    ap.add_argument("--factories", nargs="*", default=DEFAULT_FACTORIES)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--single", type=int, default=300)
    ap.add_argument("--train-sample", type=int, default=200_000)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--max-bytes", type=float, default=128.0, help="goal: B/vector at most")
    ap.add_argument("--min-speedup", type=float, default=10.0, help="goal: × exact batch QPS")
    args = ap.parse_args()
    load_before = bench_host.load_average()

    import faiss

    from videorec.indexing.build import exact_search
    from videorec.indexing.reader import read_embeddings

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    if args.catalogue:
        ids, x = embed_catalogue(args.model_dir, args.catalogue)
    else:
        e = read_embeddings(args.model_dir / "video_embeddings.parquet")
        ids, x = e.ids, e.vectors
    embed_s = time.perf_counter() - t0
    users = read_embeddings(args.model_dir / "user_embeddings.parquet")
    rng = np.random.default_rng(1)
    q = users.vectors[
        np.sort(rng.choice(len(users.ids), min(args.queries, len(users.ids)), replace=False))
    ]
    exact_rows, exact_s = exact_search(x, q, 100, "inner_product")
    truth = ids[exact_rows]
    rows = []
    for f in args.factories:
        row = bench_factory(f, x, ids, q, truth, train_sample=args.train_sample,
                            n_single=args.single, target=0.95)  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    flat_qps = len(q) / exact_s
    for row in rows:
        row["x_exact_qps"] = round(row["qps"] / flat_qps, 1)
        row["meets_goal"] = bool(
            row["meets_target"] and row["probe"] is not None
            and row["bytes_per_vector"] <= args.max_bytes
            and row["qps"] >= args.min_speedup * flat_qps
        )  # fmt: skip
    result = {
        **bench_host.header(load_before),
        "faiss": faiss.__version__, "vectors": int(x.shape[0]), "dim": int(x.shape[1]),
        "queries": len(q), "embed_s": round(embed_s, 1),
        "exact_batch_qps": round(flat_qps, 1), "rows": rows,
        "goal": {"recall": 0.95, "max_bytes": args.max_bytes, "min_speedup": args.min_speedup},
    }  # fmt: skip
    print(json.dumps(result))
    if args.markdown:
        flat = next((r for r in rows if r["factory"] == "Flat"), None)
        print(
            "| factory | build s | B/vector | recall@100 by probe | chosen | recall | p50 ms | p99 ms | QPS | × flat QPS | memory / flat | goal |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            ratio = f"{r['qps'] / flat['qps']:.1f}" if flat else ""
            mem = f"{r['bytes_per_vector'] / flat['bytes_per_vector']:.2f}" if flat else ""
            curve = ", ".join(f"{k}: {v}" for k, v in r["recall_curve"].items())
            print(f"| {r['factory']} | {r['build_s']} | {r['bytes_per_vector']} | {curve} | {r['chosen']} | "
                  f"{r['recall_at_chosen']} | {r['p50_ms']} | {r['p99_ms']} | {r['qps']:,} | {ratio} | {mem} | "
                  f"{'met' if r['meets_goal'] else ''} |")  # fmt: skip


if __name__ == "__main__":
    main()
