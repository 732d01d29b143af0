"""Checks of a GGUF file's metadata against its tensors, before anything is built.

A GGUF file's metadata and its tensors are written by different code paths of
its converter, and nothing in the format ties them together: a file can
declare zero heads, carry no vocabulary, or hold tensors whose shapes
contradict the declared heads. Any of these would end in a ZeroDivisionError,
a reshape error half-way through the import, or a model transformers cannot
load. :func:`check_gguf` reads only metadata and tensor descriptors (no tensor
data), works on llama.cpp's own tensor names (``token_embd``,
``blk.N.attn_q`` ...), which every architecture shares, and refuses the first
contradiction in one line naming the key or the tensor.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from warmstart.errors import CheckpointError
from warmstart.inputs import MAX_LAYERS, MAX_VOCAB, check_elements

_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")


def _field(reader, key):
    f = reader.fields.get(key)
    if f is None:
        return None
    try:
        return f.contents()
    except Exception:
        return None


def _size(reader, key: str, path: Path, required: bool = True) -> int | None:
    """A metadata value that must be a positive whole number."""
    value = _field(reader, key)
    if value is None:
        if required:
            raise CheckpointError(f"GGUF metadata lacks {key}", path)
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise CheckpointError(f"GGUF metadata {key} is {value!r}, not a whole number", path)
    if value < 1:
        raise CheckpointError(f"GGUF metadata {key} is {value!r}; it must be positive", path)
    return int(value)


def expected_shapes(kind: str, hidden: int, q: int, kv: int, inter: int, vocab: int) -> list[tuple[int, ...]] | None:
    """The numpy-order shapes a llama.cpp tensor kind may have (None: not checked)."""
    table = {
        "token_embd.weight": [(vocab, hidden)],
        "output.weight": [(vocab, hidden)],
        "output_norm.weight": [(hidden,)],
        "attn_q.weight": [(q, hidden)], "attn_q.bias": [(q,)],
        "attn_k.weight": [(kv, hidden)], "attn_k.bias": [(kv,)],
        "attn_v.weight": [(kv, hidden)], "attn_v.bias": [(kv,)],
        "attn_output.weight": [(hidden, q)],
        "attn_qkv.weight": [(q + 2 * kv, hidden)],
        "ffn_gate.weight": [(inter, hidden)],
        "ffn_up.weight": [(inter, hidden), (2 * inter, hidden)],  # fused gate+up (phi3)
        "ffn_down.weight": [(hidden, inter)],
        "attn_norm.weight": [(hidden,)], "ffn_norm.weight": [(hidden,)],
        "post_attention_norm.weight": [(hidden,)], "post_ffw_norm.weight": [(hidden,)],
    }
    return table.get(kind)


def check_gguf(reader, path: Path) -> None:
    """Refuse a GGUF whose metadata is not usable or contradicts its tensors (see the module docstring)."""
    arch = _field(reader, "general.architecture")
    if not isinstance(arch, str) or not arch:
        raise CheckpointError("GGUF metadata lacks general.architecture", path)
    a = arch
    hidden = _size(reader, f"{a}.embedding_length", path)
    heads = _size(reader, f"{a}.attention.head_count", path)
    layers = _size(reader, f"{a}.block_count", path)
    inter = _size(reader, f"{a}.feed_forward_length", path)
    kv_heads = _size(reader, f"{a}.attention.head_count_kv", path, required=False) or heads
    head_dim = _size(reader, f"{a}.attention.key_length", path, required=False) or hidden // heads
    if heads % kv_heads:
        raise CheckpointError(f"GGUF metadata: {heads} attention heads do not divide into {kv_heads} KV heads", path)
    if head_dim < 1:
        raise CheckpointError(f"GGUF metadata: {heads} heads do not fit the hidden size {hidden}", path)
    if layers > MAX_LAYERS:
        raise CheckpointError(f"GGUF metadata {a}.block_count is {layers}, more than the limit of {MAX_LAYERS}",
                              path)
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    n_tokens = len(tokens.data) if tokens is not None else 0
    vocab = _size(reader, f"{a}.vocab_size", path, required=False) or n_tokens
    if not vocab:
        raise CheckpointError(f"GGUF file has no vocabulary (neither {a}.vocab_size nor tokenizer.ggml.tokens)",
                              path)
    if vocab > MAX_VOCAB:
        raise CheckpointError(f"GGUF vocabulary of {vocab} tokens is more than the limit of {MAX_VOCAB}", path)
    q, kv = heads * head_dim, kv_heads * head_dim
    described = (f"hidden {hidden}, {heads} heads and {kv_heads} KV heads of {head_dim}, feed-forward {inter}, "
                 f"vocabulary {vocab}")
    total = 0
    blocks: set[int] = set()
    seen: set[str] = set()
    for t in reader.tensors:
        if t.name in seen:
            raise CheckpointError(f"GGUF tensor {t.name!r} appears twice", path)
        seen.add(t.name)
        shape = tuple(int(d) for d in reversed([int(x) for x in t.shape]))
        total += math.prod(shape)
        m = _BLOCK.match(t.name)
        kind = t.name
        if m:
            block, kind = int(m.group(1)), m.group(2)
            if block >= layers:
                raise CheckpointError(f"GGUF tensor {t.name!r} lies in block {block}, but {a}.block_count is {layers}",
                                      path)
            blocks.add(block)
        allowed = expected_shapes(kind, hidden, q, kv, inter, vocab)
        if allowed is None:
            continue
        squeezed = shape
        while len(squeezed) > 1 and squeezed[0] == 1:
            squeezed = squeezed[1:]
        if shape not in allowed and squeezed not in allowed:
            raise CheckpointError(f"GGUF tensor {t.name!r} has shape {list(shape)}, but the metadata ({described}) "
                                  f"implies {list(allowed[0])}", path)
    missing = sorted(set(range(layers)) - blocks)
    if missing:
        raise CheckpointError(f"GGUF file has no tensors for block {missing[0]}, though {a}.block_count is {layers}",
                              path)
    if "token_embd.weight" not in seen:
        raise CheckpointError("GGUF file has no token embedding (token_embd.weight)", path)
    check_elements(total, "the GGUF model's tensors", path)
