"""The delta index: build, publish by compare-and-swap, merge at query time, compaction.

Real FAISS and the real artifact store. The content-path embedding of new videos
(``training/fresh.py``) is replaced by seeded vectors here, for isolation; the DAG's
end-to-end test (tests/test_dags_e2e.py) runs the real one on a trained model.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.test_indexing import DIM, MV, clustered, make_cfg, write_model
from videorec.artifact_names import DELTA_INDEX, MODEL
from videorec.artifacts import LocalArtifactStore
from videorec.config import FreshVideosConfig
from videorec.indexing import delta as delta_mod
from videorec.indexing import slots
from videorec.indexing.build import build_index
from videorec.indexing.reader import IndexReader, merge_results, read_embeddings
from videorec.training import fresh

T0 = dt.datetime(2026, 11, 1, 1, tzinfo=dt.UTC)
NEW_IDS = np.arange(9_000_001, 9_000_021, dtype=np.int64)  # 20 uploads after the model


def test_merge_results_by_score_with_duplicates_and_padding() -> None:
    main = (np.array([[0.9, 0.5, 0.1]], np.float32), np.array([[1, 2, 3]]))
    delta = (np.array([[0.7, 0.6]], np.float32), np.array([[9, 2]]))  # 2 is in both
    s, i = merge_results(main, delta, 4)
    assert i.tolist() == [[1, 9, 2, 3]] and s[0].tolist() == pytest.approx([0.9, 0.7, 0.5, 0.1])
    # L2: smaller is better; -1 pads from FAISS never outrank a hit, and pad the output.
    main = (np.array([[0.2, np.inf]], np.float32), np.array([[5, -1]]))
    delta = (np.array([[0.1]], np.float32), np.array([[7]]))
    s, i = merge_results(main, delta, 4, metric="l2")
    assert i.tolist() == [[7, 5, -1, -1]] and np.isinf(s[0, 2:]).all()


@pytest.mark.parametrize("metric", ["inner_product", "l2"])
def test_new_videos_similar_lists_store_larger_is_better(metric: str) -> None:
    """A new video's similar list keeps the convention of every stored list: scores
    fall along it, and an L2 score is the negated squared distance (docs/redis-keys.md)."""
    import faiss

    from videorec.precompute.new_videos import similar_lists
    from videorec.redis_keys import decode_scored

    rng = np.random.default_rng(3)
    kind = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    main, delta = (faiss.IndexIDMap2(faiss.IndexFlat(8, kind)) for _ in range(2))
    main.add_with_ids(rng.normal(size=(50, 8)).astype(np.float32), np.arange(50))
    new = rng.normal(size=(5, 8)).astype(np.float32)
    delta.add_with_ids(new, np.arange(100, 105))
    for packed, me in zip(similar_lists(main, delta, np.arange(100, 105), new, 10, metric),
                          range(100, 105), strict=True):  # fmt: skip
        ids, scores = decode_scored(packed)
        assert len(ids) == 10 and me not in ids.tolist()
        assert (np.diff(scores) <= 1e-6).all()  # best first, larger is better
        if metric == "l2":
            assert (scores <= 0).all()


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A published main index over model MV's 3,000 videos, and 20 new videos whose
    content-path vectors lie near the main index's videos (seeded)."""
    cfg = make_cfg(tmp_path)
    store = LocalArtifactStore(tmp_path / "artifacts")
    write_model(store, MV, 3000)
    main = build_index(cfg, model_version=MV, store=store)["version"]
    slots.publish(store, main)
    vectors = clustered(len(NEW_IDS), 60, seed=0)  # the model's clusters (same seed)
    vectors[1] = vectors[0]  # a re-upload: same content, same vector
    calls: list[dict[str, Any]] = []

    def fake_embed(cfg_: Any, *, model_dir: Path, data: str, exclude_ids: np.ndarray,
                   logical_time: dt.datetime) -> fresh.NewVideoEmbeddings:  # fmt: skip
        calls.append({"model_dir": model_dir, "exclude": exclude_ids, "t": logical_time})
        keep = ~np.isin(NEW_IDS, exclude_ids)
        return fresh.NewVideoEmbeddings(
            NEW_IDS[keep], vectors[keep], np.full(int(keep.sum()), 0, np.int64), 0, True
        )

    monkeypatch.setattr(fresh, "embed_new_videos", fake_embed)
    return {"cfg": cfg, "store": store, "main": main, "vectors": vectors, "calls": calls,
            "tmp": tmp_path}  # fmt: skip


def _build(w: dict[str, Any], t: dt.datetime = T0, **kw: Any) -> dict[str, Any]:
    return delta_mod.build_delta(w["cfg"], index_version=w["main"], logical_time=t,
                                 data="unused", store=w["store"], **kw)  # fmt: skip


def test_a_published_delta_is_searched_with_the_main_index(world: dict[str, Any]) -> None:
    store, vectors = world["store"], world["vectors"]
    built = _build(world)
    assert built["videos"] == 20 and not built["skipped"]
    call = world["calls"][0]  # the stage embeds with the main index's model, excluding its videos
    assert call["model_dir"] == store.local_path(MODEL, MV) and len(call["exclude"]) == 3000
    assert _build(world)["skipped"]  # same inputs, same version: a retry writes nothing

    reader = IndexReader(store)
    reader.refresh()
    assert reader.delta is None  # built is not live
    scores, ids = reader.search(vectors[:3], 10)
    assert not np.isin(ids, NEW_IDS).any()

    state = delta_mod.publish_delta(store, built["version"])
    assert state["published"] and state["version"] == built["version"]
    assert state["index_version"] == world["main"]
    assert not delta_mod.publish_delta(store, built["version"])["published"]  # no-op retry
    assert reader.refresh() and reader.delta.version == built["version"]
    scores, ids = reader.search(vectors[:3], 10)
    assert ids[0, :2].tolist() in ([NEW_IDS[0], NEW_IDS[1]], [NEW_IDS[1], NEW_IDS[0]])  # twins
    assert ids[2, 0] == NEW_IDS[2]  # each new video finds itself first
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # merged by score, best first
    main_e = read_embeddings(store.local_path(MODEL, MV) / "video_embeddings.parquet")
    assert np.isin(ids[:, 1:], np.r_[main_e.ids, NEW_IDS]).all() and np.isin(ids, main_e.ids).any()


def test_the_nightly_build_compacts_the_delta(world: dict[str, Any]) -> None:
    """A nightly model that includes the new videos: readers drop the old delta (another
    model's space) at once, and the next run's delta holds only what is still missing."""
    store, cfg = world["store"], world["cfg"]
    first = _build(world)
    delta_mod.publish_delta(store, first["version"])
    reader = IndexReader(store)
    reader.refresh()
    assert reader.delta is not None

    # Nightly: a new model exports the old catalogue plus 15 of the 20 new videos.
    nightly = "2026-11-02_bbbb"
    write_model(store, nightly, 3000)
    mdir = store.local_path(MODEL, nightly)
    old = read_embeddings(mdir / "video_embeddings.parquet")
    _rewrite_export(store, nightly, np.r_[old.ids, NEW_IDS[:15]],
                    np.r_[old.vectors, world["vectors"][:15]])  # fmt: skip
    main2 = build_index(cfg, model_version=nightly, store=store)["version"]
    slots.publish(store, main2)
    with pytest.raises(delta_mod.DeltaError, match="active index"):
        delta_mod.publish_delta(store, first["version"])
    assert reader.refresh() and reader.current.version == main2 and reader.delta is None

    world["main"] = main2
    second = _build(world, T0 + dt.timedelta(days=1))
    assert second["videos"] == 5  # compacted: the 15 the nightly index holds are gone
    delta_mod.publish_delta(store, second["version"])
    reader.refresh()
    assert reader.delta.index.ntotal == 5
    _, ids = reader.search(world["vectors"], 5)
    assert (ids == NEW_IDS[:, None]).sum(1).tolist() == [1] * 20  # once: main's or delta's

    gone = delta_mod.collect_delta_garbage(store, logical_time=T0 + dt.timedelta(days=1),
                                           keep_s=3600)  # fmt: skip
    assert gone == []  # the first is the pointer's "previous": kept
    third = _build(world, T0 + dt.timedelta(days=1, hours=1))
    delta_mod.publish_delta(store, third["version"])
    gone = delta_mod.collect_delta_garbage(store, logical_time=T0 + dt.timedelta(days=1, hours=1),
                                           keep_s=3600)  # fmt: skip
    assert gone == [first["version"]]
    assert sorted(store.list_versions(DELTA_INDEX)) == sorted([second["version"], third["version"]])


def test_a_twin_collection_deleting_first_fails_neither(tmp_path: Path) -> None:
    """An Airflow retry beside its zombie (or the CLI beside the DAG): the version the
    other run deleted after this one read its manifest is not an error."""
    store = LocalArtifactStore(tmp_path / "artifacts")
    for v in ("20261101T0000-a", "20261101T0100-b"):
        with store.write_version(DELTA_INDEX, v, {"logical_time": T0.isoformat()}) as out:
            (out / "x").write_bytes(b"x")
    real = store.read_manifest

    def read_then_twin_deletes(name: str, version: str) -> dict[str, Any]:
        man = real(name, version)
        if version.endswith("-a"):
            store.delete_version(name, version)  # the twin, between the read and the delete
        return man

    store.read_manifest = read_then_twin_deletes  # type: ignore[method-assign]
    gone = delta_mod.collect_delta_garbage(store, logical_time=T0 + dt.timedelta(days=1), keep_s=0)
    assert gone == ["20261101T0100-b"] and store.list_versions(DELTA_INDEX) == []


def _rewrite_export(
    store: LocalArtifactStore, version: str, ids: np.ndarray, x: np.ndarray
) -> None:
    from tests.test_indexing import _export

    _export(store.local_path(MODEL, version) / "video_embeddings.parquet", "video_id", ids, x)


def test_a_late_or_failed_run_leaves_the_live_delta(world: dict[str, Any]) -> None:
    store = world["store"]
    later = _build(world, T0 + dt.timedelta(hours=1))
    earlier = _build(world, T0)
    assert later["version"] != earlier["version"]  # ages differ by the hour
    delta_mod.publish_delta(store, later["version"])
    res = delta_mod.publish_delta(store, earlier["version"])  # a zombie of the hour before
    assert not res["published"] and res["version"] == later["version"]

    bad = world["cfg"].model_copy(update={"fresh_videos": FreshVideosConfig(max_videos=5)})
    with pytest.raises(delta_mod.DeltaError, match="nightly build is overdue"):
        delta_mod.build_delta(bad, index_version=world["main"], logical_time=T0 + dt.timedelta(hours=2),
                              data="unused", store=store)  # fmt: skip
    with pytest.raises(delta_mod.DeltaError, match="does not exist"):
        delta_mod.publish_delta(store, "20261101T0300-nope")
    with pytest.raises(delta_mod.DeltaError, match="does not exist"):
        delta_mod.build_delta(world["cfg"], index_version="nope", logical_time=T0, store=store)
    assert delta_mod.read_delta_pointer(store)["version"] == later["version"]

    # A live delta whose files cannot be read: the reader keeps the one it has.
    reader = IndexReader(store)
    reader.refresh()
    third = _build(world, T0 + dt.timedelta(hours=3))
    delta_mod.publish_delta(store, third["version"])
    (store.local_path(DELTA_INDEX, third["version"]) / "index.faiss").write_bytes(b"broken")
    assert not reader.refresh() and reader.delta.version == later["version"]
    assert reader.load_failures == 1


def test_vectors_of_the_wrong_width_are_refused(world: dict[str, Any],
                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    def wide(*_a: Any, **_k: Any) -> fresh.NewVideoEmbeddings:
        return fresh.NewVideoEmbeddings(NEW_IDS, np.ones((20, DIM + 1), np.float32),
                                        np.zeros(20, np.int64), 0, True)  # fmt: skip

    monkeypatch.setattr(fresh, "embed_new_videos", wide)
    with pytest.raises(delta_mod.DeltaError, match="dimension"):
        _build(world)
