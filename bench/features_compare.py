"""Compare two features versions table by table (a full pass and an incremental run).

    .venv/bin/python bench/features_compare.py FULL_VERSION_DIR INCREMENTAL_VERSION_DIR

The examples are read as every reader reads them (``videorec.examples.open_examples``:
a table, or day files under the version's rule) and written to one Parquet file each;
DuckDB (a benchmark dependency) then checks, per table: the row counts, every
non-float column equal as a multiset (``EXCEPT ALL`` both ways), and the largest
difference of every float column, rows matched by the table's key. Prints one JSON
object, with the seconds each side's examples took to read; exits 1 when a table
differs beyond 1e-9.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

KEYS = {
    "examples": ["event_id"],
    "eval": ["user_id", "video_id", "ts", "event_type"],
    "video_features": ["video_id"],
    "user_features": ["user_id"],
    "trending": ["video_id"],
    "watched": ["user_id", "video_id"],
    "online_user_features": ["user_id"],
    "online_video_features": ["video_id"],
}
TOLERANCE = 1e-9


def _materialise(version: Path, out: Path) -> tuple[str, float]:
    """The version's examples as one Parquet file (written a batch at a time), and the
    seconds spent reading them (what a reader pays: a table's batches, or a reference's
    day files under the rule)."""
    import pyarrow.parquet as pq

    from videorec.examples import COLUMNS, SCHEMA, open_examples

    read_s = 0.0
    src = open_examples(version)
    with pq.ParquetWriter(out, SCHEMA) as w:
        for i in range(len(src.files)):
            batches = src.batches(COLUMNS, i)
            while True:
                t0 = time.perf_counter()
                t = next(batches, None)
                read_s += time.perf_counter() - t0
                if t is None:
                    break
                w.write_table(t.cast(SCHEMA))
    return str(out), round(read_s, 1)


def _nested(con: object, a: str, b: str, keys: list[str], col: str) -> tuple[int, float]:
    """(rows whose list ``col`` differs in length or in a non-float field, the largest
    float difference) for a list of structs (a map is one), rows matched by key."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    order = ", ".join(f'"{k}"' for k in keys)
    la, lb = (
        con.sql(f'SELECT "{col}" FROM {x} ORDER BY {order}').to_arrow_table()[col].combine_chunks()
        for x in (a, b)
    )
    len_a, len_b = (pc.list_value_length(x).fill_null(-1).to_numpy() for x in (la, lb))
    bad_rows = set(np.flatnonzero(len_a != len_b).tolist())
    same = np.flatnonzero(len_a == len_b)
    fa, fb = (pc.list_flatten(x.take(pa.array(same))) for x in (la, lb))
    parent = pc.list_parent_indices(la.take(pa.array(same))).to_numpy()
    worst = 0.0
    for i, field in enumerate(fa.type):
        xa, xb = fa.field(i), fb.field(i)
        if pa.types.is_floating(field.type):
            d = np.abs(xa.to_numpy(zero_copy_only=False) - xb.to_numpy(zero_copy_only=False))
            worst = max(worst, float(np.nanmax(d)) if len(d) else 0.0)
        else:
            differ = pc.fill_null(pc.not_equal(xa, xb), True).to_numpy(zero_copy_only=False)
            bad_rows |= set(same[parent[differ]].tolist())
    return len(bad_rows), worst


def compare(full: Path, inc: Path, work: Path) -> dict:
    """{table: {rows, rows_other, differ_a, differ_b, max_float_diff}}, and ``equal``."""
    import duckdb

    con = duckdb.connect()
    (path_a, read_a), (path_b, read_b) = (
        _materialise(full, work / "a.parquet"),
        _materialise(inc, work / "b.parquet"),
    )
    src = {"a": path_a, "b": path_b}
    result: dict = {"examples_read_s": {"full": read_a, "other": read_b}}
    for name, keys in KEYS.items():
        a = f"read_parquet('{src['a']}')" if name == "examples" else f"'{full}/{name}/*.parquet'"
        b = f"read_parquet('{src['b']}')" if name == "examples" else f"'{inc}/{name}/*.parquet'"
        cols = con.execute(f"DESCRIBE SELECT * FROM {a}").fetchall()
        floats = [c for c, t, *_ in cols if t in ("DOUBLE", "FLOAT")]
        # Lists of structs or maps holding floats: compared element by element below.
        nested = [c for c, t, *_ in cols if c not in floats and ("DOUBLE" in t or "FLOAT" in t)]
        exact = ", ".join(f'"{c}"' for c, *_ in cols if c not in floats + nested)
        n_a = con.execute(f"SELECT count(*) FROM {a}").fetchall()[0][0]
        n_b = con.execute(f"SELECT count(*) FROM {b}").fetchall()[0][0]
        only = [
            con.execute(
                f"SELECT count(*) FROM (SELECT {exact} FROM {x} EXCEPT ALL SELECT {exact} FROM {y})"
            ).fetchall()[0][0]
            for x, y in ((a, b), (b, a))
        ]
        on = " AND ".join(f'x."{k}" = y."{k}"' for k in keys)
        diffs = [f'max(abs(x."{c}" - y."{c}"))' for c in floats]
        worst = (
            con.execute(f"SELECT {', '.join(diffs)} FROM {a} x JOIN {b} y ON {on}").fetchall()[0]
            if diffs
            else ()
        )
        nested_diff = [_nested(con, a, b, keys, c) for c in nested]
        result[name] = {
            "rows": n_a, "rows_other": n_b, "only_in_full": only[0], "only_in_other": only[1],
            "max_float_diff": max([w or 0.0 for w in worst] + [d[1] for d in nested_diff],
                                  default=0.0),
            "nested_rows_differ": sum(d[0] for d in nested_diff),
        }  # fmt: skip
    result["equal"] = all(
        r["rows"] == r["rows_other"] and not r["only_in_full"] and not r["only_in_other"]
        and not r["nested_rows_differ"] and r["max_float_diff"] <= TOLERANCE
        for name, r in result.items() if name in KEYS
    )  # fmt: skip
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("full", type=Path)
    ap.add_argument("other", type=Path)
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        res = compare(args.full, args.other, Path(tmp))
    res["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(res, indent=1))
    return 0 if res["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
