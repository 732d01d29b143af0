"""Import a GGUF file (llama.cpp's format) as a Hugging Face safetensors directory.

GGUF is where many small pretrained models are shipped. The import streams:
the gguf library memory-maps the file, and each tensor is dequantized
(``gguf.quants.dequantize``), renamed, and written before the next is read.

What is hand-written here is only the mapping of GGUF names and metadata to
the Hugging Face Llama layout, and the inverse of the row permutation that
llama.cpp's converter applies to the query and key projections (it
interleaves each head's two RoPE halves). The tokenizer comes from
transformers' own GGUF tokenizer conversion, which reads only metadata.
"""

from __future__ import annotations

import re
from pathlib import Path

from warmstart.checkpoint.dtypes import code_to_torch
from warmstart.checkpoint.gguf_checks import check_gguf
from warmstart.checkpoint.writer import DEFAULT_MAX_SHARD_BYTES, OutputTensor, check_output, write_model
from warmstart.errors import CheckpointError
from warmstart.inputs import require_regular_file

# GGUF tensor name -> HF Llama tensor name.
_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
SUPPORTED = ("llama",)


def hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL:
        return _GLOBAL[gguf_name]
    m = _BLOCK_RE.match(gguf_name)
    if m and m.group(2) in _BLOCK:
        return f"model.layers.{m.group(1)}.{_BLOCK[m.group(2)]}.{m.group(3)}"
    return None


def unpermute_rope(w, n_heads: int):
    """Undo llama.cpp's q/k row permutation: per head, rows (2, d/2) were stored as (d/2, 2)."""
    rows = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        return f.contents()
    except Exception:  # older gguf versions
        return default


def open_gguf(path: Path):
    try:
        import gguf
    except ImportError as err:  # pragma: no cover - gguf is a dependency
        raise CheckpointError("the gguf package is needed to import GGUF files", path) from err
    if not path.exists():
        raise CheckpointError("no such GGUF file", path)
    if path.is_dir():
        raise CheckpointError("is a directory, expected a GGUF file", path)
    require_regular_file(path, "GGUF file", CheckpointError)
    try:
        return gguf.GGUFReader(str(path))
    except Exception as err:
        raise CheckpointError(f"not a readable GGUF file ({err})", path) from err


def llama_config(reader, path: Path, dtype: str) -> dict:
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED:
        raise CheckpointError(f"GGUF architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED)}", path)
    a = arch

    def need(key):
        value = _field(reader, f"{a}.{key}")
        if value is None:
            raise CheckpointError(f"GGUF metadata lacks {a}.{key}", path)
        return value

    names = {t.name for t in reader.tensors}
    hidden = int(need("embedding_length"))
    heads = int(need("attention.head_count"))
    vocab = _field(reader, f"{a}.vocab_size")
    if vocab is None:
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        vocab = len(tokens.data) if tokens is not None else None
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, f"{a}.attention.head_count_kv", heads)),
        "head_dim": int(_field(reader, f"{a}.rope.dimension_count", hidden // heads)),
        "max_position_embeddings": int(_field(reader, f"{a}.context_length", 2048)),
        "rms_norm_eps": float(_field(reader, f"{a}.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(_field(reader, f"{a}.rope.freq_base", 10000.0)),
        "vocab_size": int(vocab),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": "output.weight" not in names,
        "torch_dtype": {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dtype],
    }
    for key, gkey in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"), ("pad_token_id", "padding_token_id")):
        value = _field(reader, f"tokenizer.ggml.{gkey}")
        if value is not None:
            config[key] = int(value)
    return config


def gguf_tensors(reader, config: dict, dtype: str, path: Path) -> list[OutputTensor]:
    """Lazy output tensors: each dequantized only when the writer asks for it."""
    import numpy as np
    import torch
    from gguf.quants import dequantize

    heads = config["num_attention_heads"]
    kv_heads = config["num_key_value_heads"]
    outs = []
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            raise CheckpointError(f"GGUF tensor {t.name!r} has no Llama counterpart", path)
        shape = tuple(int(d) for d in reversed([int(x) for x in t.shape]))
        while len(shape) > 1 and shape[0] == 1 and name.endswith("norm.weight"):
            shape = shape[1:]

        def compute(_t=t, _name=name, _shape=shape):
            arr = dequantize(_t.data, _t.tensor_type)
            arr = np.ascontiguousarray(arr, dtype=np.float32).reshape(_shape)
            if _name.endswith("q_proj.weight"):
                arr = unpermute_rope(arr, heads)
            elif _name.endswith("k_proj.weight"):
                arr = unpermute_rope(arr, kv_heads)
            if not arr.flags.writeable:  # unquantized tensors are views of the read-only map
                arr = arr.copy()
            return torch.from_numpy(np.ascontiguousarray(arr)).to(code_to_torch(dtype))

        outs.append(OutputTensor(name, dtype, shape, compute=compute))
    return outs


def save_tokenizer(path: Path, directory: Path) -> None:
    """Convert the GGUF's tokenizer metadata with transformers and save it beside the weights."""
    import logging

    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as err:
        raise CheckpointError(f"cannot convert the GGUF tokenizer ({err})", path) from err
    tok.save_pretrained(str(directory))


def import_gguf(path: str | Path, out: str | Path, *, dtype: str = "F32", force: bool = False,
                max_shard_bytes: int | None = None, progress: bool = False, dry_run: bool = False):
    """Convert `path` (GGUF) into the Hugging Face directory `out`, streaming."""
    path = Path(path)
    check_output(out, force, [path])
    reader = open_gguf(path)
    check_gguf(reader, path)
    config = llama_config(reader, path, dtype)
    tensors = gguf_tensors(reader, config, dtype, path)
    return write_model(
        out, tensors, config=config, force=force, inputs=[path], progress=progress, desc="importing",
        max_shard_bytes=max_shard_bytes or DEFAULT_MAX_SHARD_BYTES,
        finish=lambda d: save_tokenizer(path, d), dry_run=dry_run,
        record={"command": "import", "source": str(Path(path).resolve()), "exact": False},
    )
