"""Argument helpers shared by the commands that write a model directory."""

from __future__ import annotations

import json
import os

from warmstart.api import parse_size  # noqa: F401  (re-exported for the commands)
from warmstart.inputs import check_threads


def add_output_args(p, dtype: bool = True) -> None:
    """--force, --dtype, --max-shard-size, --dry-run, --json and --quiet, as every model-writing command takes them."""
    p.add_argument("--force", action="store_true", help="replace the output if it exists (only what warmstart wrote)")
    if dtype:
        p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None,
                       help="cast floating tensors (default: keep each tensor's dtype)")
    p.add_argument("--max-shard-size", default="2GB", help="largest safetensors shard (default 2GB)")
    p.add_argument("--dry-run", action="store_true",
                   help="check everything and print the plan (each output tensor's origin with --json), write nothing")
    add_json(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars (transformers' included)")


def add_width_args(p, heads_note: str = "") -> None:
    """--hidden, --intermediate, --heads, --kv-heads: the target widths, as grow, shrink and prune take them."""
    p.add_argument("--hidden", type=int, help="target hidden size")
    p.add_argument("--intermediate", type=int, help="target MLP intermediate size")
    p.add_argument("--heads", type=int, help="target attention heads" + (f" ({heads_note})" if heads_note else ""))
    p.add_argument("--kv-heads", type=int, help="target key/value heads")


def add_json(p) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def examples(*lines: str) -> str:
    """The epilog every --help ends with: one or two real examples."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def emit(args, result) -> int:
    """Print a result: its lines, or its JSON with --json."""
    if getattr(args, "json", False):
        print(json.dumps(result.as_dict(), indent=2, default=str))
    else:
        for line in result.lines():
            print(line)
    verify = getattr(result, "verify", None)
    if verify is not None and not getattr(args, "json", False):
        for line in verify.lines():
            print(line)
    return 0


def quiet(args) -> None:
    """--quiet: no progress bar anywhere, transformers' and huggingface_hub's included."""
    if getattr(args, "quiet", False):
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        os.environ["TQDM_DISABLE"] = "1"
        try:
            import transformers

            transformers.utils.logging.disable_progress_bar()
        except ImportError:
            pass


def output_options(args) -> dict:
    """The keyword arguments of the API that the output flags give."""
    quiet(args)
    opts = dict(force=args.force, max_shard_size=args.max_shard_size, dry_run=args.dry_run, progress=not args.quiet)
    if hasattr(args, "dtype"):
        opts["dtype"] = args.dtype
    return opts


def add_calibration_args(p, *, purpose: str, batches: int, seq_len: int, corpus_default=None) -> None:
    """--corpus/--batches/--batch-size/--seq-len: the calibration text that data-driven operations read."""
    lead = f"{purpose}: " if purpose else ""
    p.add_argument("--corpus", nargs="+", default=corpus_default, metavar="FILE",
                   help=f"{lead}calibration text files or folders")
    p.add_argument("--batches", type=int, default=batches, help=f"{lead}calibration batches (default {batches})")
    p.add_argument("--batch-size", type=int, default=4, help=f"{lead}sequences per calibration batch (default 4)")
    p.add_argument("--seq-len", type=int, default=seq_len,
                   help=f"{lead}tokens per calibration sequence (default {seq_len})")


def add_threads(p) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is faster on a machine busy with "
                        "other work)")


def set_threads(n) -> None:
    if check_threads(n) is None:
        return
    import torch

    torch.set_num_threads(n)


def device_flag(value: str):
    return {"auto": None, "cpu": True, "gpu": False}[value]
