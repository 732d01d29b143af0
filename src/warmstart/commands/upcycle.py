"""`warmstart upcycle MODEL OUT`: a dense model -> a Mixture-of-Experts model in transformers' MoE class."""

from __future__ import annotations

import argparse

from warmstart import api
from warmstart.commands.common import add_output_args, emit, examples, output_options
from warmstart.ops.upcycle import ROUTERS


def register(sub) -> None:
    p = sub.add_parser(
        "upcycle", help="dense -> Mixture-of-Experts (Sparse Upcycling, fine-grained and shared experts, "
                        "Drop-Upcycling): Mixtral for llama/mistral, Qwen2-MoE for qwen2, Qwen3-MoE for qwen3",
        description="Turn every MLP into E experts and a router. With identical experts and renormalized top-k "
                    "weights the MoE computes the dense model's function (see docs/upcycle.md for exactly when). "
                    "To grow first (AquilaMoE's scale-up then scale-out), use a recipe: steps hyperclone, upcycle.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples("warmstart upcycle SmolLM2-135M SmolLM2-8x --experts 8 --top-k 2 --verify",
                        "warmstart upcycle SmolLM2-135M SmolLM2-moe --experts 16 --top-k 4 --granularity 4 --dry-run"))
    p.add_argument("model", help="dense source model directory")
    p.add_argument("out", help="output directory")
    p.add_argument("--experts", type=int, required=True, metavar="E", help="number of routed experts per layer")
    p.add_argument("--top-k", type=int, required=True, metavar="K", help="experts each token is routed to")
    p.add_argument("--shared-experts", type=int, default=0, metavar="S",
                   help="slices of the MLP kept as an always-active shared expert (Qwen2-MoE; needs "
                        "--granularity above S; default 0)")
    p.add_argument("--granularity", type=int, default=1, metavar="G",
                   help="cut the MLP's intermediate units into G slices; each expert is one slice, its down "
                        "projection scaled so the sum is unchanged (default 1: each expert a whole copy)")
    p.add_argument("--drop-ratio", type=float, default=0.0, metavar="R",
                   help="Drop-Upcycling: re-initialize this fraction of each expert's units, different units per "
                        "expert (default 0; above 0 the output is a warm start, not exact)")
    p.add_argument("--router", choices=ROUTERS, default="random",
                   help="router initialization: zero (uniform), random (small normal rows, default), kmeans "
                        "(spherical k-means of the MLP inputs on --corpus)")
    p.add_argument("--router-std", type=float, metavar="STD",
                   help="standard deviation of the random router (default: the config's initializer_range)")
    p.add_argument("--corpus", metavar="FILE", help="calibration text for --router kmeans")
    p.add_argument("--calibration-tokens", type=int, default=4096, metavar="N",
                   help="tokens of --corpus the k-means router sees (default 4096)")
    p.add_argument("--no-norm-topk", dest="norm_topk", action="store_false",
                   help="Qwen-MoE: do not renormalize the top-k weights (the output is then not exact)")
    p.add_argument("--aux-loss-coef", type=float, default=0.01,
                   help="router load-balancing loss coefficient written to the config (default 0.01)")
    p.add_argument("--output-router-logits", action="store_true",
                   help="write output_router_logits: true, so that training with transformers adds the "
                        "load-balancing loss (default false, as for inference)")
    p.add_argument("--seed", type=int, default=0, help="seed of the router and of Drop-Upcycling (default 0)")
    p.add_argument("--verify", action="store_true",
                   help="afterwards, run both models on real text and report the logit difference")
    add_output_args(p)
    p.set_defaults(func=run)


def upcycle_params(args) -> dict:
    params = {"experts": args.experts, "top_k": args.top_k, "shared_experts": args.shared_experts,
              "granularity": args.granularity, "drop_ratio": args.drop_ratio, "router": args.router,
              "norm_topk": args.norm_topk, "aux_loss_coef": args.aux_loss_coef, "seed": args.seed}
    if args.output_router_logits:
        params["output_router_logits"] = True
    if args.router_std is not None:
        params["router_std"] = args.router_std
    if args.corpus is not None:
        params["corpus"] = args.corpus
    if args.calibration_tokens != 4096:
        params["calibration_tokens"] = args.calibration_tokens
    return params


def run(args) -> int:
    return emit(args, api.upcycle(args.model, args.out, verify=args.verify, **upcycle_params(args),
                                  **output_options(args)))
