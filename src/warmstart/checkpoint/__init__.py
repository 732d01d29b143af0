"""Checkpoint engine: lazy reader, streaming atomic writer, GGUF import."""

from __future__ import annotations

from pathlib import Path


def copy_model(src, out, *, dtype: str | None = None, force: bool = False, max_shard_bytes: int | None = None,
               progress: bool = False):
    """Read a model directory and write it again, tensor by tensor.

    Unchanged tensors are copied as bytes; `dtype` ('fp32', 'fp16', 'bf16')
    casts floating tensors. The tokenizer and generation files travel along.
    """
    from warmstart.checkpoint.dtypes import config_dtype_name, parse_user_dtype
    from warmstart.checkpoint.reader import Checkpoint
    from warmstart.checkpoint.writer import check_output
    from warmstart.plan import Plan, copy_step, execute

    code = parse_user_dtype(dtype)
    check_output(out, force, [src])
    ckpt = Checkpoint(src)
    plan = Plan([ckpt], [copy_step(0, ckpt, n) for n in ckpt.names()]).with_dtype(code)
    config = dict(ckpt.config)
    if code is not None:
        config["torch_dtype"] = config_dtype_name(code)
        config.pop("dtype", None)
    return execute(plan, Path(out), config=config, copy_files=ckpt.extra_files(), force=force,
                   max_shard_bytes=max_shard_bytes, progress=progress, desc="copying")
