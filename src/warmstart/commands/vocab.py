"""`warmstart vocab MODEL OUT --tokenizer NEW --method M`: transplant a model onto a new tokenizer."""

from __future__ import annotations

from warmstart.commands.common import add_output_args, parse_size
from warmstart.vocab.methods import METHODS


def register(sub) -> None:
    p = sub.add_parser("vocab", help="give a model a new tokenizer, its embedding rows computed from the old ones")
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
    p.add_argument("--seed", type=int, default=0, help="seed of the random fills and of FastText")
    add_output_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from warmstart.vocab import transplant

    options = {"k": args.k, "temperature": args.temperature, "aux_dim": args.aux_dim, "aux_epochs": args.aux_epochs}
    report = transplant(args.model, args.out, args.tokenizer, args.method, mode=args.mode, corpus=args.corpus,
                        donor=args.donor, aligned=args.aligned_embeddings, options=options, seed=args.seed,
                        force=args.force, dtype=args.dtype, max_shard_bytes=parse_size(args.max_shard_size),
                        progress=not args.quiet)
    print(report.summary())
    return 0
