"""Unit tests of the two-tower pieces: loss, towers, hashing, tensor building."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from videorec.training.data import right_aligned
from videorec.training.loss import in_batch_softmax_loss
from videorec.training.model import N_HASHES, TwoTowerConfig, TwoTowerModel, bucketize, hash_ids
from videorec.training.task import sequence_histories
from videorec.training.train import load_checkpoint


def _ce(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(x) for x in logits))


def test_loss_hand_computed_without_and_with_logq() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ids = torch.tensor([10, 20])
    plain = in_batch_softmax_loss(q, c, candidate_ids=ids, log_q=None, temperature=1.0)
    assert plain.item() == pytest.approx((_ce([1, 0], 0) + _ce([0, 1], 1)) / 2, abs=1e-6)
    lq = [math.log(0.5), math.log(0.25)]
    corrected = in_batch_softmax_loss(
        q, c, candidate_ids=ids, log_q=torch.tensor(lq), temperature=1.0
    )
    row0 = _ce([1 - lq[0], 0 - lq[1]], 0)
    row1 = _ce([0 - lq[0], 1 - lq[1]], 1)
    assert corrected.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)
    weighted = in_batch_softmax_loss(
        q,
        c,
        candidate_ids=ids,
        log_q=torch.tensor(lq),
        weights=torch.tensor([3.0, 1.0]),
        temperature=1.0,
    )
    assert weighted.item() == pytest.approx((3 * row0 + row1) / 4, abs=1e-6)
    # Temperature divides the similarities before the correction.
    warm = in_batch_softmax_loss(q, c, candidate_ids=ids, log_q=None, temperature=0.5)
    assert warm.item() == pytest.approx(_ce([2, 0], 0), abs=1e-6)


def test_loss_masks_duplicates_and_takes_uniform_negatives() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    same = in_batch_softmax_loss(
        q, c, candidate_ids=torch.tensor([7, 7]), log_q=None, temperature=1.0
    )
    assert same.item() == pytest.approx(0.0, abs=1e-6)  # the twin is not a negative
    extra = torch.tensor([[0.0, 1.0]])
    lq_extra = torch.tensor([math.log(0.1)])
    out = in_batch_softmax_loss(
        q, c, candidate_ids=torch.tensor([1, 2]), log_q=None, temperature=1.0,
        extra_candidates=extra, extra_log_q=lq_extra,
    )  # fmt: skip
    row0 = _ce([1, 0, 0 - lq_extra.item()], 0)
    row1 = _ce([0, 1, 1 - lq_extra.item()], 1)
    assert out.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)


def _tiny() -> tuple[TwoTowerModel, dict[str, torch.Tensor]]:
    cfg = TwoTowerConfig(
        embed_dim=32, id_dim=16, hidden_dim=32, user_buckets=101, video_buckets=211,
        channel_buckets=53, history_len=5, text_dim=8,
        categories=["A", "B", "C"], countries=["FR", "US"], languages=["en"], devices=["tv"], age_buckets=["18-24"],
    )  # fmt: skip
    torch.manual_seed(0)
    model = TwoTowerModel(cfg).eval()
    n_videos = 6
    ids = np.arange(1, n_videos + 1)
    buckets = np.stack([hash_ids(ids, cfg.video_buckets, s) for s in range(N_HASHES)], 1)
    videos = {
        "id_buckets": torch.as_tensor(np.vstack([np.zeros((1, N_HASHES), np.int64), buckets])),
        "category": torch.tensor([0, 1, 2, 3, 1, 2, 3]),
        "channel_buckets": torch.randint(1, 53, (n_videos + 1, N_HASHES)),
        "duration": torch.randint(0, 10, (n_videos + 1,)),
        "age": torch.randint(0, 10, (n_videos + 1,)),
        "text": torch.randn(n_videos + 1, 8),
    }
    return model, videos


def _query_batch(history: list[list[int]]) -> dict[str, torch.Tensor]:
    """The query tower's inputs for ``_tiny``'s model: the given (B, 5) histories and
    every other input cycling through its vocabulary (index 0: unknown)."""
    b = len(history)
    i = torch.arange(b)
    return {
        "history": torch.tensor(history),
        "user_buckets": torch.randint(1, 101, (b, N_HASHES)),
        "country": i % 3,
        "language": i % 2,
        "age_bucket": (i + 1) % 2,
        "device": i % 2,
        "hour": torch.tensor([0, 5, 24, 13] * b)[:b],
        "interests": torch.rand(b, 3),
        "example_age": torch.tensor([0.0, 1.0, 30.0, 2.5] * b)[:b],
    }


def test_towers_output_unit_vectors_of_the_configured_size() -> None:
    model, videos = _tiny()
    B = 4
    q_in = _query_batch([[0, 0, 0, 0, 0], [0, 0, 1, 2, 3], [1, 2, 3, 4, 5], [0, 0, 0, 0, 6]])
    with torch.no_grad():
        q = model.query(q_in, videos)
        c = model.candidate({k: v[1:] for k, v in videos.items()})
    assert q.shape == (B, 32) and c.shape == (6, 32)
    assert torch.allclose(q.norm(dim=1), torch.ones(B), atol=1e-5)
    assert torch.allclose(c.norm(dim=1), torch.ones(6), atol=1e-5)
    assert torch.isfinite(q).all()  # an empty history (all padding) is fine


def test_every_trainable_parameter_gets_a_gradient() -> None:
    """A parameter the loss cannot move is dead weight in every checkpoint (a bias
    added to all of a softmax's logits is one): one backward pass of a batch that
    exercises every input must reach every trainable parameter."""
    model, videos = _tiny()
    model.train()
    q_in = _query_batch([[0, 0, 1, 2, 3], [1, 2, 3, 4, 5], [0, 0, 0, 4, 6], [5, 6, 1, 2, 3]])
    q = model.query(q_in, videos)
    c = model.candidate({k: v[1:5] for k, v in videos.items()})
    loss = in_batch_softmax_loss(
        q, c, candidate_ids=torch.arange(4), log_q=None, temperature=model.temperature
    )
    loss.backward()
    # The id tables' gradients are sparse (nn.Embedding(sparse=True)): densified here.
    grads = {
        name: None if p.grad is None else (p.grad.to_dense() if p.grad.is_sparse else p.grad)
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    largest = max(g.abs().max().item() for g in grads.values() if g is not None)
    # A shift of every logit reaches its bias as rounding noise only (about 1e-8 here,
    # against gradients of 1e-3 and more for the live parameters).
    dead = [n for n, g in grads.items() if g is None or g.abs().max().item() < 1e-6 * largest]
    assert dead == []


def test_a_checkpoint_with_the_retired_attention_bias_loads_to_the_same_outputs(
    tmp_path: Path,
) -> None:
    """Checkpoints written before the attention lost its bias still load, and the
    model they give embeds exactly as the old one did (the bias shifted every logit)."""
    model, videos = _tiny()
    q_in = _query_batch([[0, 0, 1, 2, 3], [1, 2, 3, 4, 5], [0, 0, 0, 0, 0]])
    old_attn = torch.nn.Linear(model.cfg.id_dim, 1)
    with torch.no_grad():
        old_attn.weight.copy_(model.attn.weight)
        old_attn.bias.fill_(0.37)
    old_state = {**model.state_dict(), "attn.bias": old_attn.bias.detach().clone()}
    torch.save({"model_config": model.cfg.to_dict(), "state_dict": old_state}, tmp_path / "m.pt")
    loaded, _ = load_checkpoint(tmp_path / "m.pt")
    model.attn = old_attn  # the old model, bias and all
    with torch.no_grad():
        before, after = model.query(q_in, videos), loaded.query(q_in, videos)
    assert torch.allclose(before, after, atol=1e-6)


def test_hashing_is_deterministic_in_range_and_covers_unseen_ids() -> None:
    ids = np.array([1, 2, 3, 10**12, -5, 2**62], dtype=np.int64)
    a, b = hash_ids(ids, 1000, 0), hash_ids(ids, 1000, 0)
    assert (a == b).all() and a.min() >= 1 and a.max() < 1000
    assert not (hash_ids(ids, 1000, 1) == a).all()  # independent second hash
    big = np.arange(100_000, dtype=np.int64)
    counts = np.bincount(hash_ids(big, 1001, 0), minlength=1001)[1:]
    assert counts.max() < 3 * counts.mean()  # spread evenly
    assert (bucketize(np.array([np.nan, 10.0, 45.0, 1e9]), (30, 60)) == [0, 1, 2, 3]).all()


def test_right_aligned_and_sequence_histories() -> None:
    lists = pa.array([[1, 2, 3], [], [4, 5, 6, 7, 8, 9]], type=pa.list_(pa.int64()))
    rows = np.array([11, 12, 13, 14, 15, 16, 17, 18, 19])  # value -> row
    m = right_aligned(lists, rows, 4)
    assert m.tolist() == [[0, 11, 12, 13], [0, 0, 0, 0], [16, 17, 18, 19]]
    # Events sorted by (user, ts): user 1 has a tie at ts=5.
    items = np.array([1, 2, 3, 4, 9])
    users = np.array([1, 1, 1, 1, 2])
    ts = np.array([1, 5, 5, 7, 1])
    h = sequence_histories(items, users, ts, 3)
    assert h.tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 1], [1, 2, 3], [0, 0, 0]]


def _tiny_task(
    users: np.ndarray, videos: np.ndarray, ts: np.ndarray, table_users: np.ndarray | None = None
) -> tuple[Any, ...]:
    """(interactions, video table, user table, examples, training config, model config); ``table_users``: the
    users table's ids (default: every user), so a user can be left out of it."""
    from videorec.config import TrainingConfig
    from videorec.evaluation.interactions import Events, Interactions
    from videorec.training.data import user_table, video_table
    from videorec.training.retrieval import bare_dimensions, examples_from_interactions
    from videorec.training.task import model_config

    inter = Interactions.from_events(Events(users, videos, ts))
    v_t, u_t = bare_dimensions(inter)
    if table_users is not None:
        u_t = u_t.filter(pa.compute.is_in(u_t["user_id"], pa.array(table_users)))
    tcfg = TrainingConfig(
        embed_dim=16, id_dim=8, hidden_dim=16, user_buckets=101, video_buckets=101,
        channel_buckets=11, text_encoder="none", batch_size=8, device="cpu",
    )  # fmt: skip
    vocab = {"categories": [], "countries": [], "languages": [], "devices": [], "age_buckets": []}
    mcfg = model_config(tcfg, 4, vocab, text=False)
    # Sampling probability over every event, as the feature stage counts it.
    counts = np.bincount(inter.event_cols, minlength=inter.n_items)
    vf = pa.table({"video_id": inter.item_ids, "sampling_prob": counts / counts.sum()})
    as_of = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    vt = video_table(v_t, vf, mcfg, None, as_of)
    ut = user_table(u_t, mcfg)
    return inter, vt, ut, examples_from_interactions(inter, vt, ut, 4), tcfg, mcfg


def test_validation_phase_keeps_each_users_own_boundary_and_recounts_log_q() -> None:
    """A user missing from the users table (row 0) is cut at its own validation boundary,
    not at the first table user's; logQ counts the validation-phase examples only."""
    from videorec.evaluation.interactions import Events, build_split, per_user_temporal_holdout
    from videorec.training.data import LOG_Q_FLOOR
    from videorec.training.train import validation_phase

    # User 10 (the users table's first row) watches late, user 20 (not in the table)
    # early: 20's hold-out lies before 10's boundary, so a shared boundary would leak it.
    users = np.r_[np.full(6, 10), np.full(6, 20)].astype(np.int64)
    hours = np.r_[np.arange(20, 26), np.arange(0, 6)]
    ts = (hours * 3_600_000_000).astype(np.int64)
    # Repeats before the hold-out; held-out videos are new (re-watches are not evaluated).
    videos = np.r_[100 + np.arange(6), 200 + np.array([0, 1, 0, 1, 2, 3])].astype(np.int64)
    ev = Events(users, videos, ts)
    held = per_user_temporal_holdout(ev, 1 / 3)  # the last two of each user
    val = build_split(ev.take(~held), ev.take(held), items=None, protocol={})
    _, vt, _, ex_all, _, _ = _tiny_task(users, videos, ts, table_users=np.array([10]))
    assert (ex_all.user_rows[ex_all.user_ids == 20] == 0).all()

    ex_val, vt_val = validation_phase(ex_all, vt, val)
    for uid in (10, 20):
        kept = np.sort(ex_val.ts[ex_val.user_ids == uid])
        assert kept.tolist() == np.sort(ts[users == uid])[:4].tolist(), uid
    counts = np.bincount(ex_val.label_rows, minlength=len(vt.video_ids) + 1)[1:]
    expect = np.log(np.where(counts > 0, counts / len(ex_val), LOG_Q_FLOOR))
    np.testing.assert_allclose(vt_val.log_q[1:], expect, rtol=1e-6)
    assert not np.allclose(vt_val.log_q, vt.log_q)  # the input table is left as it was
    assert (vt_val.video_ids == vt.video_ids).all()


def test_fit_with_a_progress_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """rich renders a task as soon as it is added: every field a column reads must exist."""
    import io

    import rich
    from rich.console import Console

    from videorec.config import TrainingConfig
    from videorec.evaluation.interactions import Events, Interactions
    from videorec.training.retrieval import _tables_from_interactions, examples_from_interactions
    from videorec.training.task import Trainer, fit

    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(6), 5).astype(np.int64)
    videos = rng.integers(0, 12, len(users)).astype(np.int64)
    ts = np.tile(np.arange(5), 6).astype(np.int64) * 1_000_000
    inter = Interactions.from_events(Events(users, videos, ts))
    tcfg = TrainingConfig(
        embed_dim=16, id_dim=8, hidden_dim=16, user_buckets=101, video_buckets=101,
        channel_buckets=11, text_encoder="none", batch_size=8, device="cpu",
    )  # fmt: skip
    mcfg, vt, ut = _tables_from_interactions(inter, tcfg, 4)
    ex = examples_from_interactions(inter, vt, ut, 4)
    buf = io.StringIO()
    monkeypatch.setattr(rich, "_console", Console(file=buf, force_terminal=True, width=120))
    torch.manual_seed(0)
    trainer = Trainer(TwoTowerModel(mcfg), vt, ut, tcfg, torch.device("cpu"))
    logs, best = fit(trainer, ex, epochs=2, seed=0, progress=True)
    assert len(logs) == 2 and best == 2 and all(np.isfinite(e.loss) for e in logs)
    assert "ex/s" in buf.getvalue() and "examples" in buf.getvalue()


def test_content_mode_embeds_a_video_from_its_content_alone() -> None:
    """With the id masked, two videos that share every content feature get one
    embedding whatever their ids; with the channel masked too, the channel stops
    mattering. Unmasked, the ids (and channels) tell them apart."""
    model, videos = _tiny()
    for k in ("category", "duration", "age", "text", "channel_buckets"):
        videos[k][6] = videos[k][5]  # video 6 = video 5 but for its id
    rows = torch.tensor([5, 6])

    def embed(id_mask: list[float], ch_mask: list[float], **change: Any) -> torch.Tensor:
        v = {k: t[rows].clone() for k, t in videos.items()}
        for k, val in change.items():
            v[k][1] = val
        v["id_mask"], v["channel_mask"] = torch.tensor(id_mask), torch.tensor(ch_mask)
        with torch.no_grad():
            return model.candidate(v)

    full = embed([1, 1], [1, 1])
    assert (full[0] - full[1]).abs().max() > 1e-3  # the id matters
    content = embed([0, 0], [1, 1])
    torch.testing.assert_close(content[0], content[1])  # ... and nothing else differs
    other_channel = torch.tensor([7, 9])
    assert (embed([0, 0], [1, 1], channel_buckets=other_channel)[1] - content[0]).abs().max() > 1e-3
    new_channel = embed([0, 0], [0, 0], channel_buckets=other_channel)
    torch.testing.assert_close(new_channel[0], new_channel[1])  # content alone
    assert (embed([0, 0], [0, 0], category=torch.tensor(1))[1] - new_channel[0]).abs().max() > 1e-3


def _content_path_preference(id_dropout: float) -> tuple[float, float]:
    """Users of category A watch A videos, users of B watch B videos, each user group
    a fixed 4 of them (so the ids carry more than the category). Returns (share of
    users who score the new videos of their own category above the others, the new
    videos embedded in content mode; mean cosine between warm videos' full and
    content-mode embeddings)."""
    from videorec.config import TrainingConfig
    from videorec.evaluation.interactions import Events, Interactions
    from videorec.training.data import trained_vocabulary, user_table, video_table
    from videorec.training.retrieval import examples_from_interactions, user_histories
    from videorec.training.task import Trainer, fit, model_config

    rng = np.random.default_rng(0)
    warm = np.arange(1, 41)  # videos 1..20 category A (channel 7), 21..40 B (channel 8)
    cold = np.array([101, 102, 103, 104])  # A, A, B, B: no plays at all
    users = np.repeat(np.arange(1, 61), 8)
    likes_a, group = users <= 30, (users - 1) % 5
    own = 1 + 4 * group + rng.integers(0, 4, len(users))
    watched = np.where(likes_a, own, own + 20).astype(np.int64)
    ts = np.tile(np.arange(8), 60).astype(np.int64) * 1_000_000
    inter = Interactions.from_events(Events(users, watched, ts))
    all_ids = np.r_[warm, cold]
    cats = np.where((all_ids <= 20) | np.isin(all_ids, [101, 102]), "A", "B")
    vids = pa.table({
        "video_id": all_ids, "category": cats,
        "channel_id": np.where(cats == "A", 7, 8).astype(np.int64),
        "duration_s": np.full(len(all_ids), 300.0),
        "published_at": pa.array([dt.datetime(2025, 12, 1, tzinfo=dt.UTC)] * len(all_ids)),
    })  # fmt: skip
    u_t = pa.table({
        "user_id": np.arange(1, 61), "country": [None] * 60, "language": [None] * 60,
        "age_bucket": [None] * 60, "declared_interests": pa.nulls(60, pa.list_(pa.string())),
    })  # fmt: skip
    tcfg = TrainingConfig(
        embed_dim=16, id_dim=64, hidden_dim=32, user_buckets=101, video_buckets=211,
        channel_buckets=11, text_encoder="none", batch_size=32, device="cpu",
        id_dropout=id_dropout, learning_rate=5e-3, warmup_steps=0,
    )  # fmt: skip
    vocab = {"categories": ["A", "B"], "countries": [], "languages": [], "devices": [],
             "age_buckets": []}  # fmt: skip
    mcfg = model_config(tcfg, 4, vocab, text=False)
    assert mcfg.id_dropout == id_dropout
    vt = video_table(vids, None, mcfg, None, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    ut = user_table(u_t, mcfg)
    ex = examples_from_interactions(inter, vt, ut, 4)
    torch.manual_seed(0)
    trainer = Trainer(TwoTowerModel(mcfg), vt, ut, tcfg, torch.device("cpu"))
    fit(trainer, ex, epochs=30, seed=0, progress=False)

    trained, channels = trained_vocabulary(ex, vt)
    assert set(trained.tolist()) <= set(warm.tolist()) and channels.tolist() == [7, 8]
    cm = vt.content_mode(trained, channels)
    assert cm.id_mask[vt.rows(cold)].tolist() == [0, 0, 0, 0]
    assert cm.id_mask[vt.rows(trained)].tolist() == [1] * len(trained)
    c = trainer.candidate_embeddings(vt.rows(cold), table=cm)
    q = trainer.query_embeddings(ut.rows(inter.user_ids), user_histories(inter, vt, 4))
    s = q @ c.T  # (60 users, 4 cold videos)
    a = inter.user_ids <= 30
    prefers_own = np.r_[s[a, :2].mean(1) > s[a, 2:].mean(1), s[~a, 2:].mean(1) > s[~a, :2].mean(1)]
    full = trainer.candidate_embeddings(vt.rows(warm))
    content = trainer.candidate_embeddings(
        vt.rows(warm), table=vt.content_mode(trained[:0], channels)
    )
    return float(prefers_own.mean()), float((full * content).sum(1).mean())


def test_id_dropout_trains_a_content_path_for_videos_never_seen() -> None:
    """Trained with id dropout, the tower embeds new videos (content mode) so that
    nearly every user ranks the new videos of their own category first, and a warm
    video's content-mode embedding stays near its full one; trained without, the
    content path was never exercised and the content-mode embedding drifts away."""
    with_dropout = _content_path_preference(0.5)
    without = _content_path_preference(0.0)
    assert with_dropout[0] >= 0.95, with_dropout
    assert without[1] < with_dropout[1] - 0.1, (without, with_dropout)
