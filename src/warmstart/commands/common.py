"""Argument helpers shared by the commands that write a model directory."""

from __future__ import annotations

import re

from warmstart.errors import WarmstartError

_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}


def parse_size(text: str | None) -> int | None:
    """'2GB', '500MB', '1.5GiB' or a byte count -> bytes."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise WarmstartError(f"cannot read size {text!r} (examples: 2GB, 500MB, 1GiB)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        raise WarmstartError(f"size must be positive, got {text!r}")
    return value


def add_output_args(p) -> None:
    """--force, --dtype, --max-shard-size and --quiet, as every writing command takes them."""
    p.add_argument("--force", action="store_true", help="replace the output if it exists")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None,
                   help="cast floating tensors (default: keep each tensor's dtype)")
    p.add_argument("--max-shard-size", default="2GB", help="largest safetensors shard (default 2GB)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def write_chain(args, steps, *, where: str = "steps", path=None) -> int:
    """Apply `steps` to args.model as one streaming chain, print the summary, verify if asked (grow, shrink, run)."""
    from warmstart.ops.chain import apply_chain

    result = apply_chain(args.model, args.out, steps, dtype=args.dtype, force=args.force,
                         max_shard_bytes=parse_size(args.max_shard_size), progress=not args.quiet,
                         optimizer_state=args.optimizer_state, where=where, path=path)
    for line in result.summary():
        print(line)
    if args.verify:
        return print_verify(args.model, result.out)
    return 0


def print_verify(source, out) -> int:
    import transformers

    from warmstart.verify import compare

    transformers.utils.logging.disable_progress_bar()

    report = compare(source, out)
    for line in report.lines():
        print(line)
    return 0


def add_threads(p) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is faster on a machine busy with "
                        "other work)")


def set_threads(n) -> None:
    if n is None:
        return
    if n < 1:
        raise WarmstartError(f"--threads must be at least 1, got {n}")
    import torch

    torch.set_num_threads(n)


def device_flag(value: str):
    return {"auto": None, "cpu": True, "gpu": False}[value]
