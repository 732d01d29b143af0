"""`warmstart inspect MODEL`: print what a checkpoint is."""

from __future__ import annotations

import argparse

from warmstart import api
from warmstart.commands.common import add_json, emit, examples


def register(sub) -> None:
    p = sub.add_parser("inspect", help="print a model's family, shapes, parameter count, dtype and provenance",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=examples("warmstart inspect SmolLM2-135M", "warmstart inspect SmolLM2-grown --json"))
    p.add_argument("model", help="Hugging Face model directory")
    add_json(p)
    p.set_defaults(func=run)


def run(args) -> int:
    return emit(args, api.inspect(args.model))
