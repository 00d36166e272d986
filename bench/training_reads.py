"""What a training run reads of a features version's examples before its first epoch.

    .venv/bin/python bench/training_reads.py FEATURES_VERSION_DIR [--repeats 2]

Until 9b46cfc, ``train_two_tower`` made four passes over the examples: the
vocabularies (device and country), the shard counts, the split's key columns and the
read itself. By reference (an incremental features version), each pass re-applies the
rule to every watch play of the training days. It now makes one
(``training.data.scan_examples``). This script times both ways with the same reader
(``videorec.examples.ExampleSource``): the four passes as that code made them, and the
one scan, in memory (every training column) and streamed (the split's keys alone).
Prints one JSON object with the median seconds of each over ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_host


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(median seconds over ``repeats`` calls, the last call's result)."""
    seconds, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - t0)
    return round(statistics.median(seconds), 2), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("features", type=Path, help="a features version folder")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from videorec.examples import KEY_COLUMNS, open_examples
    from videorec.training.data import EXAMPLE_COLUMNS, VOCAB_COLUMNS

    load = bench_host.load_average()
    src = open_examples(args.features)
    r = args.repeats
    before = {
        "vocabularies": _timed(lambda: src.scan([], VOCAB_COLUMNS), r)[0],
        "shard_counts": _timed(lambda: src.scan(["user_id"]), r)[0],
        "split_keys": _timed(lambda: src.read(list(KEY_COLUMNS)), r)[0],
        "read": _timed(lambda: src.read(EXAMPLE_COLUMNS), r)[0],
    }
    in_memory, scan = _timed(lambda: src.scan(EXAMPLE_COLUMNS, VOCAB_COLUMNS), r)
    streamed, _ = _timed(lambda: src.scan(KEY_COLUMNS, VOCAB_COLUMNS), r)
    print(
        json.dumps(
            {
                **bench_host.header(load),
                "features": str(args.features),
                "by_reference": src.by_reference,
                "examples": scan.table.num_rows,
                "before_s": {**before, "total": round(sum(before.values()), 2)},
                "before_streamed_s": round(
                    before["vocabularies"] + before["shard_counts"] + before["split_keys"], 2
                ),
                "one_scan_s": {"memory": in_memory, "stream": streamed},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
