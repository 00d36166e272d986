"""Tests of the MovieLens importer (videorec.datagen.movielens).

Expected numbers are computed independently of the importer: for the real
ml-latest-small copy with the csv module, for the ml-100k-mini fixture by hand
(see the table in ``test_mini_counts``).
"""

from __future__ import annotations

import csv
import datetime as dt
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from videorec.datagen.movielens import import_movielens
from videorec.dataset import (
    DatasetError,
    as_of,
    load_validated,
    read_events,
    read_manifest,
    read_table,
)

ML_SMALL = Path(__file__).resolve().parents[2] / "shared/datasets/ml-latest-small"
MINI = Path(__file__).resolve().parent / "fixtures/ml-100k-mini"
DIGEST = "0123456789ab"
UTC = dt.UTC
# Columns MovieLens has no data for: the importer must leave them null.
UNKNOWN_EVENT_FIELDS = ("watch_time_s", "video_duration_s", "session_id", "device", "country")


def _by_id(table, key: str) -> dict[int, dict]:
    return {row[key]: row for row in table.to_pylist()}


def _assert_nothing_quarantined(out: Path) -> None:
    data = load_validated(out, max_invalid_share=0.0)
    for name, result in data.results.items():
        assert result.rows_quarantined == 0, (name, result.summary())


# --- the real ml-latest-small ------------------------------------------------


@pytest.fixture(scope="module")
def ml_small(tmp_path_factory):
    """(summary, out dir, expectations computed with the csv module) for ml-latest-small."""
    if not (ML_SMALL / "ratings.csv").is_file():
        pytest.skip(f"no shared MovieLens copy at {ML_SMALL} (ml-latest-small not downloaded)")
    expected = {"ratings": 0, "like": 0, "dislike": 0, "users": set(), "max_ts": 0}
    with open(ML_SMALL / "ratings.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            stars = float(row["rating"])
            expected["ratings"] += 1
            expected["like"] += stars >= 4
            expected["dislike"] += stars <= 2
            expected["users"].add(int(row["userId"]))
            expected["max_ts"] = max(expected["max_ts"], int(row["timestamp"]))
    with open(ML_SMALL / "movies.csv", newline="", encoding="utf-8") as f:
        expected["movies"] = {int(r["movieId"]): r for r in csv.DictReader(f)}
    toy_tags: Counter[str] = Counter()
    with open(ML_SMALL / "tags.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["movieId"] == "1" and r["tag"].strip():
                toy_tags[r["tag"].strip().lower()] += 1
    expected["toy_tags"] = [t for t, _ in sorted(toy_tags.items(), key=lambda kv: (-kv[1], kv[0]))]

    out = tmp_path_factory.mktemp("ml-small") / "data"
    summary = import_movielens(ML_SMALL, out, config_digest=DIGEST)
    # Reading ~4,000 day partitions takes seconds: read once for all tests.
    expected["events"] = read_events(out)
    return summary, out, expected


@pytest.mark.slow
def test_ml_small_event_counts(ml_small):
    summary, _, exp = ml_small
    assert exp["ratings"] == 100_836 and len(exp["users"]) == 610
    events = exp["events"]
    types = Counter(events["event_type"].to_pylist())
    assert types == {"watch": 100_836, "like": exp["like"], "dislike": exp["dislike"]}
    assert summary["events_by_type"] == dict(types)
    assert summary["counts"]["watch_events"] == events.num_rows
    watches = events.filter(pc.equal(events["event_type"], "watch"))
    assert set(watches["user_id"].to_pylist()) == exp["users"]


@pytest.mark.slow
def test_ml_small_tables_and_contract(ml_small):
    summary, out, exp = ml_small
    videos = read_table(out, "videos")
    users = read_table(out, "users")
    assert videos.num_rows == len(exp["movies"]) == 9_742
    assert set(videos["video_id"].to_pylist()) == set(exp["movies"])
    assert sorted(users["user_id"].to_pylist()) == sorted(exp["users"])
    assert read_table(out, "channels").num_rows == 0
    assert summary["counts"] == {
        "watch_events": exp["ratings"] + exp["like"] + exp["dislike"],
        "videos": 9_742,
        "channels": 0,
        "users": 610,
    }
    for name in ("country", "language", "signup_ts", "age_bucket", "declared_interests"):
        assert users[name].null_count == users.num_rows, name

    events = exp["events"]
    assert pc.all(pc.is_in(events["video_id"], value_set=videos["video_id"])).as_py()
    for name in UNKNOWN_EVENT_FIELDS:
        assert events[name].null_count == events.num_rows, name
    _assert_nothing_quarantined(out)


@pytest.mark.slow
def test_ml_small_first_rating_maps_to_events(ml_small):
    # ratings.csv line 1: 1,1,4.0,964982703 -> a watch and a like, ids from the row index.
    _, _, exp = ml_small
    events = exp["events"]
    mask = pc.is_in(events["event_id"], value_set=pa.array(["ml-0", "ml-0-like", "ml-0-dislike"]))
    first = events.filter(mask).to_pylist()
    when = dt.datetime.fromtimestamp(964982703, UTC)
    assert sorted((r["event_id"], r["event_type"]) for r in first) == [
        ("ml-0", "watch"),
        ("ml-0-like", "like"),
    ]
    assert all((r["user_id"], r["video_id"], r["ts"]) == (1, 1, when) for r in first)


@pytest.mark.slow
def test_ml_small_toy_story(ml_small):
    _, out, exp = ml_small
    toy = _by_id(read_table(out, "videos"), "video_id")[1]
    genres = exp["movies"][1]["genres"].split("|")
    assert toy["title"] == "Toy Story (1995)"
    assert toy["category"] == "Adventure" == genres[0]
    assert toy["published_at"] == dt.datetime(1995, 1, 1, tzinfo=UTC)
    user_tags = [t for t in exp["toy_tags"] if t not in {g.lower() for g in genres}][:10]
    assert user_tags, "ml-latest-small has user tags for Toy Story"
    assert toy["tags"] == genres + user_tags
    for name in ("description", "channel_id", "duration_s", "language"):
        assert toy[name] is None, name


@pytest.mark.slow
def test_ml_small_no_genres_means_no_category(ml_small):
    _, out, exp = ml_small
    none = [i for i, r in exp["movies"].items() if r["genres"] == "(no genres listed)"]
    assert none
    videos = _by_id(read_table(out, "videos"), "video_id")
    for i in none:
        assert videos[i]["category"] is None
        assert not any(t.startswith("(") for t in videos[i]["tags"])


@pytest.mark.slow
def test_ml_small_manifest(ml_small):
    summary, out, exp = ml_small
    manifest = read_manifest(out)
    expected_as_of = dt.datetime.fromtimestamp(exp["max_ts"] + 1, UTC)
    assert as_of(manifest) == expected_as_of
    assert dt.datetime.fromisoformat(summary["as_of"]) == expected_as_of
    assert manifest["source"] == "movielens" and manifest["format"] == "ml-latest"
    assert manifest["config_digest"] == DIGEST
    assert manifest["generator"] == "videorec.datagen.movielens"
    assert manifest["path"] == str(ML_SMALL.resolve())
    assert manifest["counts"] == summary["counts"]
    assert summary["out"] == str(out.resolve()) and summary["format"] == "ml-latest"


# --- the hand-written ml-100k-mini fixture -----------------------------------


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    out = tmp_path_factory.mktemp("mini") / "data"
    return import_movielens(MINI, out, config_digest=DIGEST), out


def test_mini_counts(mini):
    # u.data, by row: (user, movie, stars) -> events
    #   0 (1,1,5) W+L   1 (1,2,3) W     2 (2,1,4) W+L   3 (2,3,1) W+D
    #   4 (3,3,2) W+D   5 (3,4,4) W+L   6 (4,5,3) W     7 (5,2,5) W+L
    #   8 (8,1,1) W+D   9 (8,3,4) W+L  10 (5,5,2) W+D
    summary, out = mini
    assert summary["format"] == "ml-100k"
    assert summary["events_by_type"] == {"watch": 11, "like": 5, "dislike": 4}
    assert summary["counts"] == {"watch_events": 20, "videos": 5, "channels": 0, "users": 8}
    events = read_events(out)
    assert Counter(events["event_type"].to_pylist()) == {"watch": 11, "like": 5, "dislike": 4}
    assert read_table(out, "videos").num_rows == 5
    assert read_table(out, "users").num_rows == 8
    _assert_nothing_quarantined(out)


def test_mini_events_sorted_by_ts_then_id(mini):
    _, out = mini
    events = read_events(out).to_pylist()
    # Rows 7 and 10 share the earliest timestamp; ids order as strings.
    assert [e["event_id"] for e in events[:4]] == ["ml-10", "ml-10-dislike", "ml-7", "ml-7-like"]
    keys = [(e["ts"], e["event_id"]) for e in events]
    assert keys == sorted(keys)
    assert events[0]["ts"] == dt.datetime.fromtimestamp(875747190, UTC)


def test_mini_latin1_title(mini):
    _, out = mini
    raw = (MINI / "u.item").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # the fixture really is Latin-1, as ml-100k is
    videos = _by_id(read_table(out, "videos"), "video_id")
    assert videos[3]["title"] == "Misérables, Les (1995)"


def test_mini_videos(mini):
    _, out = mini
    videos = _by_id(read_table(out, "videos"), "video_id")
    assert videos[1]["category"] == "Animation"
    assert videos[1]["tags"] == ["Animation", "Children's", "Comedy"]
    assert videos[3]["tags"] == ["Drama", "War"]
    # The "unknown" genre flag means no genre, as "(no genres listed)" does.
    assert videos[4]["category"] is None and videos[4]["tags"] == []
    assert videos[5]["category"] is None and videos[5]["tags"] == []
    published = {i: v["published_at"] for i, v in videos.items()}
    assert published == {
        1: dt.datetime(1995, 1, 1, tzinfo=UTC),
        2: dt.datetime(1995, 1, 1, tzinfo=UTC),
        3: dt.datetime(1995, 12, 22, tzinfo=UTC),  # from the release date column
        4: None,  # no release date and no year in the title
        5: dt.datetime(1971, 1, 1, tzinfo=UTC),  # no release date: the title's year
    }


def test_mini_users(mini):
    _, out = mini
    users = _by_id(read_table(out, "users"), "user_id")
    assert {i: u["age_bucket"] for i, u in users.items()} == {
        1: "18-24",  # 18
        2: "35-44",  # 44
        3: "45-54",  # 45
        4: None,  # 12: under 13 has no bucket
        5: "25-34",  # 34
        6: "55+",  # 55
        7: "13-17",  # 13, in u.user but never rated
        8: None,  # rated but absent from u.user
    }
    for u in users.values():
        assert u["country"] is None and u["signup_ts"] is None and u["declared_interests"] is None


def test_mini_manifest(mini):
    _, out = mini
    manifest = read_manifest(out)
    assert as_of(manifest) == dt.datetime.fromtimestamp(891717800 + 1, UTC)
    assert manifest["format"] == "ml-100k" and manifest["path"] == str(MINI.resolve())


def test_import_is_deterministic(tmp_path):
    import_movielens(MINI, tmp_path / "a", config_digest=DIGEST)
    import_movielens(MINI, tmp_path / "b", config_digest=DIGEST)
    assert read_events(tmp_path / "a").equals(read_events(tmp_path / "b"))
    for name in ("videos", "users"):
        assert read_table(tmp_path / "a", name).equals(read_table(tmp_path / "b", name))


# --- bad input -----------------------------------------------------------------


def test_unknown_folder_is_refused(tmp_path):
    folder = tmp_path / "not-movielens"
    folder.mkdir()
    (folder / "ratings.txt").write_text("1,2,3\n")
    with pytest.raises(ValueError, match="not-movielens") as err:
        import_movielens(folder, tmp_path / "out", config_digest=DIGEST)
    assert str(folder) in str(err.value)
    assert "ratings.csv" in str(err.value) and "u.data" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="nowhere"):
        import_movielens(tmp_path / "nowhere", tmp_path / "out", config_digest=DIGEST)


def test_existing_output_is_kept_without_overwrite(tmp_path):
    out = tmp_path / "data"
    import_movielens(MINI, out, config_digest="first")
    (out / "marker.txt").write_text("keep me")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(DatasetError, match="already exists"):
        import_movielens(MINI, out, config_digest="second")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert read_manifest(out)["config_digest"] == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temporary leftovers

    import_movielens(MINI, out, config_digest="second", overwrite=True)
    assert read_manifest(out)["config_digest"] == "second"
    assert not (out / "marker.txt").exists()


def test_output_may_not_replace_input(tmp_path):
    src = tmp_path / "ml-100k"
    shutil.copytree(MINI, src)
    with pytest.raises(ValueError, match="must not be or contain the input"):
        import_movielens(src, src, config_digest=DIGEST, overwrite=True)
    with pytest.raises(ValueError, match="must not be or contain the input"):
        import_movielens(src, tmp_path, config_digest=DIGEST, overwrite=True)
    assert sorted(p.name for p in src.iterdir()) == ["u.data", "u.genre", "u.item", "u.user"]


@pytest.mark.parametrize(
    ("line", "named"),
    [("1\t1\t40\t881250949", "stars outside 0.5..5, e.g. 40.0"),
     ("1\t1\t-7\t881250949", "stars outside 0.5..5, e.g. -7.0"),
     ("1\t1\t4\t881250949000", "not Unix seconds of 1970..2286 (milliseconds?), e.g. 881250949000")],
)  # fmt: skip
def test_impossible_ratings_are_refused_naming_the_file(tmp_path, line, named):
    """Found by review: 40 and -7 stars imported as a like and a dislike, and
    millisecond timestamps failed with "year 32549 is out of range", naming nothing."""
    src = tmp_path / "ml-100k"
    shutil.copytree(MINI, src)
    with (src / "u.data").open("a") as f:
        f.write(line + "\n")
    with pytest.raises(ValueError, match=r"u\.data: 1 ratings have a ") as err:
        import_movielens(src, tmp_path / "out", config_digest=DIGEST)
    assert named in str(err.value)
    assert not (tmp_path / "out").exists()
