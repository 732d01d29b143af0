"""Checks of a GGUF import before anything is written, whatever the family.

A GGUF file's metadata and its tensors are written by different code paths of
its converter, and nothing in the format ties them together: a file can
declare zero heads, carry no vocabulary, or hold tensors whose shapes
contradict the declared heads. Any of these would end in a ZeroDivisionError,
a reshape error half-way through the import, or a model transformers cannot
load. :func:`check_import` compares the planned output (names and shapes,
before any tensor is dequantized) with the config built from the metadata,
through the family's arch spec, and refuses the first contradiction in one
line naming the GGUF tensor or key.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from warmstart.errors import CheckpointError


def expected_shape(role: str, d) -> tuple[int, ...] | None:
    """The Hugging Face shape of a tensor of `role` under dims `d` (Linear weights are [out, in]); None if not known."""
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    table = {
        "embed.weight": (d.vocab, d.hidden),
        "head.weight": (d.vocab, d.hidden),
        "final_norm.weight": (d.hidden,),
        "attn.q.weight": (q, d.hidden), "attn.q.bias": (q,),
        "attn.k.weight": (kv, d.hidden), "attn.k.bias": (kv,),
        "attn.v.weight": (kv, d.hidden), "attn.v.bias": (kv,),
        "attn.o.weight": (d.hidden, q),
        "attn.qkv.weight": (q + 2 * kv, d.hidden),
        "mlp.gate.weight": (d.intermediate, d.hidden),
        "mlp.up.weight": (d.intermediate, d.hidden),
        "mlp.down.weight": (d.hidden, d.intermediate),
        "mlp.gate_up.weight": (2 * d.intermediate, d.hidden),
    }
    if role in table:
        return table[role]
    if role.startswith("norm") and role.endswith(".weight"):  # block norms on the residual width
        return (d.hidden,)
    return None


def has_vocabulary(reader, arch: str) -> bool:
    for key in (f"{arch}.vocab_size", "tokenizer.ggml.tokens"):
        field = reader.fields.get(key)
        if field is not None and len(getattr(field, "data", ()) or ()) > 0:
            return True
    return False


def check_import(reader, tensors: Sequence[Any], config: dict, path: Path, gguf_names: Sequence[str] = ()) -> None:
    """Refuse a GGUF whose metadata and tensors contradict each other (see the module docstring).

    `tensors` are the planned OutputTensors (HF names and shapes); `gguf_names`,
    in the same order, the names inside the file, for the messages.
    """
    from warmstart.arch.spec import Layout, family_for_config
    from warmstart.inputs import check_elements

    arch = None
    field = reader.fields.get("general.architecture")
    if field is not None:
        try:
            arch = field.contents()
        except Exception:
            arch = None
    if arch and not has_vocabulary(reader, arch):
        raise CheckpointError(f"GGUF file has no vocabulary (neither {arch}.vocab_size nor tokenizer.ggml.tokens)",
                              path)
    family = family_for_config(config, path)
    d = family.dims(config, path)  # positive sizes, a sane layer count
    if d.heads % d.kv_heads:
        raise CheckpointError(f"GGUF metadata: {d.heads} attention heads do not divide into {d.kv_heads} KV heads",
                              path)
    check_elements(sum(math.prod(t.shape) for t in tensors), "the GGUF model's tensors", path)
    shown = list(gguf_names) or [t.name for t in tensors]
    layout = Layout(family, [t.name for t in tensors], path)
    layers_seen: set[int] = set()
    for t, gname in zip(tensors, shown):
        role = layout.roles.get(t.name)
        if role is None:
            continue  # names the importer could not map are refused by it
        if role.layer is not None:
            if role.layer >= d.layers:
                raise CheckpointError(f"GGUF tensor {gname!r} lies in block {role.layer}, but the metadata declares "
                                      f"{d.layers} blocks", path)
            layers_seen.add(role.layer)
        want = None if family.conv1d else expected_shape(role.role, d)
        if want is not None and tuple(t.shape) != want:
            raise CheckpointError(
                f"GGUF tensor {gname!r} has shape {list(t.shape)}, but the metadata (hidden {d.hidden}, {d.heads} "
                f"heads, {d.kv_heads} KV heads of {d.head_dim}, intermediate {d.intermediate}, vocabulary "
                f"{d.vocab}) implies {list(want)}", path)
    missing = sorted(set(range(d.layers)) - layers_seen)
    if missing:
        raise CheckpointError(f"GGUF file has no tensors for block {missing[0]} of the {d.layers} the metadata "
                              "declares", path)
    if not layout.has("embed.weight"):
        raise CheckpointError("GGUF file has no token embedding tensor", path)
