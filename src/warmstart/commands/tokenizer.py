"""`warmstart tokenizer train CORPUS... OUT --vocab-size N [--like MODEL]`: a new tokenizer for a transplant."""

from __future__ import annotations

import argparse

from warmstart import api
from warmstart.commands.common import add_json, emit, examples, quiet


def register(sub) -> None:
    p = sub.add_parser("tokenizer", help="train tokenizers (for warmstart vocab)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=examples("warmstart tokenizer train plays/*.txt bard-tok --vocab-size 8000"))
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    t = tsub.add_parser("train", help="train a tokenizer on text files, of the same kind as MODEL's",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog=examples("warmstart tokenizer train plays/*.txt bard-tok --vocab-size 8000 "
                                        "--like SmolLM2-135M"))
    t.add_argument("corpus", nargs="+", help="text files to train on")
    t.add_argument("out", help="output directory (loadable with AutoTokenizer)")
    t.add_argument("--vocab-size", type=int, required=True, help="size of the new vocabulary")
    t.add_argument("--like", metavar="MODEL",
                   help="model or tokenizer directory whose normalizer, pre-tokenizer, decoder and special tokens "
                        "to keep (default: a byte-level BPE)")
    t.add_argument("--force", action="store_true", help="replace the output if it exists")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    add_json(t)
    t.set_defaults(func=run_train)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_train(args) -> int:
    quiet(args)
    return emit(args, api.tokenizer_train(args.corpus, args.out, vocab_size=args.vocab_size, like=args.like,
                                          force=args.force, progress=not args.quiet))
