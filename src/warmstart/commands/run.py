"""`warmstart run RECIPE.yaml`: apply a chain of operations from a YAML recipe in one streaming pass."""

from __future__ import annotations

from warmstart.commands.common import add_output_args, write_chain
from warmstart.ops.chain import load_recipe


def register(sub) -> None:
    p = sub.add_parser("run", help="apply a recipe: a chain of grow/shrink operations on one model, written once")
    p.add_argument("recipe", help="YAML file with model, out and steps: [{op: NAME, PARAM: VALUE, ...}, ...]")
    p.add_argument("--model", help="override the recipe's model")
    p.add_argument("--out", help="override the recipe's output")
    p.add_argument("--verify", action="store_true", help="afterwards, compare both models on real text")
    add_output_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    recipe, steps = load_recipe(args.recipe)
    args.model = args.model or recipe.model
    args.out = args.out or recipe.out
    args.dtype = args.dtype or recipe.dtype
    args.optimizer_state = recipe.optimizer_state
    return write_chain(args, steps, path=args.recipe)
