"""`videorec rank`: the stage-2 ranker by hand (the retrain DAG's ranker branch), and its pointer.

``videorec rank --features F --model M`` runs ranking examples → train → gate → publish
(the last only when the gate promoted it; ``--no-publish`` never); ``videorec rank
publish VERSION [--force]`` moves the ``ranker`` pointer (``--force``: back to an older
version, a rollback); ``videorec rank status`` shows the served ranker.
"""

from __future__ import annotations

import argparse
from typing import Any

from videorec.cli.common import console
from videorec.config import Config


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this command's parser to ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser(
        "rank",
        parents=[common],
        help="the stage-2 ranker: examples, train, gate, publish (exit 3: refused) | "
        "publish VERSION [--force] | status",
    )
    p.add_argument(
        "action", nargs="?", choices=["publish", "status"],
        help="publish: point the served ranker at VERSION; status: the served ranker "
        "(default: build, train, gate and publish a ranker)",
    )  # fmt: skip
    p.add_argument("version", nargs="?", help="publish: the models/ranker version")
    p.add_argument("--features", help="features version (the two-tower model's)")
    p.add_argument("--model", help="models/two-tower version whose candidates are ranked")
    p.add_argument(
        "--no-publish", action="store_true", help="train and gate only; leave the pointer"
    )
    p.add_argument(
        "--force", action="store_true", help="publish: allow an older version (a rollback)"
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    from videorec.artifacts import open_store

    store = open_store(cfg)
    if args.action is None:
        missing = [f for f, v in (("--features", args.features), ("--model", args.model)) if not v]
        if missing or args.version or args.force:
            raise ValueError(
                f"missing {' and '.join(missing)}" if missing
                else "a VERSION and --force belong to `videorec rank publish`"
            )  # fmt: skip
        return run_ranker(args, cfg, store)
    if args.features or args.model or args.no_publish:
        raise ValueError(
            f"--features, --model and --no-publish are not options of rank {args.action}"
        )
    from videorec.ranking.publish import publish_ranker, read_ranker_pointer

    if args.action == "publish":
        if not args.version:
            raise ValueError("rank publish: which ranker VERSION to publish?")
        state = publish_ranker(store, args.version, force=args.force)
    else:
        state = read_ranker_pointer(store) or {}
    if not args.json:
        console().print(
            f"served ranker: {state.get('version') or 'none published'}"
            + (f" ({state.get('date')}; previous {state.get('previous')})" if state else "")
        )
    return {"pointer": state}, 0


def run_ranker(args: argparse.Namespace, cfg: Config, store: Any) -> tuple[dict[str, Any], int]:
    """Examples → train → gate → publish (if promoted and not ``--no-publish``)."""
    from videorec.cli.gate import exit_status
    from videorec.ranking.examples import build_ranking_examples
    from videorec.ranking.gate import gate_ranker
    from videorec.ranking.publish import publish_ranker, read_ranker_pointer
    from videorec.ranking.train import train_ranker

    c = None if args.json else console()
    say = c.print if c else None
    ex = build_ranking_examples(cfg, features_version=args.features, model_version=args.model,
                                store=store, log=say)  # fmt: skip
    res = train_ranker(cfg, examples_version=ex["version"], store=store, log=say)
    gate = gate_ranker(cfg, ranker_version=res["version"], store=store, log=say)
    promoted = gate["decision"] == "promoted"
    pointer = None
    if promoted and not args.no_publish:
        pointer = publish_ranker(store, res["version"])
    ev = res["evaluation"]
    out = {
        "examples": ex,
        "ranker": {k: res.get(k) for k in ("version", "uri", "skipped", "best_epoch", "mlflow")},
        "evaluation": ev,
        "gate": gate,
        "published": pointer is not None,
        "pointer": pointer if pointer is not None else read_ranker_pointer(store),
    }
    if c is not None:
        c.print(
            f"ranking examples {ex['version']}: {ex['train_pairs']:,} training pairs "
            f"({ex['train_users']:,} users), {ex['eval_pairs']:,} evaluation pairs "
            f"({ex['eval_users']:,} users){' (reused)' if ex['skipped'] else ''}"
        )
        c.print(f"ranker {res['version']}: {funnel_line(ev.get('Funnel'), ev.get('Retrieval'))}")
        colour = "green" if promoted else "red"
        c.print(f"{gate['model']} v{gate['version']} ({res['version']}): "
                f"[{colour}]{gate['decision']}[/{colour}]: {gate['reason']}")  # fmt: skip
        live = (out["pointer"] or {}).get("version")
        if pointer is not None:
            c.print(f"served ranker: {live} (previous {pointer.get('previous')})")
        else:
            why = "--no-publish" if promoted else "the gate refused it"
            c.print(f"not published ({why}); served ranker: {live or 'none'}")
    return out, exit_status(gate)


def funnel_line(funnel: dict[str, Any] | None, retrieval: dict[str, Any] | None) -> str:
    """'funnel NDCG@20 a, Recall@20 b | retrieval alone NDCG@20 c, Recall@20 d (n users)'."""

    def figures(m: dict[str, Any] | None) -> str:
        m = m or {}
        return ", ".join(
            f"{label} {m[k]:.4f}" if isinstance(m.get(k), float | int) else f"{label} -"
            for k, label in (("ndcg@20", "NDCG@20"), ("recall@20", "Recall@20"))
        )

    users = (funnel or {}).get("users")
    return f"funnel {figures(funnel)} | retrieval alone {figures(retrieval)}" + (
        f" ({users:,} hold-out users)" if isinstance(users, int) else ""
    )
