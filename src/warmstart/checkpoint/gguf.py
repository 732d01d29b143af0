"""Import a GGUF file (llama.cpp's format) as a Hugging Face safetensors directory.

GGUF is where many small pretrained models are shipped. The import streams:
the gguf library memory-maps the file, and each tensor is dequantized
(``gguf.quants.dequantize``), renamed, and written before the next is read.

Delegated to the libraries that define the format: the config is what
transformers' own GGUF support builds from the metadata
(``AutoConfig.from_pretrained(..., gguf_file=...)``), the tokenizer is
transformers' GGUF tokenizer conversion, and tensor names come from the gguf
package's own name map, inverted over the tensor names the family's arch spec
expects. What is hand-written is only the undoing of what llama.cpp's
converter does to values (:data:`GGUF_ARCHS`): the row permutation of the
Llama query and key projections (it interleaves each head's two RoPE
halves), and the norms of families with offset norms (Gemma 2/3), which
llama.cpp stores as the effective weight ``offset + w``.

Architectures: those transformers' GGUF loader reads and an arch spec here
describes; any other is refused with one line naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from warmstart.arch.spec import Layout, family_for_config
from warmstart.checkpoint.dtypes import code_to_torch
from warmstart.checkpoint.gguf_checks import check_gguf
from warmstart.checkpoint.writer import DEFAULT_MAX_SHARD_BYTES, OutputTensor, check_output, write_model
from warmstart.errors import CheckpointError
from warmstart.inputs import require_regular_file


@dataclass(frozen=True)
class GgufArch:
    """What llama.cpp's converter did to one architecture's tensors, and the HF model type it usually becomes."""

    model_type: str  # for the docs: the model type transformers gives the config is the one written
    rope_permuted: bool = False  # q/k rows interleaved per head (Llama converter)
    norms_effective: bool = False  # norm weights stored as offset + w (the family's norm_offset added)


# general.architecture -> how to read it back.
GGUF_ARCHS: dict[str, GgufArch] = {
    "llama": GgufArch("llama", rope_permuted=True),
    "mistral": GgufArch("mistral", rope_permuted=True),
    "qwen2": GgufArch("qwen2"),
    "qwen3": GgufArch("qwen3"),
    "phi3": GgufArch("phi3"),
    "gemma2": GgufArch("gemma2", norms_effective=True),
    "gemma3": GgufArch("gemma3_text", norms_effective=True),
}
SUPPORTED = tuple(sorted(GGUF_ARCHS))
# Tensors llama.cpp precomputes from the config (RoPE frequency factors): transformers recomputes them from
# the config and its GGUF loader skips them; so does this import.
DERIVED_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")
_SUFFIX = re.compile(r"^(.*)\.(weight|bias)$")


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


def gguf_arch(reader, path: Path) -> tuple[str, GgufArch]:
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_ARCHS:
        raise CheckpointError(f"GGUF architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED)}",
                              path)
    return arch, GGUF_ARCHS[arch]


def hf_config(path: Path, arch: str, dtype: str) -> dict:
    """The config transformers' GGUF support builds from the file's metadata."""
    import logging

    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        cfg = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    except Exception as err:
        raise CheckpointError(f"transformers cannot read the {arch} metadata ({str(err).splitlines()[0]})",
                              path) from err
    config = cfg.to_dict()
    for key in ("_name_or_path", "transformers_version", "dtype", "torch_dtype"):
        config.pop(key, None)
    config["architectures"] = [type(cfg).__name__.replace("TextConfig", "ForCausalLM").replace("Config",
                                                                                                "ForCausalLM")]
    config["torch_dtype"] = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dtype]
    return config


def name_map(arch: str, family, layers: int) -> dict[str, str]:
    """GGUF tensor name -> HF name, for every tensor the family's spec knows (the gguf package's map, inverted)."""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    key = next(k for k, v in MODEL_ARCH_NAMES.items() if v == arch)
    tmap = get_tensor_name_map(key, layers)
    hf_names = list(family.global_roles.values())
    hf_names += [t.format(i=i) for t in family.block_roles.values() for i in range(layers)]
    out: dict[str, str] = {}
    for hf in hf_names:
        m = _SUFFIX.match(hf)
        if not m:
            continue
        base = tmap.get_name(m.group(1))
        if base is not None:
            out.setdefault(f"{base}.{m.group(2)}", hf)
    return out


def gguf_tensors(reader, config: dict, info: GgufArch, family, dtype: str, path: Path,
                 names: dict[str, str]) -> list[OutputTensor]:
    """Lazy output tensors: each dequantized only when the writer asks for it."""
    import numpy as np
    import torch
    from gguf.quants import dequantize

    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    layout = Layout(family, list(names.values()), path)
    shift = family.norm_offset if info.norms_effective else 0.0
    outs = []
    for t in reader.tensors:
        if t.name in DERIVED_TENSORS:
            continue
        name = names.get(t.name)
        if name is None:
            raise CheckpointError(f"GGUF tensor {t.name!r} has no {family.name} counterpart", path)
        role = layout.roles[name].role
        shape = tuple(int(d) for d in reversed([int(x) for x in t.shape]))
        while len(shape) > 1 and shape[0] == 1 and family.is_norm_weight(role):
            shape = shape[1:]
        permute = None
        if info.rope_permuted and role == "attn.q.weight":
            permute = heads
        elif info.rope_permuted and role == "attn.k.weight":
            permute = kv_heads
        norm_shift = shift if family.is_norm_weight(role) else 0.0

        def compute(_t=t, _shape=shape, _permute=permute, _shift=norm_shift):
            arr = dequantize(_t.data, _t.tensor_type)
            arr = np.ascontiguousarray(arr, dtype=np.float32).reshape(_shape)
            if _permute:
                arr = unpermute_rope(arr, _permute)
            if _shift:
                arr = arr - np.float32(_shift)
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
    arch, info = gguf_arch(reader, path)  # an architecture we cannot import is named first
    check_gguf(reader, path)
    config = hf_config(path, arch, dtype)  # its model_type is transformers' (a llama file named Mistral: mistral)
    key_length = _field(reader, f"{arch}.attention.key_length")
    if key_length is not None and "head_dim" in config and config["head_dim"] != int(key_length):
        # transformers maps the head size for some architectures only (qwen3 falls back to its default 128)
        config["head_dim"] = int(key_length)
    family = family_for_config(config, path)
    dims = family.dims(config, path)
    names = name_map(arch, family, dims.layers)
    tensors = gguf_tensors(reader, config, info, family, dtype, path, names)
    return write_model(
        out, tensors, config=config, force=force, inputs=[path], progress=progress, desc="importing",
        max_shard_bytes=max_shard_bytes or DEFAULT_MAX_SHARD_BYTES,
        finish=lambda d: save_tokenizer(path, d), dry_run=dry_run,
        record={"command": "import", "source": str(Path(path).resolve()), "exact": False},
    )
