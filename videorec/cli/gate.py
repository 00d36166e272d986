"""`videorec gate`: register a trained model version and apply the champion gate."""

from __future__ import annotations

import argparse
from typing import Any

from videorec.cli.common import console
from videorec.config import Config

REFUSED = 3  # exit status of a refused gate, so a script can branch on it


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this command's parser to ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser(
        "gate",
        parents=[common],
        help="register a model version and gate it against the champion (exit 3: refused)",
    )
    p.add_argument("--model", required=True, help="models/two-tower version to gate")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace, cfg: Config) -> tuple[dict[str, Any], int]:
    from videorec.training.gate import gate_model

    outcome = gate_model(cfg, model_version=args.model)
    if not args.json:
        print_gate(outcome)
    return outcome, exit_status(outcome)


def exit_status(outcome: dict[str, Any]) -> int:
    """0 when the gate promoted the model, ``REFUSED`` otherwise."""
    return 0 if outcome["decision"] == "promoted" else REFUSED


def print_gate(g: dict[str, Any]) -> None:
    """One line: the registered version, the decision and its reason."""
    colour = "green" if g["decision"] == "promoted" else "red"
    console().print(
        f"{g['model']} v{g['version']} ({g['model_version']}): "
        f"[{colour}]{g['decision']}[/{colour}]: {g['reason']}"
    )
