"""Tiny random models of every supported decoder family, built with transformers' own config classes.

Used by the family tests and by ``benchmarks/support_matrix.py``: each model is
small enough to run in milliseconds, yet has every quirk of its family switched
on (random norm weights around the family's offset, a sliding window shorter
than the test text with a mixed local/global layer pattern, soft-caps, fused
projections), so an operation that mishandles a quirk changes the logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from warmstart.vocab.match import byte_to_char

if TYPE_CHECKING:
    import numpy as np

# family name -> (config class, model class, config overrides beyond the common tiny sizes)
_COMMON = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6,
               bos_token_id=0, eos_token_id=1)
_SLIDING = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]

FAMILY_CONFIGS: dict[str, tuple[str, str, dict]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(head_dim=8)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(use_sliding_window=True, sliding_window=4,
                                                      max_window_layers=3)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=8, use_sliding_window=True, sliding_window=4,
                                                      max_window_layers=3)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(head_dim=8)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(head_dim=8, sliding_window=4, layer_types=_SLIDING,
                                                         query_pre_attn_scalar=8, attn_logit_softcapping=5.0,
                                                         final_logit_softcapping=3.0)),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(head_dim=8, sliding_window=4, layer_types=_SLIDING,
                                                                  query_pre_attn_scalar=8)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(pad_token_id=0, sliding_window=None)),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict()),
    # Gemma 3 multimodal: the common sizes go into text_config; a one-layer vision tower rides along.
    "gemma3": ("Gemma3Config", "Gemma3ForConditionalGeneration", dict(
        text_config=dict(head_dim=8, sliding_window=4, layer_types=_SLIDING, query_pre_attn_scalar=8),
        vision_config=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4, boi_token_index=125, eoi_token_index=126, image_token_index=127)),
    # GPT-2 names its sizes differently: its entry replaces the common ones.
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(vocab_size=128, n_embd=32, n_layer=4, n_head=4, n_positions=64,
                                                       bos_token_id=0, eos_token_id=1)),
}
_OWN_SIZES = ("gpt2",)
# Families whose config.json should *not* list layer_types (it is implied by other fields).
_IMPLIED_LAYER_TYPES = ("qwen2", "qwen3")


def build(family: str, path: str | Path, seed: int = 0, **overrides) -> Path:
    """Save a tiny random causal LM of `family` to `path` (norms and biases randomized)."""
    import torch
    import transformers as tf

    tf.logging.set_verbosity_error()
    cfg_name, model_name, extra = FAMILY_CONFIGS[family]
    torch.manual_seed(seed)
    if "text_config" in extra:  # a nested text model takes the common sizes and the overrides
        cfg = {**extra, "text_config": {**_COMMON, **extra["text_config"], **overrides}}
    else:
        cfg = {**({} if family in _OWN_SIZES else _COMMON), **extra, **overrides}
    config = getattr(tf, cfg_name)(**cfg)
    model = getattr(tf, model_name)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norm weights (around 0 or 1) and biases: random, so mistakes show
                p.add_(torch.randn_like(p) * 0.3)
    path = Path(path)
    model.save_pretrained(str(path), safe_serialization=True)
    if family in _IMPLIED_LAYER_TYPES:
        import json

        cfg_path = path / "config.json"
        saved = json.loads(cfg_path.read_text())
        saved.pop("layer_types", None)  # as older checkpoints: derived from max_window_layers
        cfg_path.write_text(json.dumps(saved, indent=2))
    return path


def token_ids(n: int = 16, batch: int = 2, seed: int = 0, vocab: int = 128):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, n), generator=g)


def logits(path: str | Path, ids):
    """fp32 logits of the model at `path` (its own Auto class, never remote code)."""
    import torch
    import transformers as tf

    tf.logging.set_verbosity_error()
    model = tf.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True,
                                                    trust_remote_code=False).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def compare(src: str | Path, out: str | Path, ids=None) -> dict:
    """max abs / relative logit difference and top-1 agreement of `out` against `src`."""
    ids = token_ids() if ids is None else ids
    a, b = logits(src, ids), logits(out, ids)
    diff = float((a - b).abs().max())
    return {"max_abs": diff, "max_rel": diff / float(a.abs().max()),
            "top1": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


# -- GGUF files as llama.cpp writes them (for the import tests and the support matrix) --------------------
GGUF_ARCH_OF = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma", "gemma2": "gemma2",
                "gemma3_text": "gemma3", "phi3": "phi3", "olmo2": "olmo2", "gpt2": "gpt2"}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter: per head, rows (2, d/2) stored as (d/2, 2)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(src, path, arch: str, quant: str) -> None:
    """Write the HF model at `src` as a GGUF file of architecture `arch`, big matrices in `quant` (F16, Q8_0).

    Does what llama.cpp's converter does: its tensor names (the gguf package's name map), the Llama/Mistral
    q/k row permutation, Gemma 2/3 norms stored as 1 + w; a byte-level vocabulary of the model's size.
    """
    import json

    import gguf
    import numpy as np
    from gguf import MODEL_ARCH_NAMES, GGMLQuantizationType, get_tensor_name_map
    from safetensors.numpy import load_file

    cfg = json.loads((src / "config.json").read_text())
    tensors = load_file(str(src / "model.safetensors"))
    layers = cfg["num_hidden_layers"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(layers)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(float(cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 1e4)))
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_vocab_size(cfg["vocab_size"])
    if cfg.get("sliding_window"):
        w.add_sliding_window(cfg["sliding_window"])
    table = byte_to_char()
    w.add_tokenizer_model("gpt2")
    w.add_token_list([table[b] for b in range(cfg["vocab_size"])])
    w.add_token_types([1] * cfg["vocab_size"])
    w.add_token_scores([0.0] * cfg["vocab_size"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_pad_token_id(0)  # Phi-3's config would default to 32000
    key = next(k for k, v in MODEL_ARCH_NAMES.items() if v == arch)
    tmap = get_tensor_name_map(key, layers)
    qtype = {"F16": GGMLQuantizationType.F16, "Q8_0": GGMLQuantizationType.Q8_0}[quant]
    for name, value in tensors.items():
        base, suffix = name.rsplit(".", 1)
        gname = tmap.get_name(base)
        assert gname is not None, name
        value = value.astype(np.float32)
        if arch in ("llama", "mistral") and name.endswith("q_proj.weight"):
            value = _permute(value, heads)
        if arch in ("llama", "mistral") and name.endswith("k_proj.weight"):
            value = _permute(value, kv)
        if arch in ("gemma2", "gemma3") and "norm" in name:
            value = value + 1.0  # llama.cpp stores Gemma's effective norm weight
        if value.ndim == 2:
            data = gguf.quants.quantize(value, qtype)
            w.add_tensor(f"{gname}.{suffix}", data, raw_shape=data.shape, raw_dtype=qtype)
        else:
            w.add_tensor(f"{gname}.{suffix}", value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
