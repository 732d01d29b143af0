"""Upcycle a dense model directory into a Mixture-of-Experts one (the library side of `warmstart upcycle`).

The operation itself is :func:`warmstart.ops.upcycle.upcycle`; this module
runs it as a chain (optionally after growth operations such as
``hyperclone``: AquilaMoE's scale-up then scale-out) in one streaming pass.
"""

from __future__ import annotations

from pathlib import Path


def upcycle_model(src: str | Path, out: str | Path, *, before: list[tuple[str, dict]] | None = None,
                  dtype: str | None = None, force: bool = False, max_shard_bytes: int | None = None,
                  progress: bool = False, **params):
    """Write the MoE upcycled from `src` (after the operations in `before`, if any) to `out`; a ChainResult."""
    from warmstart.recipe_chain import apply_chain

    steps = list(before or []) + [("upcycle", params)]
    return apply_chain(src, out, steps, dtype=dtype, force=force, max_shard_bytes=max_shard_bytes,
                       progress=progress)


def dry_run(src: str | Path, params: dict, before: list[tuple[str, dict]] | None = None) -> list[str]:
    """Plan the upcycling and describe it; nothing is read beyond headers and nothing is written."""
    from warmstart.arch import open_model
    from warmstart.checkpoint.dtypes import code_to_torch
    from warmstart.ops import registry

    model = open_model(src)
    steps = list(before or []) + [("upcycle", params)]
    t = registry.chain(model, steps)
    total = 0
    largest = 0
    copies = 0
    for s in t.plan.steps:
        n = 1
        for d in s.shape:
            n *= d
        nbytes = n * code_to_torch(s.dtype).itemsize
        total += nbytes
        largest = max(largest, nbytes)
        copies += s.is_copy
    cfg = t.config
    exact = {True: "exact (the output computes the same function as the source)",
             False: "not function-preserving (a warm start for further training)", None: "not applicable"}[t.exact]
    lines = [f"would write {cfg['architectures'][0]} ({cfg['model_type']}): {len(t.plan.steps)} tensors, "
             f"{total / 1e6:.1f} MB ({copies} copied as bytes); largest tensor {largest / 1e6:.1f} MB"]
    lines += [f"  {n}" for n in t.notes]
    lines.append("exactness: " + exact)
    return lines
