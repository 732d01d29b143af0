"""`warmstart shrink MODEL OUT`: fewer layers (drop) and/or narrower layers (select)."""

from __future__ import annotations

from warmstart.commands.common import add_output_args, write_chain
from warmstart.errors import WarmstartError


def register(sub) -> None:
    p = sub.add_parser(
        "shrink", help="shrink a model: keep N layers (evenly spaced or the first N) and/or select "
                       "evenly spaced units of every width (Weight Selection)")
    p.add_argument("model", help="source model directory")
    p.add_argument("out", help="output directory")
    p.add_argument("--layers", type=int, help="number of layers to keep")
    p.add_argument("--layer-method", choices=("drop", "select"), default="drop",
                   help="drop: keep N evenly spaced layers, first and last included (default); "
                        "select: keep the first N layers (Weight Selection's layer selection)")
    p.add_argument("--hidden", type=int, help="target hidden size")
    p.add_argument("--intermediate", type=int, help="target MLP intermediate size")
    p.add_argument("--heads", type=int, help="target attention heads (whole heads are kept)")
    p.add_argument("--kv-heads", type=int, help="target key/value heads")
    p.add_argument("--seed", type=int, default=0, help="random seed, where the width method uses one")
    p.add_argument("--optimizer-state", metavar="FILE",
                   help="AdamW state of the source to carry over (layer dropping only; see docs/grow.md)")
    p.add_argument("--verify", action="store_true", help="afterwards, compare both models on real text")
    add_output_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    steps = []
    width = {k: getattr(args, k) for k in ("hidden", "intermediate", "heads", "kv_heads")
             if getattr(args, k) is not None}
    if width:
        steps.append(("select", {**width, "seed": args.seed}))
    if args.layers is not None:
        steps.append(("drop", {"layers": args.layers, "keep": "first" if args.layer_method == "select" else "even"}))
    if not steps:
        raise WarmstartError("nothing to do: give --layers and/or --hidden, --intermediate, --heads, --kv-heads")
    return write_chain(args, steps)
