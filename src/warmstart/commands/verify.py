"""`warmstart verify SRC DST`: run both models on real text and report how far apart they are."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("verify", help="compare a grown or shrunk model with its source on real text "
                                      "(logit difference, top-1 agreement, loss; sentence similarity for encoders)")
    p.add_argument("source", help="source model directory")
    p.add_argument("grown", help="the model derived from it")
    p.add_argument("--text", metavar="FILE", help="text file to run on (default: Hamlet if cached, else a built-in "
                                                  "paragraph)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens of the text to use (default 128)")
    p.add_argument("--expect-exact", action="store_true",
                   help="exit 1 unless the relative difference is within 1e-4 (and top-1 agreement is 100%%)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from pathlib import Path

    import transformers

    from warmstart.verify import TOLERANCE, compare

    transformers.utils.logging.disable_progress_bar()  # one line per figure, no loading bars

    text = None
    if args.text is not None:
        from warmstart.inputs import check_text_file, read_bytes

        check_text_file(Path(args.text), "text file")
        text = read_bytes(Path(args.text), "text file", 64 * 1024 * 1024).decode("utf-8", errors="replace")
    report = compare(args.source, args.grown, text=text, max_tokens=args.max_tokens)
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
