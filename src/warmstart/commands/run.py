"""`warmstart run RECIPE.yaml`: apply a chain of operations from a YAML recipe in one streaming pass."""

from __future__ import annotations

from warmstart.commands.common import add_output_args, parse_size


def register(sub) -> None:
    p = sub.add_parser("run", help="apply a recipe: a chain of grow/shrink operations on one model, written once")
    p.add_argument("recipe", help="YAML file with model, out and steps: [{op: NAME, PARAM: VALUE, ...}, ...]")
    p.add_argument("--model", help="override the recipe's model")
    p.add_argument("--out", help="override the recipe's output")
    p.add_argument("--verify", action="store_true", help="afterwards, compare both models on real text")
    add_output_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from warmstart.arch import open_model
    from warmstart.checkpoint.writer import check_output
    from warmstart.commands.grow import print_verify
    from warmstart.recipe_chain import apply_chain, load_recipe, plan_recipe_steps

    recipe, steps = load_recipe(args.recipe)
    model_path = args.model or recipe.model
    out = args.out or recipe.out
    check_output(out, args.force, [model_path, args.recipe])
    plan_recipe_steps(open_model(model_path), steps, Path(args.recipe))
    result = apply_chain(model_path, out, steps, dtype=args.dtype or recipe.dtype, force=args.force,
                         max_shard_bytes=parse_size(args.max_shard_size), progress=not args.quiet,
                         optimizer_state=recipe.optimizer_state)
    for line in result.summary():
        print(line)
    if args.verify:
        return print_verify(model_path, result.out)
    return 0
