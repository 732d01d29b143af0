"""`warmstart vocab MODEL OUT --tokenizer NEW --method M`: transplant a model onto a new tokenizer."""

from __future__ import annotations

import argparse

from warmstart import api
from warmstart.commands.common import add_output_args, emit, examples, output_options
from warmstart.vocab.methods import FILLS, METHODS


def register(sub) -> None:
    p = sub.add_parser("vocab", help="give a model a new tokenizer, its embedding rows computed from the old ones",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=examples("warmstart vocab SmolLM2-135M SmolLM2-bard --tokenizer bard-tok --method fvt",
                                       "warmstart vocab SmolLM2-135M SmolLM2-bard --tokenizer bard-tok --method focus "
                                       "--corpus plays/*.txt"))
    p.add_argument("model", help="source model directory (with its tokenizer.json)")
    p.add_argument("out", help="output directory")
    p.add_argument("--tokenizer", required=True, metavar="NEW", help="new tokenizer: a directory or a tokenizer.json")
    p.add_argument("--method", default="fvt", choices=METHODS.names(),
                   help="how new rows are made (default fvt); focus and omp need --corpus, wechsel "
                        "--aligned-embeddings")
    p.add_argument("--mode", default="replace", choices=["replace", "extend"],
                   help="replace the vocabulary, or keep it and append the new tokens (default replace)")
    p.add_argument("--corpus", nargs="+", default=[], metavar="FILE",
                   help="target-domain text for the auxiliary embeddings (focus, omp)")
    p.add_argument("--donor", metavar="MODEL", help="omp: fit in this model's embedding space (its tokenizer "
                   "should be the new one)")
    p.add_argument("--aligned-embeddings", nargs=2, metavar=("SRC.vec", "TGT.vec"),
                   help="wechsel: aligned word vectors of the model's and the new language")
    p.add_argument("--k", type=int, default=None, help="omp atoms / wechsel neighbours (default 8 / 10)")
    p.add_argument("--temperature", type=float, default=None, help="focus sparsemax / wechsel softmax temperature "
                   "(default 0.1)")
    p.add_argument("--aux-dim", type=int, default=None, help="dimension of the auxiliary embeddings (default 100)")
    p.add_argument("--aux-epochs", type=int, default=None, help="FastText epochs (default 5)")
    p.add_argument("--fill", choices=FILLS.names(), default=None,
                   help="rows that no copy or combination makes: mean (the average row), multivariate (drawn from "
                        "the old rows' normal, Hewitt), random (i.i.d. at the old std) or zero (default: the "
                        "method's own: random for random, multivariate for multivariate, mean otherwise)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random fills and of FastText")
    add_output_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    return emit(args, api.vocab(args.model, args.out, args.tokenizer, method=args.method, mode=args.mode,
                                corpus=args.corpus, donor=args.donor, aligned_embeddings=args.aligned_embeddings,
                                k=args.k, temperature=args.temperature, aux_dim=args.aux_dim,
                                aux_epochs=args.aux_epochs, seed=args.seed, fill=args.fill, **output_options(args)))
