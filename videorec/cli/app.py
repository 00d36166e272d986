"""The ``videorec`` command line: one thin command per stage over a typed function.

Every command takes ``--config FILE`` or ``--profile NAME``, prints a human summary,
and with ``--json`` prints exactly one JSON object (paths written, counts) on stdout
so scripts and on-call can use it. Exit status: 0 ok, 1 the work failed (e.g. the
contract's bad-row share was exceeded), 2 bad usage or bad input, 3 the champion gate
refused the model (``train``, ``gate``, ``rank``).

Each command lives in its own module (``videorec/cli/<command>.py``: its parser and
its handler, which imports its stage inside the function); this one only assembles
them and maps errors to exit statuses.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from videorec.cli import (
    airflow,
    drain,
    evaluate,
    features,
    fresh,
    gate,
    generate,
    index,
    models,
    movielens,
    precompute,
    rank,
    run,
    serve,
    train,
    validate,
)
from videorec.cli.common import fail, print_json
from videorec.config import ConfigError, load_config

COMMANDS = (
    run, generate, movielens, features, evaluate, train, gate, index, precompute, validate,
    airflow, serve, drain, fresh, rank, models,
)  # fmt: skip


class _UsageError(Exception):
    """A command line argparse refused (bad usage: exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse's parser, but a usage error is raised, so that ``main`` can report it as
    the command's other errors (one JSON object with ``--json``), not only as text."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every ``videorec`` command."""
    common = _Parser(add_help=False)
    common.add_argument("--config", help="config file (default: the profile's conf/<profile>.yaml)")
    common.add_argument(
        "--profile", help="profile name under conf/ (default: $VIDEOREC_PROFILE or local)"
    )
    common.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a summary"
    )

    parser = _Parser(prog="videorec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``videorec`` console script; returns the exit status."""
    from videorec.artifacts import ArtifactError, storage_failure
    from videorec.contract import ContractViolation
    from videorec.dataset import DatasetError
    from videorec.indexing.reader import IndexInputError
    from videorec.indexing.slots import SlotError
    from videorec.services import ServiceUnavailable

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as err:
        words = sys.argv[1:] if argv is None else argv
        if "--json" in words:
            print_json({"ok": False, "error": "usage", "message": str(err)})
        else:
            parser.print_usage(sys.stderr)
            print(f"error: {err}", file=sys.stderr)
        return 2
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
        OverflowError,  # a number or date past what it can be (a size, a day count)
    ) as err:
        return fail(args, "bad_input", err, 2)
    except (ContractViolation, ServiceUnavailable) as err:
        return fail(args, type(err).__name__, err, 1)
    except OSError as err:
        # Not bad input the command could name in advance (a full disk, a lost mount):
        # the work failed; say what and where, without a traceback.
        return fail(args, "io_error", err, 1)
    except Exception as err:
        failure = storage_failure(err)  # the S3 client's errors, named; anything else raises
        if failure is None:
            raise
        kind, message = failure
        return fail(args, kind, RuntimeError(message), 2 if kind == "bad_input" else 1)
    if args.json:
        print_json(result)
    return status
