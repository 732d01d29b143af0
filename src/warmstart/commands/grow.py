"""`warmstart grow MODEL OUT`: more layers (depth operators), wider layers (width operators), or both."""

from __future__ import annotations

from warmstart.commands.common import add_output_args, write_chain
from warmstart.errors import WarmstartError
from warmstart.ops import registry


def depth_methods() -> list[str]:
    return [n for n in registry.names("depth") if n != "layer_map"]  # layer_map has its own flag


def width_methods() -> list[str]:
    return registry.names("width")


def register(sub) -> None:
    p = sub.add_parser(
        "grow", help="grow a model in depth (stack, interleave, dus, expand, --layer-map) and/or width "
                     "(hyperclone, net2net, aki); width first, then depth, in one streaming pass",
        description="Grow a model. Depth: --layers N with --depth-method, or --layer-map. Width: --width-method "
                    "with target sizes or --width-mult. Both in one command run as a chain (width, then depth).")
    p.add_argument("model", help="source model directory")
    p.add_argument("out", help="output directory")
    d = p.add_argument_group("depth")
    d.add_argument("--layers", type=int, help="number of layers of the output")
    d.add_argument("--depth-method", choices=depth_methods(),
                   help="stack (G_stack), interleave, dus (SOLAR depth up-scaling), expand (LLaMA Pro, exact)")
    d.add_argument("--dus-overlap", type=int, metavar="K",
                   help="dus: layers dropped at the seam of each copy (output has 2*(L-K) layers)")
    d.add_argument("--layer-map", metavar="SPEC",
                   help="any mapping: output block j copies source block SPEC[j], e.g. 0-5,0-5,3,4")
    w = p.add_argument_group("width")
    w.add_argument("--width-method", metavar="METHOD", help=f"one of: {', '.join(width_methods())}")
    w.add_argument("--hidden", type=int, help="target hidden size")
    w.add_argument("--intermediate", type=int, help="target MLP intermediate size")
    w.add_argument("--heads", type=int, help="target attention heads")
    w.add_argument("--kv-heads", type=int, help="target key/value heads")
    w.add_argument("--width-mult", type=float, metavar="K", help="multiply every width by K (hyperclone: integer)")
    w.add_argument("--noise-snr-db", type=float, help="symmetry-breaking noise, signal-to-noise ratio in dB")
    p.add_argument("--seed", type=int, default=0, help="random seed of the width operators (default 0)")
    p.add_argument("--optimizer-state", metavar="FILE",
                   help="AdamW state of the source to carry over (see docs/grow.md for the format); written as "
                        "OUT/optimizer_state.safetensors")
    p.add_argument("--verify", action="store_true",
                   help="afterwards, run both models on real text and report the logit difference")
    add_output_args(p)
    p.set_defaults(func=run)


def width_step(args) -> tuple[str, dict] | None:
    given = {k: getattr(args, k) for k in ("hidden", "intermediate", "heads", "kv_heads")
             if getattr(args, k) is not None}
    if args.width_mult is not None:
        mult = args.width_mult
        given["mult"] = int(mult) if float(mult).is_integer() else mult
    if args.noise_snr_db is not None:
        given["noise_snr_db"] = args.noise_snr_db
    if args.width_method is None:
        if given:
            flags = ", ".join("--" + k.replace("_", "-").replace("mult", "width-mult") for k in given)
            raise WarmstartError(f"{flags} given without --width-method (one of {', '.join(width_methods())})")
        return None
    if not any(k in given for k in ("hidden", "intermediate", "heads", "kv_heads", "mult")):
        raise WarmstartError(f"--width-method {args.width_method} needs target sizes (--hidden, --intermediate, "
                             "--heads, --kv-heads) or --width-mult")
    given["seed"] = args.seed
    return args.width_method, given


def depth_step(args) -> tuple[str, dict] | None:
    if args.layer_map is not None:
        if args.depth_method is not None:
            raise WarmstartError("give either --layer-map or --depth-method, not both")
        params = {"spec": args.layer_map}
        if args.layers is not None:
            params["layers"] = args.layers
        return "layer_map", params
    if args.dus_overlap is not None and args.depth_method != "dus":
        raise WarmstartError("--dus-overlap is for --depth-method dus")
    if args.depth_method is None:
        if args.layers is not None:
            raise WarmstartError(f"--layers needs --depth-method ({', '.join(depth_methods())}) or --layer-map")
        return None
    if args.depth_method == "dus":
        return "dus", {"layers": args.layers, "overlap": args.dus_overlap}
    if args.layers is None:
        raise WarmstartError(f"--depth-method {args.depth_method} needs --layers N")
    return args.depth_method, {"layers": args.layers}


def run(args) -> int:
    steps = [s for s in (width_step(args), depth_step(args)) if s is not None]
    if not steps:
        raise WarmstartError("nothing to do: give --layers with --depth-method, --layer-map, or --width-method")
    if steps[0][0] != "layer_map" and steps[0][0] not in depth_methods():
        registry.get(steps[0][0], "width")  # a clear error for an unknown width method
    return write_chain(args, steps)
