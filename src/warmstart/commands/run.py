"""`warmstart run RECIPE.yaml`: apply a chain of operations from a YAML recipe in one streaming pass."""

from __future__ import annotations

import argparse

from warmstart import api
from warmstart.commands.common import add_output_args, emit, examples, output_options


def register(sub) -> None:
    p = sub.add_parser("run", help="apply a recipe: a chain of grow/shrink operations on one model, written once",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=examples("warmstart run recipe.yaml --verify",
                                       "warmstart run recipe.yaml --model SmolLM2-135M --out grown --dry-run"))
    p.add_argument("recipe", help="YAML file with model, out and steps: [{op: NAME, PARAM: VALUE, ...}, ...]")
    p.add_argument("--model", help="override the recipe's model")
    p.add_argument("--out", help="override the recipe's output")
    p.add_argument("--verify", action="store_true", help="afterwards, compare both models on real text")
    add_output_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    return emit(args, api.run(args.recipe, model=args.model, out=args.out, verify=args.verify, **output_options(args)))
