"""Benchmark: EASE and ALS fit and full-catalogue scoring at 10k users × 10k videos.

    .venv/bin/python bench/evaluation_speed.py [--users 10000] [--videos 10000] [--repeat 2]

Two matrices:

- ``platform``: a generated synthetic platform (30 days, seed 42, under ``--work``),
  split per user in time; its training matrix is smaller than users × videos
  (videos nobody watched, users without plays). Also times ``evaluate_fitted`` on
  the hold-out.
- ``exact``: exactly ``--users`` × ``--videos`` with the platform's skew in spirit:
  per-user activity log-normal (median 40 interactions), video popularity Zipf-like,
  every video watched at least once, seed 0.

For EASE (lambda 200) and ALS (64 factors, 15 iterations) it times, ``--repeat``
times each: ``fit`` and ``recommend`` (top 200 for every user, batched, training
items excluded). Prints one JSON object with the machine, date, shapes, load
average before and after (another job on the machine inflates the times; the
minimum over repeats is the least disturbed) and this process's peak memory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_host

DATE = dt.date(2026, 11, 1)


def _exact_matrix(n_users: int, n_items: int) -> Any:
    """Interactions of exactly n_users × n_items with skewed activity and popularity."""
    import numpy as np

    from videorec.evaluation.interactions import Events, Interactions

    rng = np.random.default_rng(0)
    per_user = np.clip(rng.lognormal(np.log(40), 0.8, n_users), 5, 1000).astype(np.int64)
    p = 1.0 / (np.arange(n_items) + 10.0) ** 0.8
    users = np.r_[np.repeat(np.arange(n_users), per_user), rng.integers(0, n_users, n_items)]
    items = np.r_[rng.choice(n_items, int(per_user.sum()), p=p / p.sum()), np.arange(n_items)]
    ts = rng.integers(0, 30 * 86_400, len(users)) * 1_000_000
    return Interactions.from_events(Events(users, items, ts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--videos", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "videorec-bench-eval"))
    args = ap.parse_args()

    import numpy as np

    from videorec.datagen.synthetic import GeneratorParams, generate
    from videorec.evaluation.harness import evaluate_fitted
    from videorec.evaluation.interactions import split_from_dataset
    from videorec.evaluation.recommenders import ALS, EASE

    load_before = bench_host.load_average()
    data = Path(args.work) / f"platform-{args.users}u-{args.videos}v"
    if not (data / "_dataset.json").exists():
        params = GeneratorParams(args.users, args.videos, 30, 42, DATE)
        generate(params, data, config_digest="bench", progress=False)
    t0 = time.perf_counter()
    split = split_from_dataset(data)
    split_s = time.perf_counter() - t0
    matrices = {"platform": split.train, "exact": _exact_matrix(args.users, args.videos)}
    results: dict[str, dict[str, Any]] = {}
    for label, train in matrices.items():
        rows = np.arange(train.n_users)
        results[label] = {
            "users": train.n_users,
            "items": train.n_items,
            "nnz": int(train.matrix.nnz),
        }
        for name, make in (("EASE", lambda: EASE(lam=200.0)), ("ALS", lambda: ALS(factors=64))):
            r: dict[str, list[float]] = {"fit_s": [], "recommend_top200_all_users_s": []}
            if label == "platform":
                r["evaluate_s"] = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                model = make().fit(train)
                t1 = time.perf_counter()
                model.recommend(rows, 200)
                r["fit_s"].append(round(t1 - t0, 2))
                r["recommend_top200_all_users_s"].append(round(time.perf_counter() - t1, 2))
                if label == "platform":
                    t2 = time.perf_counter()
                    evaluate_fitted(model, split)
                    r["evaluate_s"].append(round(time.perf_counter() - t2, 2))
            best = min(r["fit_s"]) + min(r["recommend_top200_all_users_s"])
            results[label][name] = {**r, "fit_plus_recommend_min_s": round(best, 2)}
    print(
        json.dumps(
            {
                "bench": "evaluation_speed",
                **bench_host.header(load_before),
                "numpy": np.__version__,
                "data": str(data),
                "platform_split_s": round(split_s, 2),
                "platform_evaluated_users": split.test.n_users,
                "results": results,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
