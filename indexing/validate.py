"""The check between an index build and its publish: the index as readers will open it.

The build measured recall on the index it held in memory. Publishing makes the stored
file live, so this step reads that file back through the reader's own path
(:func:`videorec.indexing.reader.load_index`, with the search parameters the build
recorded), checks its shape against the id map and the manifest, and searches the
build's held-out users again against an exact search of the model's embeddings. A
file that was truncated, written from another index, or opens with other search
parameters fails here, before any reader sees it.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from videorec.artifact_names import (
    ID_MAP_FILE,
    INDEX,
    MODEL,
    USER_EMBEDDINGS_FILE,
    VIDEO_EMBEDDINGS_FILE,
)
from videorec.artifacts import ArtifactStore, VersionNotFoundError, open_store
from videorec.config import Config
from videorec.indexing.build import exact_search, recall_at_k
from videorec.indexing.reader import IndexInputError, load_index, read_embeddings

# The re-measured recall may differ from the build's only by float noise in ties.
RECALL_TOLERANCE = 0.002


class IndexValidationError(IndexInputError):
    """The stored index version is not fit to publish; the message says why."""


def validate_index(
    cfg: Config, *, index_version: str, store: ArtifactStore | None = None
) -> dict[str, Any]:
    """Validate stored ``index_version`` for publishing; raises IndexValidationError.

    Returns {"index_version", "model_version", "vector_count", "queries", "recall_k",
    "recall" (re-measured on the build's held-out users), "build_recall", "target"}.
    """
    store = store or open_store(cfg)
    try:
        man = store.read_manifest(INDEX, index_version)
    except VersionNotFoundError:
        raise IndexValidationError(
            f"{store.uri(INDEX)}/{index_version}: no such index version"
        ) from None
    if man.get("gate") != "passed":
        raise IndexValidationError(f"index {index_version}: its build gate did not pass")
    loaded = load_index(store, index_version)
    idir = store.local_path(INDEX, index_version)
    ids = pq.read_table(idir / ID_MAP_FILE)["video_id"].to_numpy()
    n = loaded.index.ntotal
    if not n == len(ids) == man["vector_count"]:
        raise IndexValidationError(
            f"index {index_version}: the file holds {n:,} vectors, the id map {len(ids):,}, "
            f"the manifest {man['vector_count']:,}"
        )
    model_version = man["model_version"]
    videos = read_embeddings(store.local_path(MODEL, model_version) / VIDEO_EMBEDDINGS_FILE)
    users = read_embeddings(store.local_path(MODEL, model_version) / USER_EMBEDDINGS_FILE)
    held = json.loads((idir / "validation.json").read_text())["heldout_user_ids"]
    rows = np.searchsorted(users.ids, held, sorter=np.argsort(users.ids))
    queries = users.vectors[np.argsort(users.ids)[rows]]
    k = min(int(man["recall_k"]), n)
    truth = videos.ids[exact_search(videos.vectors, queries, k, man["metric"])[0]]
    _, found = loaded.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    recall = recall_at_k(found, truth)  # the index holds video ids (add_with_ids)
    build_recall = float(man[f"recall@{man['recall_k']}"])
    target = float(man["recall_target"])
    if recall < target or abs(recall - build_recall) > RECALL_TOLERANCE:
        raise IndexValidationError(
            f"index {index_version}: recall@{k} read back {recall:.4f} on {len(held):,} "
            f"held-out users; the build measured {build_recall:.4f}, target {target}"
        )
    return {
        "index_version": index_version, "model_version": model_version, "vector_count": n,
        "queries": len(held), "recall_k": k, "recall": recall, "build_recall": build_recall,
        "target": target,
    }  # fmt: skip
