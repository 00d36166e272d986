"""Training at scale: streamed examples, the shard-and-buffer shuffle, DDP, the CUDA choices.

The examples are a small synthetic ``examples/`` folder in the feature stage's schema
(several files of several row groups), so no Spark is needed. The DDP test starts two
CPU processes (gloo on 127.0.0.1) and compares their model with one process's.
"""

from __future__ import annotations

import datetime as dt
import math
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from videorec.config import ConfigError, TrainingConfig, parse_config
from videorec.services import free_port
from videorec.training.data import (
    Examples,
    load_examples,
    log_q_from_counts,
    sampling_log_q,
    trained_vocabulary,
    user_table,
    video_table,
)
from videorec.training.distributed import Dist, backend_for, sparse_allreduce
from videorec.training.model import TwoTowerModel
from videorec.training.stream import (
    ExampleStream,
    MemoryShards,
    ShuffleBuffer,
    deal_shards,
    epoch_batches,
    shard_order,
)
from videorec.training.task import Trainer, autocast_dtype, fit, model_config, resolve_device

HISTORY = 6
N_USERS, N_VIDEOS = 300, 400
SMALL = {
    "embed_dim": 16, "id_dim": 8, "hidden_dim": 16, "user_buckets": 101, "video_buckets": 211,
    "channel_buckets": 11, "text_encoder": "none", "device": "cpu", "dropout": 0.0,
    "id_dropout": 0.0, "channel_dropout": 0.0, "warmup_steps": 2, "learning_rate": 5e-3,
}  # fmt: skip


# ------------------------------------------------------------------ synthetic examples


def write_examples(
    folder: Path, n: int, *, files: int = 3, row_group: int = 100, seed: int = 0
) -> Path:
    """``n`` examples in the feature stage's examples/ schema, over ``files`` Parquet
    files of row groups of ``row_group`` rows (the last ones shorter)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    lengths = rng.integers(0, HISTORY + 3, n)
    history = pa.ListArray.from_arrays(
        np.r_[0, np.cumsum(lengths)].astype(np.int32),
        pa.array(rng.integers(1, N_VIDEOS + 1, int(lengths.sum())), pa.int64()),
    )
    hour = pa.array(rng.integers(0, 24, n), pa.int32(), mask=rng.random(n) < 0.05)
    t = pa.table({
        "user_id": rng.integers(1, N_USERS + 1, n).astype(np.int64),
        "event_id": np.arange(n, dtype=np.int64),
        "ts": pa.array(1_790_000_000_000_000 + rng.integers(0, 30 * 86_400_000_000, n),
                       pa.timestamp("us", tz="UTC")),
        "video_id": (rng.zipf(1.3, n) % N_VIDEOS + 1).astype(np.int64),
        "device": rng.choice(["tv", "phone", "web"], n),
        "country": rng.choice(["FR", "US", "DE", None], n),
        "weight": rng.uniform(0.5, 2.0, n),
        "history": history,
        "hour": hour,
        "example_age_days": rng.uniform(0, 30, n),
    })  # fmt: skip
    for i, part in enumerate(np.array_split(np.arange(n), files)):
        pq.write_table(t.take(part), folder / f"part-{i:05d}.parquet", row_group_size=row_group)
    return folder


def tables(tcfg: TrainingConfig) -> tuple[Any, Any, Any]:
    """(model config, video table, user table) of the synthetic catalogue."""
    ids = np.arange(1, N_VIDEOS + 1, dtype=np.int64)
    videos = pa.table({
        "video_id": ids, "category": np.array(["A", "B", "C"])[ids % 3],
        "channel_id": ids % 17, "duration_s": (ids * 7.0) % 3000,
        "published_at": pa.array([dt.datetime(2026, 1, 1, tzinfo=dt.UTC)] * len(ids)),
    })  # fmt: skip
    uids = np.arange(1, N_USERS + 1, dtype=np.int64)
    users = pa.table({
        "user_id": uids, "country": np.array(["FR", "US", "DE"])[uids % 3],
        "language": ["en"] * len(uids), "age_bucket": ["25-34"] * len(uids),
        "declared_interests": [["A"]] * len(uids),
    })  # fmt: skip
    vocab = {"categories": ["A", "B", "C"], "countries": ["DE", "FR", "US"], "languages": ["en"],
             "devices": ["phone", "tv", "web"], "age_buckets": ["25-34"]}  # fmt: skip
    mcfg = model_config(tcfg, HISTORY, vocab, text=False)
    counts = np.bincount(np.arange(N_VIDEOS) % 7 + 1)  # any sampling probabilities
    vf = pa.table({"video_id": ids, "sampling_prob": (ids % 7 + 1) / counts.sum()})
    vt = video_table(videos, vf, mcfg, None, dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    return mcfg, vt, user_table(users, mcfg)


def _positions(batches: Iterator[Examples]) -> np.ndarray:
    """The event ids (stored in ``ts``' place: see :func:`_tagged`) in batch order."""
    return np.concatenate([b.ts for b in batches])


def _tagged(n: int, shard_rows: list[int]) -> Examples:
    """``n`` dummy examples whose ``ts`` is their position, in shards of ``shard_rows``."""
    z = np.zeros(n, np.int64)
    return Examples(
        user_ids=z, user_rows=z, history=np.zeros((n, 2), np.int64), label_rows=z,
        weights=np.ones(n, np.float32), device=z, hour=z, country=z,
        example_age=np.zeros(n, np.float32), ts=np.arange(n, dtype=np.int64),
        shard=np.repeat(np.arange(len(shard_rows), dtype=np.int32), shard_rows),
    )  # fmt: skip


# ------------------------------------------------------------------ the shuffle


def test_shuffle_buffer_is_the_one_example_at_a_time_buffer_whatever_the_chunks() -> None:
    """The vectorised buffer emits what the textbook buffer (fill K, then each arrival
    swaps with a uniform slot, then drain in a random permutation) emits, for any chunking."""
    n, k = 1000, 64

    def reference() -> list[int]:
        rng, buf, out = np.random.default_rng(5), [], []
        for i in range(n):
            if len(buf) < k:
                buf.append(i)
                continue
            j = min(int(rng.random() * k), k - 1)
            out.append(buf[j])
            buf[j] = i
        return out + [buf[p] for p in rng.permutation(len(buf))]

    ex = _tagged(n, [n])
    for chunk in (1, 7, 64, 300, 1000):
        sb = ShuffleBuffer(k, np.random.default_rng(5))
        parts = [sb.push(ex.subset(slice(a, a + chunk))) for a in range(0, n, chunk)]
        parts.append(sb.drain())
        got = np.concatenate([p.ts for p in parts if p is not None])
        assert got.tolist() == reference(), chunk


def test_shard_and_buffer_order_is_a_seeded_permutation_that_changes_per_epoch() -> None:
    rows = [130, 7, 0, 250, 64, 99, 1, 200]
    ex = _tagged(sum(rows), rows)
    n = len(ex)

    def order(seed: int, epoch: int, *, buffer: int = 100, read_rows: int = 50) -> np.ndarray:
        src = MemoryShards(ex, read_rows=read_rows)
        kw = {"batch_size": 64, "seed": seed, "epoch": epoch, "buffer_size": buffer}
        return _positions(epoch_batches(src, **kw))

    first = order(1, 1)
    assert sorted(first.tolist()) == list(range(n))  # a permutation: each example once
    np.testing.assert_array_equal(order(1, 1, read_rows=13), first)  # reads do not matter
    assert (order(1, 2) != first).mean() > 0.9  # another epoch, another order
    assert (order(2, 1) != first).mean() > 0.9  # another seed too
    whole = order(1, 1, buffer=n)  # a buffer holding the epoch: a uniform permutation
    assert sorted(whole.tolist()) == list(range(n)) and (whole != np.arange(n)).mean() > 0.9
    # Every batch is full but the last.
    sizes = [len(b) for b in epoch_batches(MemoryShards(ex), batch_size=64, seed=1, epoch=1,
                                           buffer_size=100)]  # fmt: skip
    assert sizes[:-1] == [64] * (len(sizes) - 1) and sum(sizes) == n
    # The shard order is drawn over the shards that hold examples.
    assert sorted(shard_order(7, 1, 1).tolist()) == list(range(7))


def test_shards_are_dealt_to_processes_disjointly_with_equal_steps() -> None:
    rows = np.array([130, 7, 0, 250, 64, 99, 1, 200, 120, 80])
    ex = _tagged(int(rows.sum()), rows.tolist())
    dealt = deal_shards(np.array([3, 0, 7, 8, 5, 9, 4, 1, 6]), rows, 2)
    assert sorted(np.concatenate(dealt).tolist()) == [0, 1, 3, 4, 5, 6, 7, 8, 9]
    assert abs(int(rows[dealt[0]].sum()) - int(rows[dealt[1]].sum())) <= rows.max()
    src = MemoryShards(ex)
    kw = {"batch_size": 64, "seed": 3, "epoch": 2, "buffer_size": 50, "world": 2}
    per_rank = [list(epoch_batches(src, rank=r, **kw)) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) > 0
    assert all(len(b) == 32 for batches in per_rank for b in batches)
    seen = [set(_positions(iter(b)).tolist()) for b in per_rank]
    assert not seen[0] & seen[1]  # each process reads its own shards
    shard_of = ex.shard
    assert not {int(shard_of[i]) for i in seen[0]} & {int(shard_of[i]) for i in seen[1]}


# ------------------------------------------------------------------ streamed examples


@pytest.fixture(scope="module")
def examples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_examples(tmp_path_factory.mktemp("ex") / "examples", 1536)


def _all(stream: ExampleStream) -> Examples:
    return Examples.concat([c for s in range(len(stream.shards)) for c in stream.read_shard(s)])


def test_the_stream_reads_what_load_examples_reads(examples_dir: Path) -> None:
    tcfg = TrainingConfig(**SMALL)
    mcfg, vt, ut = tables(tcfg)
    mem = load_examples(examples_dir, vt, ut, mcfg)
    stream = ExampleStream.open(examples_dir, vt, ut, mcfg)
    assert len(stream.shards) == 18 and len(stream) == len(mem) == 1536
    streamed = _all(stream)
    for k, v in vars(mem).items():
        np.testing.assert_array_equal(getattr(streamed, k), v, err_msg=k)
    np.testing.assert_array_equal(
        stream.label_counts(), np.bincount(mem.label_rows, minlength=N_VIDEOS + 1)
    )
    # A filter (the validation phase's boundaries) and its logQ, from one streamed pass.
    cut = int(np.median(mem.ts))
    keep = lambda u, ts: (ts < cut) | (u % 2 == 0)  # noqa: E731
    sub, sub_stream = mem.subset(np.flatnonzero(keep(mem.user_ids, mem.ts))), stream.where(keep)
    assert len(sub_stream) == len(sub) < len(mem)
    np.testing.assert_array_equal(_all(sub_stream).ts, sub.ts)
    np.testing.assert_allclose(
        log_q_from_counts(sub_stream.label_counts()), sampling_log_q(sub.label_rows, N_VIDEOS)
    )
    for a, b in zip(trained_vocabulary(sub_stream, vt), trained_vocabulary(sub, vt), strict=True):
        np.testing.assert_array_equal(a, b)


def _train(examples: Any, tcfg: TrainingConfig, epochs: int = 2) -> tuple[Trainer, list[Any], int]:
    mcfg, vt, ut = tables(tcfg)
    torch.manual_seed(0)
    trainer = Trainer(TwoTowerModel(mcfg), vt, ut, tcfg, torch.device("cpu"))

    def validate(t: Trainer) -> dict[str, float]:  # any deterministic function of the weights
        return {"recall@200": float(t.model.query_mlp[0].weight.detach().sum())}

    logs, best = fit(trainer, examples, epochs=epochs, seed=7, validate=validate, progress=False)
    return trainer, logs, best


def test_streamed_training_matches_in_memory_training_for_a_seed(examples_dir: Path) -> None:
    """``data: stream`` and ``data: memory`` with ``shuffle: shards`` train on the same
    batches: the same weights, losses and validation figures (a filtered stream too)."""
    kw = {**SMALL, "batch_size": 128, "shuffle_buffer": 300}
    mem_cfg = TrainingConfig(**kw, data="memory", shuffle="shards")
    stream_cfg = TrainingConfig(**kw, data="stream")
    mcfg, vt, ut = tables(mem_cfg)
    cut = int(np.median(load_examples(examples_dir, vt, ut, mcfg).ts))
    keep = lambda u, ts: ts < cut  # noqa: E731
    mem_all = load_examples(examples_dir, vt, ut, mcfg)
    mem = mem_all.subset(np.flatnonzero(keep(mem_all.user_ids, mem_all.ts)))
    stream = ExampleStream.open(examples_dir, vt, ut, mcfg).where(keep)
    a, logs_a, best_a = _train(mem, mem_cfg)
    b, logs_b, best_b = _train(stream, stream_cfg)
    assert best_a == best_b and len(logs_a) == 2
    for la, lb in zip(logs_a, logs_b, strict=True):
        assert la.loss == lb.loss and la.val == lb.val
    for k, v in a.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[k], v, rtol=0, atol=1e-7, msg=k)
    # The default in-memory order (a global permutation) is another order.
    _, logs_c, _ = _train(mem, TrainingConfig(**kw))
    assert logs_c[0].loss != logs_a[0].loss


def test_a_streamed_epoch_holds_the_same_memory_for_four_times_the_examples(tmp_path: Path) -> None:
    """Peak Python-traced (numpy) memory while reading an epoch's batches from the stream
    barely moves from N to 4N examples (RSS figures: bench/training_stream.py)."""
    tcfg = TrainingConfig(**SMALL)
    mcfg, vt, ut = tables(tcfg)
    peaks = []
    for n in (4_000, 16_000):
        stream = ExampleStream.open(
            write_examples(tmp_path / str(n), n, files=4, row_group=500), vt, ut, mcfg
        )
        tracemalloc.start()
        rows = sum(
            len(b) for b in epoch_batches(stream, batch_size=256, seed=0, epoch=1, buffer_size=1000)
        )
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert rows == n
    assert peaks[1] < 1.25 * peaks[0], peaks


# ------------------------------------------------------------------ data parallel


def test_per_process_loss_shares_add_up_to_the_one_process_loss() -> None:
    """Each process scores its queries against every process's candidates (its
    positives at its offset) over the whole batch's weight: the shares sum to the loss
    of the whole batch, duplicates across processes masked as in one process."""
    from videorec.training.loss import in_batch_softmax_loss

    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(8, 4, generator=g), dim=1)
    c = torch.nn.functional.normalize(torch.randn(8, 4, generator=g), dim=1)
    ids = torch.tensor([1, 2, 3, 2, 5, 1, 7, 8])  # duplicates across the two halves
    log_q, w = torch.randn(8, generator=g), torch.rand(8, generator=g) + 0.5
    kw = {"candidate_ids": ids, "log_q": log_q, "temperature": 0.1}
    whole = in_batch_softmax_loss(q, c, weights=w, **kw)
    shares = [
        in_batch_softmax_loss(q[r * 4 : (r + 1) * 4], c, weights=w[r * 4 : (r + 1) * 4],
                              weight_total=w.sum(), positive_offset=r * 4, **kw)
        for r in range(2)
    ]  # fmt: skip
    torch.testing.assert_close(shares[0] + shares[1], whole)


def _ddp_worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    """One of ``world`` gloo processes: trains every case of :data:`DDP_CASES`."""
    import torch.distributed as dist

    import videorec.training.task as task

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        for name, kw in DDP_CASES.items():
            tcfg = TrainingConfig(**kw)
            task.sparse_allreduce = (
                (lambda _b: False) if name == "dense_tables" else sparse_allreduce
            )
            mcfg, vt, ut = tables(tcfg)
            path = Path(data)
            ex = (
                ExampleStream.open(path, vt, ut, mcfg)
                if tcfg.data == "stream"
                else load_examples(path, vt, ut, mcfg)
            )
            torch.manual_seed(0)
            trainer = Trainer(
                TwoTowerModel(mcfg), vt, ut, tcfg, torch.device("cpu"), Dist(rank, world)
            )
            assert bool(trainer._densified) == (name == "dense_tables")
            logs, _ = fit(trainer, ex, epochs=2, seed=7, progress=False)
            if rank == 0:
                torch.save({"state": trainer.model.state_dict(), "loss": [e.loss for e in logs]},
                           Path(out) / f"{name}.pt")  # fmt: skip
    finally:
        dist.destroy_process_group()


BATCH = 128
DDP_CASES = {
    # The default order: both processes slice the global batches of one permutation.
    "memory": {**SMALL, "batch_size": BATCH},
    # The NCCL path on gloo: dense gradients for the all-reduce, sparse for SparseAdam.
    "dense_tables": {**SMALL, "batch_size": BATCH},
    # Streamed, each process reading its own shards.
    "stream": {**SMALL, "batch_size": BATCH, "data": "stream", "shuffle_buffer": 256},
}


def _merged_batches(stream: ExampleStream, tcfg: TrainingConfig, epoch: int) -> Iterator[Examples]:
    """The global batches two processes train on: rank 0's then rank 1's part of each."""
    kw = {
        "batch_size": tcfg.batch_size,
        "seed": 7,
        "epoch": epoch,
        "buffer_size": tcfg.shuffle_buffer,
        "world": 2,
    }
    for parts in zip(*(epoch_batches(stream, rank=r, **kw) for r in range(2)), strict=True):
        yield Examples.concat(list(parts))


def _towers(model: TwoTowerModel, vt: Any, ut: Any) -> torch.Tensor:
    """(U + V, D): the model's query vectors of every user (a fixed history) and its
    candidate vectors of every video."""
    from videorec.training.data import query_inputs

    model.eval()
    rows = np.arange(1, N_USERS + 1)
    history = (rows[:, None] * np.arange(1, HISTORY + 1)) % N_VIDEOS + 1
    video_t = vt.tensors("cpu")
    with torch.no_grad():
        q = model.query(query_inputs(rows, history, ut, "cpu"), video_t)
        c = model.candidate({k: v[1:] for k, v in video_t.items()})
    return torch.cat([q, c])


def test_two_gloo_processes_train_the_model_one_process_trains(
    examples_dir: Path, tmp_path: Path
) -> None:
    """DDP on two CPU processes, per-process batch B/2 with the candidates gathered
    across them, gives one process's model with batch B on the same global batches:
    the same losses (1e-5 relative), parameters within 1e-5 after 2 epochs (24 steps),
    and query and candidate vectors within 1e-5. One parameter is left out of the
    parameter check: the attention pooling's logit bias, whose gradient is zero in exact
    arithmetic (a softmax ignores a shift), so that Adam scales rounding noise into
    steps of its own; the vectors show it changes nothing."""
    import torch.multiprocessing as mp

    mp.start_processes(
        _ddp_worker, args=(2, free_port(), str(examples_dir), str(tmp_path)), nprocs=2,
        start_method="spawn",
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, kw in DDP_CASES.items():
            tcfg = TrainingConfig(**kw)
            mcfg, vt, ut = tables(tcfg)
            torch.manual_seed(0)
            one = Trainer(TwoTowerModel(mcfg), vt, ut, tcfg, torch.device("cpu"))
            if tcfg.data == "stream":
                stream = ExampleStream.open(examples_dir, vt, ut, mcfg)
                one.total_steps = 2 * math.ceil(len(stream) / BATCH)  # as fit sets it
                losses = [
                    one.train_epoch(_merged_batches(stream, tcfg, e), len(stream))[0]
                    for e in (1, 2)
                ]
            else:
                logs, _ = fit(
                    one, load_examples(examples_dir, vt, ut, mcfg), epochs=2, seed=7, progress=False
                )
                losses = [e.loss for e in logs]
            got = torch.load(tmp_path / f"{name}.pt")
            np.testing.assert_allclose(got["loss"], losses, rtol=1e-5, err_msg=name)
            for k, v in one.model.state_dict().items():
                if k == "attn.bias":  # see the docstring
                    continue
                torch.testing.assert_close(
                    got["state"][k], v, rtol=0, atol=1e-5, msg=f"{name}: {k}"
                )
            twin = TwoTowerModel(mcfg)
            twin.load_state_dict(got["state"])
            torch.testing.assert_close(
                _towers(twin, vt, ut), _towers(one.model, vt, ut), rtol=0, atol=1e-5
            )
    finally:
        torch.set_num_threads(threads)


def test_fit_refuses_when_no_epoch_validates_to_a_number(examples_dir: Path) -> None:
    """A validation split that evaluates nobody scores NaN every epoch: fit returned a
    best epoch it never trained and no weights, and the train stage then died with an
    IndexError (found by review). It now says why."""
    tcfg = TrainingConfig(**{**SMALL, "batch_size": BATCH})
    mcfg, vt, ut = tables(tcfg)
    torch.manual_seed(0)
    trainer = Trainer(TwoTowerModel(mcfg), vt, ut, tcfg, torch.device("cpu"))
    nan = {"recall@200": float("nan")}
    with pytest.raises(ValueError, match=r"no finite recall@200 in 2 epochs .*evaluates no user"):
        fit(trainer, load_examples(examples_dir, vt, ut, mcfg), epochs=6, seed=7,
            validate=lambda _t: nan, patience=2, progress=False)  # fmt: skip


# ------------------------------------------------------------------ config and devices


def test_config_switches_and_the_stream_has_no_global_permutation() -> None:
    t = parse_config({"training": {"data": "stream", "shuffle_buffer": 1000}}).training
    assert (t.data, t.shuffle, t.shuffle_buffer) == ("stream", "auto", 1000)
    assert parse_config({}).training.data == "memory"
    with pytest.raises(ConfigError, match="shuffle: shards"):
        parse_config({"training": {"data": "stream", "shuffle": "permutation"}})


def test_device_backend_and_autocast_choices() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 1)
    assert backend_for(cpu) == "gloo" and backend_for(gpu) == "nccl"
    assert sparse_allreduce("gloo") and not sparse_allreduce("nccl")
    assert autocast_dtype(cpu, amp=True) is None  # the CPU trains in fp32
    assert autocast_dtype(gpu, amp=True, bf16_supported=True) == torch.bfloat16
    assert autocast_dtype(gpu, amp=True, bf16_supported=False) == torch.float16
    assert autocast_dtype(gpu, amp=False, bf16_supported=True) is None
    assert resolve_device("cpu") == cpu
    if not torch.cuda.is_available():
        assert resolve_device("auto") == cpu
        with pytest.raises(ConfigError, match="sees no GPU: set it to auto or cpu"):
            resolve_device("cuda", 0)
