"""``videorec train``: features -> two-tower -> evaluation -> embeddings -> an MLflow run.

``train_two_tower(cfg, features_version=V)`` is the typed function the CLI and the
Airflow task call. It is a function of (features version, config, code): the model
version ``models/two-tower/<date>_<digest>`` is skipped when it already exists.

1. The features version it is given (built by the caller: the DAG's features task,
   or the CLI just before).
2. The harness's split from that feature version; a validation split carved from
   its training side the same way.
3. Training on the examples before each user's validation boundary (looked up by user
   id, users missing from the users table included), with logQ counted over those
   examples only, and early stopping on validation Recall@200; then (``refit_full``)
   a fresh model trained on all examples (and the feature stage's logQ over all of
   them) for the best epoch count.
4. The hold-out evaluation: ``TwoTower`` and the given baselines (MostPopular by
   default; the full grid is the offline ``videorec evaluate``) in one harness run.
5. Embeddings for every video in the catalogue and every user, the checkpoint (state
   dict + model config + hashing + config digest), the report: one artifact version.
6. An MLflow run with params, per-epoch metrics, the report and the checkpoint.

Registering and gating are the next step, :func:`videorec.training.gate.gate_model`,
so that an orchestrator can branch on the decision.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from videorec import artifact_names as names
from videorec.artifacts import ArtifactStore, VersionExistsError, open_store
from videorec.config import Config, config_digest, source_digest
from videorec.dataset import as_of, read_manifest
from videorec.examples import KEY_COLUMNS, open_examples
from videorec.retention import holding
from videorec.training.data import (
    EXAMPLE_COLUMNS,
    Examples,
    VideoTable,
    load_dimensions,
    load_examples,
    log_q_from_counts,
    right_aligned,
    sampling_log_q,
    scan_examples,
    trained_vocabulary,
    user_table,
    video_table,
    vocabularies,
)
from videorec.training.distributed import Dist, main_first
from videorec.training.model import TwoTowerConfig, TwoTowerModel, current_state
from videorec.training.stream import ExampleStream, KeepFn
from videorec.training.task import (
    EpochLog,
    EpochPlan,
    Trainer,
    fit,
    model_config,
    resolve_device,
    seed_everything,
)

if TYPE_CHECKING:
    from videorec.evaluation.interactions import EvalSplit


def _key(name: str) -> str:
    """MLflow metric names may not contain '@': recall@200 -> recall_at_200."""
    return name.replace("@", "_at_")


def default_date(manifest: dict[str, Any]) -> dt.date:
    """The logical date whose window ends at the data set's as-of time (rounded up to a day)."""
    t = as_of(manifest)
    return t.date() if t.time() == dt.time() else t.date() + dt.timedelta(days=1)


def save_checkpoint(path: Path, model: TwoTowerModel, extra: dict[str, Any]) -> None:
    """State dict plus everything needed to rebuild the model (nanoGPT-style)."""
    torch.save(
        {"model_config": model.cfg.to_dict(), "state_dict": model.state_dict(), **extra}, path
    )


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[TwoTowerModel, dict[str, Any]]:
    """The model and the checkpoint's metadata (an older checkpoint's retired entries,
    which never changed an output, are dropped: ``model.current_state``)."""
    ck = torch.load(path, map_location=device, weights_only=False)
    model = TwoTowerModel(TwoTowerConfig.from_dict(ck["model_config"]))
    model.load_state_dict(current_state(ck["state_dict"]))
    return model.eval(), {k: v for k, v in ck.items() if k != "state_dict"}


def _before_boundary(
    ts: np.ndarray, user_ids: np.ndarray, b_users: np.ndarray, b_ts: np.ndarray
) -> np.ndarray:
    """Mask (N,) of examples strictly before their user's boundary (users without one: all).

    ``ts`` (N,) and ``b_ts`` (B,) are int64 UTC microseconds; ``user_ids`` (N,) and
    ``b_users`` (B,) are contract user ids.
    """
    return _boundary_filter(b_users, b_ts)(user_ids, ts)


def _boundary_filter(b_users: np.ndarray, b_ts: np.ndarray) -> KeepFn:
    """(user_ids (N,), ts (N,)) -> mask (N,) of examples strictly before their user's
    boundary; ``b_users`` (B,) contract user ids with their boundary ``b_ts`` (B,) int64
    UTC microseconds (users without one keep everything)."""
    order = np.argsort(b_users)
    b_users, b_ts = b_users[order], b_ts[order]

    def keep(user_ids: np.ndarray, ts: np.ndarray) -> np.ndarray:
        pos = np.minimum(np.searchsorted(b_users, user_ids), max(len(b_users) - 1, 0))
        has = (b_users[pos] == user_ids) if len(b_users) else np.zeros(len(user_ids), bool)
        return ~has | (ts < b_ts[pos])

    return keep


def validation_phase(
    ex_all: Examples | ExampleStream, vt: VideoTable, val: EvalSplit
) -> tuple[Examples | ExampleStream, VideoTable]:
    """The validation phase's training examples and video table.

    Examples: those strictly before their user's validation boundary (the user's first
    event of the validation hold-out ``val.test``), matched by contract user id, so a
    user missing from the users table (row 0, shared by every such user) keeps its
    own boundary. Video table: ``vt`` with logQ recounted over those examples alone;
    the feature stage's ``sampling_prob`` counts every example of the window, the
    validation hold-out included, which would leak its popularity into the model
    early stopping judges. A stream is filtered as it is read; its logQ comes from one
    streamed pass over the ``user_id``, ``ts`` and ``video_id`` columns.
    """
    keep = _boundary_filter(val.train.user_ids[val.test.rows], val.test.serve_ts)
    if isinstance(ex_all, ExampleStream):
        ex_val = ex_all.where(keep)
        return ex_val, dataclasses.replace(vt, log_q=log_q_from_counts(ex_val.label_counts()))
    ex_val = ex_all.subset(np.flatnonzero(keep(ex_all.user_ids, ex_all.ts)))
    log_q = sampling_log_q(ex_val.label_rows, len(vt.video_ids))
    return ex_val, dataclasses.replace(vt, log_q=log_q)


def train_two_tower(
    cfg: Config,
    *,
    features_version: str,
    store: ArtifactStore | None = None,
    baselines: tuple[str, ...] | str = ("MostPopular",),
    progress: bool = True,
    log: Any = None,
) -> dict[str, Any]:
    """Train on ``features_version``, evaluate, export and log to MLflow; returns the summary.

    The features version is passed in by the caller (the DAG's features task, or the
    CLI after building it): this stage never builds or picks one. Its manifest names
    the data set and the logical date. Keys: ``version``, ``uri``, ``skipped``,
    ``evaluation`` (the harness JSON, with ``models`` including ``TwoTower``),
    ``mlflow`` ({"run_id"}: the run :func:`~videorec.training.gate.gate_model` registers
    from), ``features_version``, ``epochs``, ``best_epoch``,
    ``throughput_examples_per_s``, ``device``, ``warnings`` (the feature stage's, e.g.
    a window holding a small share of the data set's events).
    """
    # First: a GPU asked for and missing is the config's error, before any reading.
    d = Dist.current()  # several processes under torchrun (training/distributed.py)
    device = resolve_device(cfg.training.device, d.local_rank if d.world > 1 else None)
    store = store or open_store(cfg)
    # Held while training reads it (epoch by epoch when streamed): a hand run on an old
    # features version beside a collection keeps it, and the histories it names.
    with holding(
        store, {names.FEATURES: [features_version]}, why=f"training on {features_version}"
    ):
        return _train(cfg, features_version, store, d, device, baselines, progress, log)


def _train(
    cfg: Config, features_version: str, store: ArtifactStore, d: Dist, device: Any,
    baselines: tuple[str, ...] | str, progress: bool, log: Any,
) -> dict[str, Any]:  # fmt: skip
    """:func:`train_two_tower`'s work, its features version held."""
    from videorec.evaluation.harness import evaluate, evaluate_fitted
    from videorec.evaluation.interactions import split_from_features
    from videorec.evaluation.report import log_to_mlflow, write_report
    from videorec.training.retrieval import TwoTowerRecommender, user_histories
    from videorec.training.text import embed_texts, video_texts

    say = log or (lambda _m: None)
    fman = store.read_manifest(names.FEATURES, features_version)
    data, date = str(fman["data"]), dt.date.fromisoformat(fman["date"])
    manifest = read_manifest(data)
    say(f"features {features_version} (data {data}, date {date})")
    warnings = feature_warnings(store, features_version)
    for w in warnings:
        say(f"warning: {w}")
    tcfg = cfg.training
    digested: dict[str, Any] = {
        "training": tcfg.model_dump(mode="json"),
        "features": features_version,
        "baselines": baselines,
        "code": source_digest("videorec.training"),
    }
    if d.world > 1:
        digested["processes"] = d.world
    version = f"{date.isoformat()}_" + config_digest(digested)
    if store.exists(names.MODEL, version):
        return _reused(store, version, warnings)

    fdir = store.local_path(names.FEATURES, features_version)
    # One pass over the examples feeds the split, the vocabularies, the shard counts
    # and, in memory, the examples themselves (by reference, each pass re-applies the
    # rule to every day row). Streamed: the split's key columns alone.
    t0 = time.perf_counter()
    examples = open_examples(fdir, store.local_path)
    in_memory = tcfg.data != "stream"
    scanned = scan_examples(examples, EXAMPLE_COLUMNS if in_memory else KEY_COLUMNS)
    say(f"examples scanned in {time.perf_counter() - t0:.1f}s: {len(scanned.table):,}")
    split = split_from_features(
        fdir, data=data, resolve=store.local_path, train_examples=scanned.table
    )
    val = split.validation()
    if not val.test.n_users:  # early stopping would select on NaN: say why, before training
        raise ValueError(
            f"features {features_version!r}: the validation split evaluates no user (every "
            "held-out play of the training span's last days is a re-watch, or outside the "
            "catalogue): no epoch can be selected; widen features.window_days or eval_days"
        )
    # user_features holds every user the window saw, those missing from `users` too.
    window_users = pq.read_table(fdir / "user_features", columns=["user_id"])["user_id"]
    videos_t, users_t = load_dimensions(data, window_users.to_numpy())
    vocab = vocabularies(videos_t, users_t, scanned)
    text = None
    if tcfg.text_encoder != "none":
        t0 = time.perf_counter()
        texts = video_texts(videos_t["title"].to_pylist(), videos_t["tags"].to_pylist())
        with main_first(d):  # rank 0 fills the cache, the others read it
            text = embed_texts(texts, cfg.resolve_path(tcfg.text_cache_dir))
        say(f"text embeddings for {len(texts):,} videos in {time.perf_counter() - t0:.0f}s")

    window_end = dt.datetime.combine(date, dt.time(), dt.UTC)
    mcfg = model_config(tcfg, cfg.features.history_len, vocab, text=text is not None)
    vt = video_table(videos_t, pq.read_table(fdir / "video_features"), mcfg, text, window_end)
    ut = user_table(users_t, mcfg)
    if in_memory:
        ex_all: Examples | ExampleStream = load_examples(scanned, vt, ut, mcfg)
    else:
        ex_all = ExampleStream.open(scanned.shards, vt, ut, mcfg)
    del scanned  # the examples are arrays now (or streamed): free the Arrow copy
    ex_val, vt_val = validation_phase(ex_all, vt, val)
    say(
        f"training on {device} ({tcfg.data}, {d.world} process(es)): {len(ex_val):,} examples "
        f"(validation phase), {len(ex_all):,} in all"
    )
    if d.world > 1:  # whole global batches only; streamed, whole shards per process
        covered = EpochPlan(ex_val, tcfg, seed=tcfg.seed, dist=d).rows(1)
        say(f"epoch 1 of the validation phase trains on {covered:,} of {len(ex_val):,} examples")

    def validate(trainer: Trainer) -> dict[str, float]:
        rec = TwoTowerRecommender(trainer, as_of=window_end).fit(val.train)
        m, _ = evaluate_fitted(rec, val, beyond=False)
        return {k: float(m[k]) for k in ("recall@200", "recall@20", "ndcg@20")}

    def train_phases(
        on_epoch: Any, log_metrics: Any
    ) -> tuple[Trainer, TwoTowerModel, list[EpochLog], int]:
        """Early stopping on the validation phase, then the refit; on every process
        (rank 0 alone validates, ``fit`` shares the result)."""
        seed_everything(tcfg.seed)
        trainer = Trainer(TwoTowerModel(mcfg), vt_val, ut, tcfg, device, d)
        logs, best_epoch = fit(
            trainer, ex_val, epochs=tcfg.epochs, seed=tcfg.seed, validate=validate,
            patience=tcfg.early_stopping_patience, progress=progress, on_epoch=on_epoch,
        )  # fmt: skip
        val_model = trainer.model  # the ranking stage retrieves with it (never saw labels)
        log_metrics({_key(f"best_val_{k}"): v for k, v in logs[best_epoch - 1].val.items()})
        if tcfg.refit_full:
            say(f"refit on all {len(ex_all):,} examples for {best_epoch} epochs")
            seed_everything(tcfg.seed)
            trainer = Trainer(TwoTowerModel(mcfg), vt, ut, tcfg, device, d)
            refit_logs, _ = fit(
                trainer, ex_all, epochs=best_epoch, seed=tcfg.seed, progress=progress
            )
            for e in refit_logs:
                log_metrics({"refit_loss": e.loss}, step=e.epoch)
        return trainer, val_model, logs, best_epoch

    if not d.main:  # rank 0 logs, evaluates and writes the version
        train_phases(None, lambda *_a, **_k: None)
        return {"version": version, "skipped": False, "rank": d.rank, "device": str(device)}

    import mlflow

    from videorec.training.registry import start_run

    with start_run(
        cfg, f"two-tower {date}", {"features_version": features_version, "model_version": version}
    ) as run:
        mlflow.log_params({f"training.{k}": v for k, v in tcfg.model_dump(mode="json").items()})
        mlflow.log_params(
            {"features_version": features_version, "date": date.isoformat(), "device": str(device),
             "processes": d.world}
        )  # fmt: skip

        def on_epoch(e: EpochLog) -> None:
            mlflow.log_metrics(
                {
                    "train_loss": e.loss,
                    "examples_per_s": e.examples_per_s,
                    **{_key(f"val_{k}"): v for k, v in e.val.items()},
                },
                step=e.epoch,
            )
            say(f"epoch {e.epoch}: loss {e.loss:.4f}, {e.examples_per_s:,.0f} ex/s, val {e.val}")

        trainer, val_model, logs, best_epoch = train_phases(on_epoch, mlflow.log_metrics)

        result = evaluate(
            split,
            models=baselines,
            extra_models=[TwoTowerRecommender(trainer, as_of=window_end)],
            seed=tcfg.seed,
        )
        report = result.to_dict()

        # Videos without a training example get the content path's embedding (id
        # dropout trained it) instead of an untrained hashed id: measured better even
        # for a model trained without dropout (docs/benchmarks.md, cold items). The
        # channels the tower knows go into the checkpoint, for the fresh-videos stage.
        trained_ids, known_channels = trained_vocabulary(ex_all, vt)
        export_vt = vt.content_mode(trained_ids, known_channels)
        try:
            with store.write_version(names.MODEL, version, {
                "date": date.isoformat(), "config_digest": cfg.digest(), "features_version": features_version,
                "data_manifest": manifest, "mlflow_run_id": run.info.run_id,
                "code_digest": source_digest("videorec.training"),
            }) as out:  # fmt: skip
                save_checkpoint(out / names.CHECKPOINT_FILE, trainer.model, {
                    "training_config": tcfg.model_dump(mode="json"), "config_digest": cfg.digest(),
                    "features_version": features_version, "history_len": mcfg.history_len,
                    "known_channel_ids": known_channels, "trained_videos": len(trained_ids),
                })  # fmt: skip
                save_checkpoint(out / names.VALIDATION_CHECKPOINT_FILE, val_model, {
                    "training_config": tcfg.model_dump(mode="json"), "config_digest": cfg.digest(),
                    "features_version": features_version, "history_len": mcfg.history_len,
                    "phase": "validation", "epochs": best_epoch,
                })  # fmt: skip
                _export_embeddings(
                    out,
                    trainer,
                    export_vt,
                    ut,
                    fdir,
                    mcfg.history_len,
                    right_aligned,
                    user_histories,
                )
                write_report(result, report, out / "evaluation")
                log_to_mlflow(result, report, run)  # eval/<model>/<metric> and the report files
                mlflow.log_artifact(str(out / names.CHECKPOINT_FILE), "model")
                summary = {
                    "version": version,
                    "uri": store.uri(names.MODEL, version),
                    "skipped": False,
                    "features_version": features_version,
                    "device": str(device),
                    "epochs": [e.__dict__ for e in logs],
                    "best_epoch": best_epoch,
                    "throughput_examples_per_s": float(np.median([e.examples_per_s for e in logs])),
                    # The gate is its own step (training/gate.py), kept in the registry.
                    "mlflow": {"run_id": run.info.run_id},
                    "evaluation": report,
                    "warnings": warnings,
                }
                (out / "summary.json").write_text(
                    json.dumps(summary, indent=1, sort_keys=True, default=str)
                )
        except VersionExistsError:
            # A concurrent attempt (an Airflow retry beside a zombie) committed this
            # version first: serve its summary. The gate registers that version only.
            mlflow.set_tags({"superseded_by": version})
            return _reused(store, version, warnings)
    summary["uri"] = store.files_uri(names.MODEL, version)  # S3: the winning attempt's prefix
    return summary


def feature_warnings(store: ArtifactStore, features_version: str) -> list[str]:
    """The feature stage's warnings for ``features_version`` (from its quality report)."""
    report = json.loads(store.read_bytes(names.FEATURES, features_version, names.QUALITY_REPORT))
    return [str(w) for w in report.get("warnings") or []]


def _reused(store: ArtifactStore, version: str, warnings: list[str]) -> dict[str, Any]:
    """The stored summary of a committed version."""
    summary = json.loads(store.read_bytes(names.MODEL, version, "summary.json"))
    summary["uri"] = store.files_uri(names.MODEL, version)
    return {**summary, "skipped": True, "warnings": warnings}


def _export_embeddings(
    out: Path, trainer: Trainer, vt, ut, fdir: Path, width: int, right_aligned, user_histories
) -> None:
    """Embeddings for every catalogue video and every user, with id columns (Parquet)."""
    vid_rows = np.arange(1, len(vt.video_ids) + 1)
    v_emb = trainer.candidate_embeddings(vid_rows, table=vt)
    pq.write_table(
        pa.table(
            {
                "video_id": vt.video_ids,
                "embedding": pa.FixedSizeListArray.from_arrays(v_emb.ravel(), v_emb.shape[1]),
            }
        ),
        out / names.VIDEO_EMBEDDINGS_FILE,
    )
    uf = pq.read_table(fdir / "user_features", columns=["user_id", "recent_history"])
    ids = np.union1d(ut.user_ids, uf["user_id"].to_numpy())
    hist = np.zeros((len(ids), width), dtype=np.int64)
    pos = np.searchsorted(ids, uf["user_id"].to_numpy())
    rh = uf["recent_history"].combine_chunks()
    values = rh.values.to_numpy(zero_copy_only=False) if len(rh) else np.zeros(0, np.int64)
    hist[pos] = right_aligned(rh, vt.rows(values), width)
    u_emb = trainer.query_embeddings(ut.rows(ids), hist)
    pq.write_table(
        pa.table(
            {
                "user_id": ids,
                "embedding": pa.FixedSizeListArray.from_arrays(u_emb.ravel(), u_emb.shape[1]),
            }
        ),
        out / names.USER_EMBEDDINGS_FILE,
    )
