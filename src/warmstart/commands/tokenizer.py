"""`warmstart tokenizer train CORPUS... OUT --vocab-size N [--like MODEL]`: a new tokenizer for a transplant."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("tokenizer", help="train tokenizers (for warmstart vocab)")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    t = tsub.add_parser("train", help="train a tokenizer on text files, of the same kind as MODEL's")
    t.add_argument("corpus", nargs="+", help="text files to train on")
    t.add_argument("out", help="output directory (loadable with AutoTokenizer)")
    t.add_argument("--vocab-size", type=int, required=True, help="size of the new vocabulary")
    t.add_argument("--like", metavar="MODEL",
                   help="model or tokenizer directory whose normalizer, pre-tokenizer, decoder and special tokens "
                        "to keep (default: a byte-level BPE)")
    t.add_argument("--force", action="store_true", help="replace the output if it exists")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=run_train)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_train(args) -> int:
    from warmstart.vocab.tokenizer_train import train_tokenizer

    tok = train_tokenizer(args.corpus, args.out, args.vocab_size, like=args.like, force=args.force,
                          progress=not args.quiet)
    print(f"wrote {args.out}: {len(tok)} tokens")
    return 0
