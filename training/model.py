"""The two-tower retrieval model, in one file.

Query (user) tower: hashed user id, the watch history pooled two ways over the *same*
video id table the candidate tower uses (attention with a recency-position bias, and
a learned exponential recency decay), the categories of that history, declared
interests, demographics (country, language, age bucket), context (device, hour of
day) and example age. Candidate (video) tower: hashed video id, a projection of the
video's pre-computed text embedding (all-MiniLM-L6-v2 over title + tags), category,
hashed channel, duration bucket, age bucket. Each tower ends in an MLP and an L2
normalisation; scores are dot products divided by a temperature.

Ids are hashed (two independent hashes per id, summed: the "hash embedding" trick
that keeps collisions rare). An id never seen in training would get an untrained
bucket, so the candidate tower is trained with *id dropout* (DropoutNet, Volkovs et
al., NeurIPS 2017): on a share of the examples the video id embedding (and,
independently, the channel's) is zeroed, and the tower learns to place a video from
its content alone. The ``id_mask``/``channel_mask`` inputs (1 = use, 0 = drop) then
embed a new video in *content mode*: no id, and no channel when the channel is new too.
:class:`TwoTowerConfig` holds everything needed to rebuild the model; checkpoints
carry it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

N_HASHES = 2
_SALTS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5)
DURATION_EDGES_S = (30, 60, 120, 240, 480, 900, 1800, 3600, 7200)  # log-ish buckets
AGE_EDGES_DAYS = (1, 2, 4, 7, 14, 30, 90, 365, 3 * 365)


def hash_ids(ids: np.ndarray, buckets: int, salt_index: int) -> np.ndarray:
    """int64 ids to bucket indices in [1, buckets) with a splitmix64 mix (0 is padding).

    Deterministic across processes and machines (numpy uint64 arithmetic wraps).
    """
    x = ids.astype(np.uint64) + np.uint64(_SALTS[salt_index])
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(buckets - 1)).astype(np.int64) + 1


def bucketize(values: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Bucket indices 1..len(edges)+1 for values; NaN (unknown) goes to 0."""
    out = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right") + 1
    return np.where(np.isnan(values), 0, out).astype(np.int64)


@dataclass
class TwoTowerConfig:
    """Everything that defines the model's shape; saved in every checkpoint."""

    embed_dim: int = 256  # output dimension of both towers
    id_dim: int = 64  # hashed id embedding width
    hidden_dim: int = 512
    user_buckets: int = 100_003
    video_buckets: int = 200_003
    channel_buckets: int = 20_011
    history_len: int = 50
    text_dim: int = 384  # 0 disables the text feature
    dropout: float = 0.1
    temperature: float = 0.05
    learn_temperature: bool = False
    use_user_id: bool = True
    id_dropout: float = 0.0  # training share of examples with the video id zeroed
    channel_dropout: float = 0.0  # the same for the channel embedding, independently
    # Vocabularies (index 0 = unknown); filled from the data at training time.
    categories: list[str] = field(default_factory=list)
    countries: list[str] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    age_buckets: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TwoTowerConfig:
        return cls(**d)


def vocab_index(values: np.ndarray, vocab: list[str]) -> np.ndarray:
    """Index of each string in ``vocab`` plus 1; unknown or null gives 0."""
    lookup = {v: i + 1 for i, v in enumerate(vocab)}
    return np.fromiter((lookup.get(v, 0) for v in values), dtype=np.int64, count=len(values))


class HashEmbedding(nn.Module):
    """Sum of N_HASHES embeddings of pre-hashed buckets; bucket 0 is padding (zero).

    Gradients are sparse: a step touches only the rows in the batch, so the cost of a
    step does not grow with the number of buckets (train with a sparse optimiser).
    """

    def __init__(self, buckets: int, dim: int) -> None:
        super().__init__()
        self.table = nn.Embedding(buckets, dim, padding_idx=0, sparse=True)
        nn.init.normal_(self.table.weight, std=0.05)
        with torch.no_grad():
            self.table.weight[0].zero_()

    def forward(self, buckets: torch.Tensor) -> torch.Tensor:
        """(..., N_HASHES) int64 -> (..., dim)."""
        return self.table(buckets).sum(dim=-2)


def _keep(mask: torch.Tensor | None, n: int, p: float, like: torch.Tensor) -> torch.Tensor:
    """(n, 1) multiplier: the given 0/1 ``mask`` (n,), times a Bernoulli(1 - p) draw
    when ``p`` > 0 (training only). No rescaling by 1/(1-p): at serving time an input
    is either fully present or absent, never an expected value."""
    keep = torch.ones(n, device=like.device, dtype=like.dtype) if mask is None else mask
    if p > 0:
        keep = keep * (torch.rand(n, device=like.device) >= p).to(like.dtype)
    return keep.to(like.dtype).unsqueeze(-1)


def _mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_out)
    )


# State-dict entries of earlier versions of the model that it no longer has, each of
# which never changed an output: dropped when an older checkpoint is loaded.
RETIRED_STATE = ("attn.bias",)  # a shift of every attention logit (softmax-invariant)


def current_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (a checkpoint's state dict, of any version) without RETIRED_STATE."""
    return {k: v for k, v in state.items() if k not in RETIRED_STATE}


class TwoTowerModel(nn.Module):
    """Query and candidate towers; see the module docstring.

    Video-side inputs come as a dict of per-video tensors (from the VideoTable), so the
    query tower can look up the categories of history items by row.
    """

    def __init__(self, cfg: TwoTowerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, c = cfg.id_dim, cfg
        self.video_ids = HashEmbedding(c.video_buckets, d)  # shared by both towers
        self.user_ids = HashEmbedding(c.user_buckets, d)
        self.channels = HashEmbedding(c.channel_buckets, d // 2)
        self.category = nn.Embedding(len(c.categories) + 1, d // 2, padding_idx=0)
        self.country = nn.Embedding(len(c.countries) + 1, 16)
        self.language = nn.Embedding(len(c.languages) + 1, 16)
        self.device = nn.Embedding(len(c.devices) + 1, 8)
        self.age_bucket = nn.Embedding(len(c.age_buckets) + 1, 8)
        self.hour = nn.Embedding(25, 8)  # 0 = unknown
        self.duration = nn.Embedding(len(DURATION_EDGES_S) + 2, 8)
        self.video_age = nn.Embedding(len(AGE_EDGES_DAYS) + 2, 8)
        self.text_proj = nn.Linear(c.text_dim, d) if c.text_dim else None
        # History pooling: attention logits = <w, e_j> + bias[position from the end].
        # No bias of its own: one added to every logit leaves the softmax unchanged, so
        # it would get no gradient (the position bias is what varies over the history).
        self.attn = nn.Linear(d, 1, bias=False)
        self.position_bias = nn.Parameter(torch.zeros(c.history_len))
        self.decay_logit = nn.Parameter(torch.tensor(2.0))  # sigmoid -> decay per step
        q_in = 2 * d + d // 2 + d // 2 + 16 + 16 + 8 + 8 + 8 + 1 + (d if c.use_user_id else 0)
        self.query_mlp = _mlp(q_in, c.hidden_dim, c.embed_dim, c.dropout)
        c_in = d + d // 2 + d // 2 + 8 + 8 + (d if c.text_dim else 0)
        self.candidate_mlp = _mlp(c_in, c.hidden_dim, c.embed_dim, c.dropout)
        self.log_temperature = nn.Parameter(
            torch.tensor(math.log(c.temperature)), requires_grad=c.learn_temperature
        )

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    def candidate(self, v: dict[str, torch.Tensor]) -> torch.Tensor:
        """Video features (B, ...) -> (B, embed_dim) unit vectors.

        Keys: ``id_buckets`` (B, N_HASHES), ``category`` (B,), ``channel_buckets``
        (B, N_HASHES), ``duration`` (B,), ``age`` (B,), ``text`` (B, text_dim), and
        optionally ``id_mask``/``channel_mask`` (B,) float 0/1: 0 embeds the video
        without its id (content mode) or without its channel. In training mode the
        configured id and channel dropout zero more of them at random.
        """
        ids = self.video_ids(v["id_buckets"])
        channel = self.channels(v["channel_buckets"])
        b = ids.shape[0]
        train = self.training
        ids = ids * _keep(v.get("id_mask"), b, self.cfg.id_dropout if train else 0.0, ids)
        p_ch = self.cfg.channel_dropout if train else 0.0
        channel = channel * _keep(v.get("channel_mask"), b, p_ch, channel)
        parts = [
            ids,
            self.category(v["category"]),
            channel,
            self.duration(v["duration"]),
            self.video_age(v["age"]),
        ]
        if self.text_proj is not None:
            parts.append(self.text_proj(v["text"]))
        return F.normalize(self.candidate_mlp(torch.cat(parts, dim=-1)), dim=-1)

    def query(self, q: dict[str, torch.Tensor], videos: dict[str, torch.Tensor]) -> torch.Tensor:
        """User state (B, ...) -> (B, embed_dim) unit vectors.

        Keys: ``history`` (B, L) video-table rows, right-aligned, 0 = padding;
        ``user_buckets`` (B, N_HASHES); ``country``, ``language``, ``age_bucket``,
        ``device``, ``hour`` (B,) vocabulary indices (0 unknown); ``interests`` (B, C)
        weights over categories (declared interests); ``example_age`` (B,) days.
        ``videos`` is the whole video table (rows indexed by ``history``).
        """
        hist = q["history"]
        mask = hist > 0  # (B, L)
        e = self.video_ids(videos["id_buckets"][hist])  # (B, L, d)
        L = hist.shape[1]
        # Attention pooling with a bias per position counted from the end (recency).
        logits = self.attn(e).squeeze(-1) + self.position_bias[-L:]
        logits = logits.masked_fill(~mask, -1e9)
        att = torch.softmax(logits, dim=-1) * mask  # all-padding rows give zeros
        pooled_att = (att.unsqueeze(-1) * e).sum(1)
        # Exponential recency decay: weight decay^(steps from the end).
        decay = torch.sigmoid(self.decay_logit)
        steps = torch.arange(L - 1, -1, -1, device=hist.device, dtype=e.dtype)
        w = decay**steps * mask
        w = w / w.sum(1, keepdim=True).clamp_min(1e-6)
        pooled_decay = (w.unsqueeze(-1) * e).sum(1)
        hist_cats = (w.unsqueeze(-1) * self.category(videos["category"][hist])).sum(1)
        interests = q["interests"] @ self.category.weight[1:]  # (B, d/2)
        parts = [
            pooled_att,
            pooled_decay,
            hist_cats,
            interests,
            self.country(q["country"]),
            self.language(q["language"]),
            self.age_bucket(q["age_bucket"]),
            self.device(q["device"]),
            self.hour(q["hour"]),
            torch.log1p(q["example_age"].clamp_min(0)).unsqueeze(-1),
        ]
        if self.cfg.use_user_id:
            parts.append(self.user_ids(q["user_buckets"]))
        return F.normalize(self.query_mlp(torch.cat(parts, dim=-1)), dim=-1)
