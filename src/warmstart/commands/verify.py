"""`warmstart verify SRC DST`: run both models on real text and report how far apart they are."""

from __future__ import annotations

import argparse
import json

from warmstart import api
from warmstart.commands.common import examples, quiet
from warmstart.verify import TOLERANCE


def register(sub) -> None:
    p = sub.add_parser("verify", help="compare a grown or shrunk model with its source on real text "
                                      "(logit difference, top-1 agreement, loss; sentence similarity for encoders)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=examples("warmstart verify SmolLM2-135M SmolLM2-grown --expect-exact",
                                       "warmstart verify SmolLM2-135M SmolLM2-grown --text hamlet --json"))
    p.add_argument("source", help="source model directory")
    p.add_argument("grown", help="the model derived from it")
    p.add_argument("--text", metavar="FILE", help="text file to run on, or 'hamlet' for the Shakespeare passage "
                                                  "(default: a built-in paragraph, the same on every machine)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens of the text to use (default 128)")
    p.add_argument("--expect-exact", action="store_true",
                   help="exit 1 unless the relative difference is within 1e-4 (and top-1 agreement is 100%%)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    quiet(args)
    transformers_quiet()
    report = api.verify(args.source, args.grown, text=args.text, max_tokens=args.max_tokens)
    if args.json:
        print(json.dumps({**report.as_dict(), "passed": report.passed()}, indent=2))
    else:
        for line in report.lines():
            print(line)
    if args.expect_exact:
        if not report.passed():
            why = ("the tokenizers differ" if report.tokenizer_mismatch is not None
                   else f"not exact within {TOLERANCE:g} relative")
            print(f"verification failed: {why}")
            return 1
        print(f"exact within {TOLERANCE:g} relative")
    return 0


def transformers_quiet() -> None:
    import transformers

    transformers.utils.logging.disable_progress_bar()  # one line per figure, no loading bars
