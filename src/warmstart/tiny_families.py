"""Tiny random models of every supported decoder family, built with transformers' own config classes.

Used by the family tests and by ``benchmarks/support_matrix.py``: each model is
small enough to run in milliseconds, yet has every quirk of its family switched
on (random norm weights around the family's offset, a sliding window shorter
than the test text with a mixed local/global layer pattern, soft-caps, fused
projections), so an operation that mishandles a quirk changes the logits.
"""

from __future__ import annotations

from pathlib import Path

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
