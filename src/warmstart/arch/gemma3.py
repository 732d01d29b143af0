"""Gemma 3 (text): Gemma 2's sandwich norms plus per-head query/key norms and a 5:1 local/global layer pattern."""

from warmstart.arch.gemma2 import FAMILY as _GEMMA2
from warmstart.arch.spec import Family

_B = "model.layers.{i}."

FAMILY = Family(
    name="gemma3_text",
    model_types=("gemma3_text",),
    global_roles=dict(_GEMMA2.global_roles),
    block_roles={
        **_GEMMA2.block_roles,
        "attn.q_norm.weight": _B + "self_attn.q_norm.weight",
        "attn.k_norm.weight": _B + "self_attn.k_norm.weight",
    },
    fields=dict(_GEMMA2.fields),
    defaults={"tied": True, "head_dim": 256},
    norm="rms",
    norm_position="sandwich",
    norm_offset=1.0,  # the q/k norms too (Gemma3RMSNorm)
    embed_scale="sqrt_hidden",
    qk_norm="head",
    gated_mlp=True,
    causal=True,
    # layer_types comes from sliding_window_pattern (every 6th layer global) when config.json lacks it.
    per_layer_config=("layer_types",),
    facts=_GEMMA2.facts,
    buffers=_GEMMA2.buffers,
    auto_class="AutoModelForCausalLM",
)
