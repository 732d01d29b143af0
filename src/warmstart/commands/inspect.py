"""`warmstart inspect MODEL`: print what a checkpoint is."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("inspect", help="print a model's family, shapes, parameter count and dtype")
    p.add_argument("model", help="Hugging Face model directory")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.set_defaults(func=run)


def run(args) -> int:
    from warmstart.arch.summary import format_summary, summarize

    summary = summarize(args.model)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0
