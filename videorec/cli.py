"""The ``videorec`` command line: one thin command per stage over a typed function.

Every command takes ``--config FILE`` or ``--profile NAME``, prints a human summary,
and with ``--json`` prints exactly one JSON object (paths written, counts) on stdout
so scripts and on-call can use it. Exit status: 0 ok, 1 the work failed (e.g. the
contract's bad-row share was exceeded), 2 bad usage or bad input.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from videorec.config import Config, ConfigError, load_config

Handler = Callable[[argparse.Namespace, Config], tuple[dict[str, Any], int]]


def _print_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True, default=str) + "\n")


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _print_validation(report: dict[str, Any], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in ("table", "rows in", "valid", "quarantined", "by reason", "kept, noted"):
        table.add_column(
            col, justify="right" if col in ("rows in", "valid", "quarantined") else "left"
        )
    for name, r in report.items():
        reasons = ", ".join(f"{k}={v:,}" for k, v in r["by_reason"].items()) or "-"
        # Rows kept but worth knowing about: events of users missing from `users`, and
        # the minimal user rows added for them.
        noted = {**r.get("accepted", {})}
        if r.get("rows_added"):
            noted["rows_added"] = r["rows_added"]
        table.add_row(
            name,
            f"{r['rows_in']:,}",
            f"{r['rows_valid']:,}",
            f"{r['rows_quarantined']:,}",
            reasons,
            ", ".join(f"{k}={v:,}" for k, v in noted.items()) or "-",
        )
    _console().print(table)


def _print_counts(summary: dict[str, Any]) -> None:
    c = _console()
    c.print(f"data set: [bold]{summary['out']}[/bold] (as of {summary['as_of']})")
    c.print("rows: " + ", ".join(f"{k}={v:,}" for k, v in summary["counts"].items()))
    if summary.get("events_by_type"):
        c.print(
            "events by type: "
            + ", ".join(f"{k}={v:,}" for k, v in summary["events_by_type"].items())
        )
    if summary.get("injected_corruption"):
        c.print(
            "injected bad rows: "
            + ", ".join(f"{k}={v:,}" for k, v in summary["injected_corruption"].items())
        )
    if summary.get("next_command"):
        c.print(f"next: [bold]{summary['next_command']}[/bold]")


def _print_warnings(warnings: list[str]) -> None:
    """Loud, on stderr, so they show even when stdout goes to a file or a pipe."""
    from rich.console import Console

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    for w in warnings:
        err.print(f"[bold yellow]WARNING[/bold yellow] {w}")


def cmd_generate(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    from videorec.datagen.synthetic import GeneratorParams, generate

    g = cfg.generate
    params = GeneratorParams(
        users=args.users if args.users is not None else g.users,
        videos=args.videos if args.videos is not None else g.videos,
        days=args.days if args.days is not None else g.days,
        seed=args.seed if args.seed is not None else g.seed,
        end_date=args.end_date or g.end_date,
        corrupt=args.corrupt if args.corrupt is not None else g.corrupt,
    )
    out = Path(args.out) if args.out else cfg.resolve_path(cfg.data.dir)
    summary = generate(
        params, out, config_digest=cfg.digest(), overwrite=args.overwrite, progress=not args.json
    )
    if not args.json:
        _print_counts(summary)
    return summary, 0


def cmd_import_movielens(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    from videorec.datagen.movielens import import_movielens

    summary = import_movielens(
        args.path, args.out, config_digest=cfg.digest(), overwrite=args.overwrite
    )
    if not args.json:
        _print_counts(summary)
    return summary, 0


def cmd_validate(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    from videorec.pipeline import validate_dataset

    max_share = (
        args.max_invalid_share
        if args.max_invalid_share is not None
        else cfg.contract.max_invalid_share
    )
    summary = validate_dataset(
        args.data,
        max_invalid_share=max_share,
        quarantine_dir=args.quarantine_dir,
        limits=cfg.contract,
    )
    if not args.json:
        _print_validation(summary["tables"], f"contract validation of {args.data}")
        _console().print(f"quarantine written to {summary['quarantine_dir']}")
        for err in summary["violations"]:
            _console().print(f"[red]FAILED[/red] {err}")
    return summary, 0 if summary["ok"] else 1


def cmd_features(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    from videorec.features.job import build_features

    data = args.data or str(cfg.resolve_path(cfg.data.dir))
    result = build_features(cfg, data, args.date)
    _print_warnings(result.get("warnings") or result["report"].get("warnings") or [])
    if not args.json:
        c = _console()
        rep = result["report"]
        state = "already built (no-op)" if result["skipped"] else f"built in {rep.get('seconds')} s"
        c.print(f"features {result['version']}: {state}\n  at {result['uri']}")
        _print_validation(
            rep["validation"],
            f"contract validation, window {rep['window']['start']} .. {rep['window']['end']}",
        )
        split = rep["split"]
        c.print(
            f"split ({split['mode']}): train {split.get('train', {}).get('plays', 0):,} plays, "
            f"hold-out {split.get('eval', {}).get('plays', 0):,} plays"
        )
        c.print("outputs: " + ", ".join(f"{k}={v:,}" for k, v in rep["outputs"].items()))
        cov = rep["coverage"]
        c.print(
            f"coverage: {cov['users_with_events']:,} of {cov['users_in_table']:,} users, "
            f"{cov['videos_with_events']:,} of {cov['videos_in_catalogue']:,} videos"
        )
    return result, 0


def cmd_evaluate(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    from videorec.evaluation.harness import run_evaluation

    if args.out is not None:
        _check_writable_dir(args.out, "report")  # before minutes of evaluation, not after
    store = None
    if args.out is None:
        from videorec.artifacts import open_store

        store = open_store(cfg)
    data = args.data
    if data is None and args.features_version_dir is None:
        data = str(cfg.resolve_path(cfg.data.dir))
    result = run_evaluation(
        data,
        features_version_dir=args.features_version_dir,
        split=args.split,
        models=args.models,
        params=args.params,
        ks=args.k,
        seed=args.seed,
        out=args.out,
        store=store,
        max_invalid_share=cfg.contract.max_invalid_share,
        limits=cfg.contract,
        config_digest=cfg.digest(),
        log=None if args.json else _console().print,
    )
    if not args.json:
        from rich.table import Table

        table = Table(title="offline evaluation (per-user means, full catalogue)")
        cols = ("recall@20", "ndcg@20", "recall@200", "mrr", "coverage@200")
        table.add_column("model")
        for col in cols:
            table.add_column(col, justify="right")
        table.add_column("params")
        for name, m in result["models"].items():
            cells = [f"{m[c]:.4f}" if m.get(c) is not None else "-" for c in cols]
            table.add_row(name, *cells, str(result["params"][name]))
        _console().print(table)
        where = result.get("out") or result.get("artifact", {}).get("uri")
        _console().print(f"report written to {where}")
    return result, 0


def cmd_train(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    from videorec.training.train import train_two_tower

    data = args.data or str(cfg.resolve_path(cfg.data.dir))
    baselines = (
        "all" if args.baselines == "all" else tuple(b for b in args.baselines.split(",") if b)
    )
    c = None if args.json else _console()
    res = train_two_tower(
        cfg,
        data,
        date=args.date,
        baselines=baselines,
        progress=not args.json,
        log=c.print if c else None,
    )
    ev = res["evaluation"]
    _print_warnings(res.get("warnings") or [])
    # The harness's JSON, whose `models` includes TwoTower, plus the training outcome.
    out = {
        **ev,
        "warnings": res.get("warnings") or [],
        "model_version": res["version"],
        "model_uri": res["uri"],
        "skipped": res["skipped"],
        "mlflow": res["mlflow"],
        "best_epoch": res.get("best_epoch"),
        "throughput_examples_per_s": res.get("throughput_examples_per_s"),
        "device": res.get("device"),
    }
    if c is not None:
        from rich.table import Table

        t = Table(title=f"hold-out ({ev['protocol'].get('split')})")
        for col in ("model", "recall@20", "ndcg@20", "recall@200"):
            t.add_column(col, justify="left" if col == "model" else "right")
        for name, m in ev["models"].items():
            t.add_row(
                name,
                *(f"{m.get(k, float('nan')):.4f}" for k in ("recall@20", "ndcg@20", "recall@200")),
            )
        c.print(t)
        g = res["mlflow"]
        c.print(f"model {res['version']} at {res['uri']}")
        c.print(
            f"MLflow run {g['run_id']}: {g['model']} v{g['version']} {g['decision']}: {g['reason']}"
        )
    return out, 0


def cmd_run(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    from videorec.pipeline import run_main_job

    summary = run_main_job(cfg, progress=not args.json, log=None if args.json else _console().print)
    if not args.json:
        _print_counts(summary["data"])
        _print_validation(summary["validation"]["tables"], "contract validation")
    return summary, 0 if summary["validation"]["ok"] else 1


def _check_writable_dir(path: str, what: str) -> None:
    """ValueError naming ``path`` unless it is, or could be made, a writable folder.

    Nothing is created: the nearest existing ancestor must be a writable folder.
    """
    import os

    p = Path(path).absolute()
    existing = next(a for a in (p, *p.parents) if a.exists())
    if not existing.is_dir():
        raise ValueError(f"{path}: cannot create the {what} folder: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{path}: cannot create the {what} folder: {existing} is not writable")


def _date(s: str) -> dt.date:
    try:
        return dt.date.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {s!r}") from None


def cmd_index(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    from videorec.artifacts import open_store
    from videorec.indexing import slots
    from videorec.indexing.build import IndexGateError, build_index

    store = open_store(cfg)
    c = None if args.json else _console()
    if args.action == "build":
        try:
            res = build_index(cfg, model_version=args.model, store=store,
                              log=c.print if c else None)  # fmt: skip
        except IndexGateError as err:
            if c is not None:
                c.print(f"[red]gate failed[/red]: {err}")
            return {"ok": False, "error": "gate_failed", "message": str(err),
                    "report": err.report}, 1  # fmt: skip
        if c is not None:
            c.print(
                f"{res['version']}: {res['factory']}, {res['vector_count']:,} vectors, "
                f"{res['bytes_per_vector']} B/vector, recall@{res['recall_k']} "
                f"{res['recall@' + str(res['recall_k'])]} at {res['probe_parameter']}={res['nprobe']}, "
                f"p99 {res['p99_ms']} ms, {res['qps']:,} QPS (exact {res['exact_qps']:,}); "
                + ("reused" if res["skipped"] else "in the standby slot: videorec index publish")
            )
        return res, 0
    if args.action == "publish":
        slots.publish(store, args.version)
        deleted = slots.collect_garbage(store, cfg.index.keep_versions)
        res = {**slots.status(store), "deleted": deleted}
    elif args.action == "rollback":
        slots.rollback(store)
        res = slots.status(store)
    else:
        res = slots.status(store)
    if c is not None:
        c.print(f"active: {res['active']} {res['active_version']}  previous: {res['previous']}")
        for name, slot in res["slots"].items():
            c.print(f"  {name}: {json.dumps(slot)}")
    return res, 0


def _timestamp(s: str) -> dt.datetime:
    """An ISO-8601 time; one without a zone is taken as UTC (the contract's only zone)."""
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {s!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def cmd_precompute(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    import redis as redis_lib

    from videorec.precompute import PrecomputeError, PrecomputeInputError, precompute, status
    from videorec.precompute.run import connect

    c = None if args.json else _console()
    if args.action == "status":
        client, how = connect(cfg)
        try:
            # The age is shown against the wall clock: an on-call display, not a computation.
            res = status(cfg, client, at=args.at or dt.datetime.now(dt.UTC))
        except (redis_lib.exceptions.RedisError, OSError) as err:
            message = f"Redis ({how}) is unreachable: {err}"
            if c is not None:
                c.print(f"[red]status failed[/red]: {message}")
            return {"ok": False, "error": "redis_unreachable", "message": message}, 1
        if c is not None:
            meta = res["meta"] or {}
            c.print(f"active generation: {res['active']} (previous: {res['previous']})")
            c.print(
                f"  built for {meta.get('built_at')}, age {res['age_s']} s, expires in "
                f"{res['expires_in_s']} s; model {meta.get('model_version')}, index "
                f"{meta.get('index_version')}, features {meta.get('features_version')}"
            )
            c.print(f"  counts: {meta.get('counts')}")
        return res, 0
    if args.at is None:
        raise ValueError("precompute run needs --at: the logical time the generation is for")
    index_version = args.index
    if index_version is None:  # a CLI convenience only: the stage takes it explicitly
        from videorec.artifacts import open_store
        from videorec.indexing.slots import active_version

        index_version = active_version(open_store(cfg))[0]
        if index_version is None:
            raise ValueError("no active index: publish one, or name it with --index")
    engine = args.engine or cfg.precompute.engine
    spark = None
    if engine == "spark":  # base recommendations from the executors of the config's master
        from videorec.features.session import spark_session

        spark = spark_session(cfg, "videorec-precompute")
    try:
        res = precompute(
            cfg, index_version=index_version, logical_time=args.at,
            features_version=args.features, data_dir=args.data, spark=spark,
            log=c.print if c else None,
        )  # fmt: skip
    except PrecomputeInputError:
        raise
    except PrecomputeError as err:
        if c is not None:
            c.print(f"[red]precompute failed[/red]: {err}")
        return {"ok": False, "error": "precompute_failed", "message": str(err)}, 1
    if c is not None:
        state = "published" if res.get("published") else f"not published ({res.get('reason')})"
        c.print(f"generation {res['generation']}: {state}")
    return res, 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every ``videorec`` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="config file (default: the profile's conf/<profile>.yaml)")
    common.add_argument(
        "--profile", help="profile name under conf/ (default: $VIDEOREC_PROFILE or local)"
    )
    common.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a summary"
    )

    parser = argparse.ArgumentParser(prog="videorec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", parents=[common], help="the main job on the config's defaults")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("generate", parents=[common], help="generate a synthetic video platform")
    p.add_argument("--users", type=int)
    p.add_argument("--videos", type=int)
    p.add_argument("--days", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--end-date", type=_date, help="exclusive end of the window, YYYY-MM-DD (UTC)")
    p.add_argument(
        "--corrupt", type=float, help="share of deliberately malformed events, e.g. 0.01"
    )
    p.add_argument("--out", help="data set directory to write (default: the config's data.dir)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing data set")
    p.set_defaults(handler=cmd_generate)

    p = sub.add_parser(
        "import-movielens", parents=[common], help="import MovieLens (ml-latest or ml-100k)"
    )
    p.add_argument("path", help="folder with ratings.csv/movies.csv or u.data/u.item")
    p.add_argument("--out", required=True, help="data set directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing data set")
    p.set_defaults(handler=cmd_import_movielens)

    p = sub.add_parser("features", parents=[common], help="Spark feature stage for a logical date")
    p.add_argument(
        "--date", required=True, type=_date, help="logical date: the window ends here (exclusive)"
    )
    p.add_argument("--data", help="data set directory (default: the config's data.dir)")
    p.set_defaults(handler=cmd_features)

    p = sub.add_parser(
        "evaluate", parents=[common], help="offline evaluation of the baselines on a temporal split"
    )
    p.add_argument("--data", help="data set directory (default: the config's data.dir)")
    p.add_argument(
        "--features-version-dir",
        help="a feature-stage version folder: evaluate on its examples/ and eval/ instead",
    )
    p.add_argument(
        "--split", default="per-user-temporal", help="how to hold out: per-user-temporal"
    )
    p.add_argument(
        "--models", default="all", help="all, or comma-separated: MostPopular,ItemKNN,ALS,..."
    )
    p.add_argument(
        "--params",
        default="tuned",
        help="tuned (on a validation split, the default) or reference (the issue's values)",
    )
    p.add_argument("--k", default="10,20,50,100,200", help="cut-offs, comma-separated")
    p.add_argument("--seed", type=int, default=0, help="seed of randomised models (ALS)")
    p.add_argument(
        "--out", help="report folder (default: a new version of the evaluation artifact)"
    )
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser(
        "train", parents=[common], help="train the two-tower model, evaluate, register"
    )
    p.add_argument("--data", help="data set directory (default: the config's data.dir)")
    p.add_argument("--date", type=_date, help="logical date (default: the data set's as-of day)")
    p.add_argument(
        "--baselines",
        default="all",
        help="baselines evaluated beside TwoTower: all, or a comma list",
    )
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser(
        "index", parents=[common], help="FAISS index: build | publish | rollback | status"
    )
    p.add_argument("action", choices=["build", "publish", "rollback", "status"])
    p.add_argument("--model", help="build: two-tower model version (default: the latest)")
    p.add_argument("--version", help="publish: index version (default: the standby slot's)")
    p.set_defaults(handler=cmd_index)

    p = sub.add_parser(
        "precompute",
        parents=[common],
        help="Redis precompute: run | status (the active generation)",
    )
    p.add_argument("action", choices=["run", "status"])
    p.add_argument("--index", help="run: index version (default: the active one)")
    p.add_argument("--at", type=_timestamp, help="run: the logical time (ISO-8601; UTC if no zone)")
    p.add_argument("--features", help="run: features version (default: the model's)")
    p.add_argument("--data", help="run: data set directory (default: the features version's)")
    p.add_argument(
        "--engine", choices=["local", "spark"], help="run: precompute.engine (default: config's)"
    )
    p.set_defaults(handler=cmd_precompute)

    p = sub.add_parser(
        "validate", parents=[common], help="validate a data set against the contract"
    )
    p.add_argument("data", help="data set directory")
    p.add_argument("--quarantine-dir", help="where bad rows go (default: DATA/_quarantine)")
    p.add_argument("--max-invalid-share", type=float, help="fail above this share of bad rows")
    p.set_defaults(handler=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``videorec`` console script; returns the exit status."""
    from videorec.artifacts import ArtifactError
    from videorec.contract import ContractViolation
    from videorec.dataset import DatasetError
    from videorec.indexing.reader import IndexInputError
    from videorec.indexing.slots import SlotError
    from videorec.services import ServiceUnavailable

    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.profile)
        result, status = args.handler(args, cfg)
    except (
        ConfigError,
        DatasetError,
        ValueError,
        FileNotFoundError,
        IndexInputError,
        SlotError,
        ArtifactError,
    ) as err:
        return _fail(args, "bad_input", err, 2)
    except (ContractViolation, ServiceUnavailable) as err:
        return _fail(args, type(err).__name__, err, 1)
    except OSError as err:
        # Not bad input the command could name in advance (a full disk, a lost mount):
        # the work failed; say what and where, without a traceback.
        return _fail(args, "io_error", err, 1)
    if args.json:
        _print_json(result)
    return status


def _fail(args: argparse.Namespace, kind: str, err: Exception, status: int) -> int:
    if getattr(args, "json", False):
        _print_json({"ok": False, "error": kind, "message": str(err)})
    else:
        print(f"videorec {args.command}: error: {err}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
