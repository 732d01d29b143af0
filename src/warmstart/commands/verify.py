"""`warmstart verify SRC DST`: run both models on real text and report how far apart they are."""

from __future__ import annotations

from warmstart.errors import WarmstartError
from warmstart.verify import TOLERANCE, compare, hamlet_text


def register(sub) -> None:
    p = sub.add_parser("verify", help="compare a grown or shrunk model with its source on real text "
                                      "(logit difference, top-1 agreement, loss; sentence similarity for encoders)")
    p.add_argument("source", help="source model directory")
    p.add_argument("grown", help="the model derived from it")
    p.add_argument("--text", metavar="FILE", help="text file to run on, or 'hamlet' for the Shakespeare passage "
                                                  "(default: a built-in paragraph, the same on every machine)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens of the text to use (default 128)")
    p.add_argument("--expect-exact", action="store_true",
                   help="exit 1 unless the relative difference is within 1e-4 (and top-1 agreement is 100%%)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from pathlib import Path

    import transformers

    transformers.utils.logging.disable_progress_bar()  # one line per figure, no loading bars

    text, name = None, "built-in paragraph"
    if args.text == "hamlet" and not Path(args.text).exists():
        text, name = hamlet_text(), "Hamlet passage"
    elif args.text is not None:
        try:
            text = Path(args.text).read_text(encoding="utf-8", errors="replace")
        except OSError as err:
            raise WarmstartError(f"cannot read text file: {err.strerror or err}", args.text) from None
        name = f"text in {args.text}"
    report = compare(args.source, args.grown, text=text, max_tokens=args.max_tokens, text_name=name)
    if args.json:
        print(json.dumps({**report.as_dict(), "passed": report.passed()}, indent=2))
    else:
        for line in report.lines():
            print(line)
    if args.expect_exact:
        if not report.passed():
            print(f"verification failed: not exact within {TOLERANCE:g} relative")
            return 1
        print(f"exact within {TOLERANCE:g} relative")
    return 0
