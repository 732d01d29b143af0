"""`warmstart convert MODEL OUT`: rewrite a checkpoint (dtype, sharding) through the streaming engine."""

from __future__ import annotations

from warmstart.commands.common import add_output_args, parse_size


def register(sub) -> None:
    p = sub.add_parser("convert", help="rewrite a model directory: change dtype or shard size, or copy it unchanged")
    p.add_argument("model", help="source model directory")
    p.add_argument("out", help="output directory")
    add_output_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from warmstart.plan import copy_model

    report = copy_model(args.model, args.out, dtype=args.dtype, force=args.force,
                        max_shard_bytes=parse_size(args.max_shard_size), progress=not args.quiet)
    print(f"wrote {report.path} ({len(report.files)} files, {report.total_bytes / 1e6:.1f} MB; "
          f"{report.copied_bytes / 1e6:.1f} MB copied as bytes, {report.computed_bytes / 1e6:.1f} MB computed)")
    return 0
