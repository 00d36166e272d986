"""Bad paths and bad files through the real `videorec` console script.

Every case must exit 2 with a message that names the offending path, in JSON mode
(one object on stdout) and in human mode (one line on stderr), and never print a
traceback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

VIDEOREC = str(Path(sys.executable).parent / "videorec")
ML_SMALL = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml-latest-small"


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small valid data set to break in different ways."""
    out = tmp_path_factory.mktemp("cli-bad") / "good"
    args = ["generate", "--users", "60", "--videos", "40", "--days", "3", "--out", str(out)]
    proc = subprocess.run([VIDEOREC, *args, "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


def _copy(good: Path, tmp: Path, name: str) -> Path:
    dst = tmp / name
    shutil.copytree(good, dst)
    return dst


def _empty_store_config(tmp: Path) -> Path:
    """A config whose artifact store is empty (nothing was ever published)."""
    path = tmp / "empty-store.yaml"
    path.write_text(f"artifacts:\n  root: {tmp / 'artifacts'}\n")
    return path


def _ranker_store(tmp: Path) -> Path:
    """A config on a store with a features version, a two-tower model version trained
    before the ranking stage (no model_validation.pt), and two ranker versions, the
    newer one served. Manifests only: the commands refuse before reading any file."""
    from videorec.artifacts import LocalArtifactStore
    from videorec.ranking.publish import publish_ranker

    root = tmp / "artifacts"
    store = LocalArtifactStore(root)
    for name, version, meta in (
        ("features", "2026-11-01_f", {"date": "2026-11-01"}),
        ("models/two-tower", "2026-11-01_m", {"date": "2026-11-01",
                                              "features_version": "2026-11-01_f"}),
        ("models/ranker", "2026-10-31_old", {"date": "2026-10-31"}),
        ("models/ranker", "2026-11-01_new", {"date": "2026-11-01"}),
    ):  # fmt: skip
        with store.write_version(name, version, meta) as out:
            (out / "placeholder").write_text("x")
    publish_ranker(store, "2026-11-01_new")
    path = tmp / "ranker-store.yaml"
    path.write_text(f"artifacts:\n  root: {root}\nmlflow:\n  tracking_uri: sqlite:///{tmp}/m.db\n")
    return path


def _rank(*args: str) -> Case:
    return lambda g, t: ([*args[:-1], "--config", str(_ranker_store(t))], args[-1])


def _manifest_without_as_of(good: Path, tmp: Path) -> tuple[list[str], str]:
    d = _copy(good, tmp, "no-as-of")
    m = json.loads((d / "_dataset.json").read_text())
    del m["as_of"]
    (d / "_dataset.json").write_text(json.dumps(m))
    return ["validate", str(d)], str(d / "_dataset.json")


def _manifest_is_a_folder(good: Path, tmp: Path) -> tuple[list[str], str]:
    d = _copy(good, tmp, "manifest-folder")
    (d / "_dataset.json").unlink()
    (d / "_dataset.json").mkdir()
    return ["validate", str(d)], str(d / "_dataset.json")


def _malformed_manifest(good: Path, tmp: Path) -> tuple[list[str], str]:
    d = _copy(good, tmp, "malformed")
    (d / "_dataset.json").write_text('{"as_of": "2026-11-01T00:00:00+00:00",')
    return ["features", "--date", "2026-11-01", "--data", str(d)], str(d / "_dataset.json")


def _manifest_not_an_object(good: Path, tmp: Path) -> tuple[list[str], str]:
    d = _copy(good, tmp, "not-object")
    (d / "_dataset.json").write_text("[1, 2]")
    return ["train", "--data", str(d)], str(d / "_dataset.json")


def _as_of_without_zone(good: Path, tmp: Path) -> tuple[list[str], str]:
    d = _copy(good, tmp, "naive-as-of")
    m = json.loads((d / "_dataset.json").read_text())
    m["as_of"] = "2026-11-01T00:00:00"
    (d / "_dataset.json").write_text(json.dumps(m))
    return ["evaluate", "--data", str(d)], str(d / "_dataset.json")


def _corrupt_table(good: Path, tmp: Path) -> tuple[list[str], str]:
    d = _copy(good, tmp, "corrupt-table")
    part = sorted((d / "videos").glob("*.parquet"))[0]
    part.write_bytes(b"not parquet")
    return ["validate", str(d)], str(d / "videos")


def _missing_table(good: Path, tmp: Path) -> tuple[list[str], str]:
    d = _copy(good, tmp, "no-videos")
    shutil.rmtree(d / "videos")
    return ["validate", str(d)], str(d)


def _quarantine_under_a_file(good: Path, tmp: Path) -> tuple[list[str], str]:
    blocker = tmp / "a-file"
    blocker.write_text("x")
    return ["validate", str(good), "--quarantine-dir", str(blocker / "q")], str(blocker / "q")


def _report_under_a_file(good: Path, tmp: Path) -> tuple[list[str], str]:
    blocker = tmp / "a-file"
    blocker.write_text("x")
    out = str(blocker / "report")
    return ["evaluate", "--data", str(good), "--models", "MostPopular", "--out", out], out


def _generate_under_a_file(good: Path, tmp: Path) -> tuple[list[str], str]:
    blocker = tmp / "a-file"
    blocker.write_text("x")
    out = str(blocker / "data")
    return ["generate", "--users", "20", "--videos", "20", "--days", "1", "--out", out], out


def _import_under_a_file(good: Path, tmp: Path) -> tuple[list[str], str]:
    blocker = tmp / "a-file"
    blocker.write_text("x")
    out = str(blocker / "ml")
    return ["import-movielens", str(ML_SMALL), "--out", out], out


Case = Callable[[Path, Path], tuple[list[str], str]]
CASES: dict[str, Case] = {
    "validate a file": lambda g, t: (["validate", "/etc/passwd"], "/etc/passwd"),
    "validate a missing folder": lambda g, t: (["validate", str(t / "nope")], str(t / "nope")),
    "features on a file": lambda g, t: (
        ["features", "--date", "2026-11-01", "--data", "/etc/passwd"],
        "/etc/passwd",
    ),
    "train on a file": lambda g, t: (["train", "--data", "/etc/passwd"], "/etc/passwd"),
    # On a store under the test's folder, not the default one in the repo's var/.
    "train on an unknown features version": _rank(
        "train", "--features", "2026-11-01_nope", "2026-11-01_nope"
    ),
    "gate an unknown model version": _rank("gate", "--model", "2026-11-01_nope", "2026-11-01_nope"),
    "fresh lists of a missing data set": lambda g, t: (
        ["precompute", "trending", "--at", "2026-11-01T00:15:00Z", "--data", str(t / "nope")],
        str(t / "nope"),
    ),
    "fresh lists without a logical time": lambda g, t: (
        ["precompute", "trending", "--data", str(g)],
        "--at",
    ),
    "fresh videos of an unknown index version": lambda g, t: (
        [
            "fresh-videos",
            "--index",
            "2026-11-01_nope.x",
            "--at",
            "2026-11-01T01:00:00Z",
            "--data",
            str(g),
            "--config",
            str(_empty_store_config(t)),
        ],
        "2026-11-01_nope.x",
    ),
    "fresh videos before any index is published": lambda g, t: (
        [
            "fresh-videos",
            "--at",
            "2026-11-01T01:00:00Z",
            "--data",
            str(g),
            "--config",
            str(_empty_store_config(t)),
        ],
        "no index is published",
    ),
    "rank with an unknown model version": _rank(
        "rank", "--features", "2026-11-01_f", "--model", "2026-11-01_nope", "2026-11-01_nope"
    ),
    "rank with an unknown features version": _rank(
        "rank", "--features", "2026-11-01_nope", "--model", "2026-11-01_m", "2026-11-01_nope"
    ),
    "rank a model without its validation checkpoint": _rank(
        "rank", "--features", "2026-11-01_f", "--model", "2026-11-01_m", "model_validation.pt"
    ),
    "rank publish an unknown version": _rank(
        "rank", "publish", "2026-11-01_nope", "2026-11-01_nope"
    ),
    "rank publish an older version without --force": _rank(
        "rank", "publish", "2026-10-31_old", "older than the live 2026-11-01_new"
    ),
    "manifest without as_of": _manifest_without_as_of,
    "manifest is a folder": _manifest_is_a_folder,
    "malformed manifest": _malformed_manifest,
    "manifest not an object": _manifest_not_an_object,
    "as_of without a zone": _as_of_without_zone,
    "corrupt table file": _corrupt_table,
    "missing table": _missing_table,
    "quarantine folder under a file": _quarantine_under_a_file,
    "report folder under a file": _report_under_a_file,
    "generate under a file": _generate_under_a_file,
    "import under a file": _import_under_a_file,
    "config is not a mapping": lambda g, t: (
        ["validate", str(g), "--config", "/etc/passwd"],
        "/etc/passwd",
    ),
    "config missing": lambda g, t: (
        ["validate", str(g), "--config", str(t / "none.yaml")],
        str(t / "none.yaml"),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_path_exits_2_naming_it(case: str, good: Path, tmp_path: Path) -> None:
    args, named = CASES[case](good, tmp_path)
    proc = subprocess.run([VIDEOREC, *args, "--json"], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    res = json.loads(proc.stdout)
    assert res["ok"] is False and res["error"] == "bad_input"
    assert named in res["message"], res["message"]

    human = subprocess.run([VIDEOREC, *args], capture_output=True, text=True, timeout=300)
    assert human.returncode == 2 and "Traceback" not in human.stderr, human.stderr
    assert named in human.stderr and human.stdout == ""


def _not_a_data_set(good: Path, tmp: Path) -> tuple[list[str], str]:
    folder = tmp / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "keep.txt").write_text("keep")
    return ["generate", "--users", "60", "--videos", "40", "--days", "3", "--out", str(folder),
            "--overwrite"], "not a data set"  # fmt: skip


# Values out of range (found by review: a traceback, a segfault, a gate turned off, a
# folder deleted): (argv, what the message names, the error kind).
VALUES: dict[str, Callable[[Path, Path], tuple[list[str], str, str]]] = {
    "a month 13": lambda g, t: (["features", "--date", "2026-13-01"], "--date", "usage"),
    "a share of NaN": lambda g, t: (
        ["validate", str(g), "--max-invalid-share", "nan"], "--max-invalid-share", "usage"),
    "a share above 1": lambda g, t: (
        ["validate", str(g), "--max-invalid-share", "5"], "--max-invalid-share", "usage"),
    "a port past 65535": lambda g, t: (["serve", "--port", "99999"], "--port", "usage"),
    "a time UTC cannot hold": lambda g, t: (
        ["precompute", "trending", "--at", "9999-12-31T23:00:00-05:00", "--data", str(g)],
        "--at", "usage"),
    "a date before any data": lambda g, t: (
        ["generate", "--end-date", "0001-01-02", "--out", str(t / "x")], "--end-date", "usage"),
    "a negative seed": lambda g, t: (
        ["generate", "--seed", "-1", "--out", str(t / "x")], "seed", "bad_input"),
    "a user count past int64": lambda g, t: (
        ["generate", "--users", "100000000000000000000000", "--out", str(t / "x")], "users",
        "bad_input"),
    "overwrite a folder that is not a data set": lambda g, t: (*_not_a_data_set(g, t), "bad_input"),
    "nlist of zero": lambda g, t: (["index", "build", "--model", "m", "--config",
                                    str(_config(t, "index:\n  nlist: 0\n"))], "index.nlist",
                                   "bad_input"),
}  # fmt: skip


def _config(tmp: Path, body: str) -> Path:
    path = tmp / "c.yaml"
    path.write_text(f"artifacts:\n  root: {tmp / 'artifacts'}\n{body}")
    return path


@pytest.mark.parametrize("case", sorted(VALUES))
def test_a_value_out_of_range_exits_2_naming_it(case: str, good: Path, tmp_path: Path) -> None:
    args, named, kind = VALUES[case](good, tmp_path)
    proc = subprocess.run([VIDEOREC, *args, "--json"], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    res = json.loads(proc.stdout)
    assert res["ok"] is False and res["error"] == kind and named in res["message"], res
    human = subprocess.run([VIDEOREC, *args], capture_output=True, text=True, timeout=300)
    assert human.returncode == 2 and "Traceback" not in human.stderr, human.stderr
    assert named in human.stderr and human.stdout == ""
    if case.startswith("overwrite"):
        assert (tmp_path / "notes" / "sub" / "keep.txt").read_text() == "keep"


@pytest.mark.parametrize("argv", [["features", "gc", "--date", "2026-11-01"], ["index", "status"]])
def test_an_s3_store_with_no_such_bucket_exits_2_naming_it(
    argv: list[str], s3_endpoint: str, tmp_path: Path
) -> None:
    """A typo in artifacts.root's bucket: S3's own answer, named, no traceback."""
    import os

    from conftest import moto_env

    conf = tmp_path / "s3.yaml"
    conf.write_text("artifacts:\n  root: s3://no-such-bucket-typo/videorec\n"
                    f"  s3_endpoint_url: {s3_endpoint}\n  s3_region: us-east-1\n")  # fmt: skip
    env = {**os.environ, **moto_env(s3_endpoint)}
    proc = subprocess.run([VIDEOREC, *argv, "--config", str(conf), "--json"],
                          capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    res = json.loads(proc.stdout)
    assert res["error"] == "bad_input" and "NoSuchBucket" in res["message"], res
