"""Embed videos the model never saw with its candidate tower in content mode.

The hourly fresh-videos stage (``indexing/delta.py``) calls :func:`embed_new_videos`
with the model of the active index: a new video's vector must live in that index's
space, so it is the active index's model, not whichever is newest in the registry.
A new video has no training plays, so its id embedding is dropped (the model learnt
to do without through id dropout), and so is its channel's when the channel is new
too (the checkpoint lists the channels the tower trained on).

Re-runs are cheap by construction: the text embedding of a (title, tags) is cached
by the text encoder's cache, and the tower itself costs milliseconds per thousand
videos, so every run embeds the whole set of videos not yet in the main index rather
than patching the previous delta.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from videorec.artifact_names import CHECKPOINT_FILE
from videorec.config import Config
from videorec.training.data import load_dimensions, video_table


@dataclass
class NewVideoEmbeddings:
    """The new videos' content-path vectors: ``ids`` (n,) int64 sorted, ``vectors``
    (n, d) float32 unit rows, ``published_at`` (n,) int64 UTC microseconds."""

    ids: np.ndarray
    vectors: np.ndarray
    published_at: np.ndarray
    known_channels: int  # how many of them kept their channel's embedding
    content_path_trained: bool  # False: the model had no id dropout (a weak fallback)


def select_new_videos(videos: pa.Table, exclude_ids: np.ndarray, t: dt.datetime) -> pa.Table:
    """The rows of ``videos`` published at or before ``t`` whose id is not in
    ``exclude_ids`` (int64: the main index's videos), sorted by video id. A video
    without a publication time is left out: it cannot be placed in time."""
    pub = videos["published_at"]
    ok = pc.and_(
        pc.less_equal(pub, pa.scalar(t, pub.type)),
        pc.invert(pc.is_in(videos["video_id"], value_set=pa.array(exclude_ids, pa.int64()))),
    )
    picked = videos.filter(pc.fill_null(ok, False))
    return picked.take(pc.sort_indices(picked["video_id"]))


@torch.no_grad()
def embed_new_videos(
    cfg: Config,
    *,
    model_dir: Path,
    data: str,
    exclude_ids: np.ndarray,
    logical_time: dt.datetime,
) -> NewVideoEmbeddings:
    """Content-mode candidate vectors for the data set's videos published by
    ``logical_time`` that are not in ``exclude_ids``, with the checkpoint in
    ``model_dir``. Ages are taken at ``logical_time`` (a new video is hours old)."""
    from videorec.training.text import embed_texts, video_texts
    from videorec.training.train import load_checkpoint

    model, meta = load_checkpoint(model_dir / CHECKPOINT_FILE)
    videos, _ = load_dimensions(data)
    picked = select_new_videos(videos, np.asarray(exclude_ids, np.int64), logical_time)
    mc = model.cfg
    text = None
    if mc.text_dim and picked.num_rows:
        texts = video_texts(picked["title"].to_pylist(), picked["tags"].to_pylist())
        text = embed_texts(texts, cfg.resolve_path(cfg.training.text_cache_dir))
    known = np.asarray(meta.get("known_channel_ids", np.zeros(0, np.int64)), np.int64)
    vt = video_table(picked, None, mc, text, logical_time).content_mode(
        np.zeros(0, np.int64), known
    )
    tensors = vt.tensors("cpu")
    vectors = np.zeros((picked.num_rows, mc.embed_dim), np.float32)
    for s in range(0, picked.num_rows, 8192):
        rows = torch.arange(s + 1, min(s + 8192, picked.num_rows) + 1)
        vectors[s : s + len(rows)] = model.candidate({k: v[rows] for k, v in tensors.items()})
    pub = pc.cast(picked["published_at"], pa.timestamp("us", "UTC")).cast(pa.int64())
    return NewVideoEmbeddings(
        ids=vt.video_ids,
        vectors=vectors,
        published_at=pub.to_numpy(zero_copy_only=False),
        known_channels=int(vt.channel_mask[1:].sum()),
        content_path_trained=mc.id_dropout > 0,
    )
