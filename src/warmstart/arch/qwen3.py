"""Qwen 3 (dense): the Llama layout plus an RMSNorm on each query and key head (``q_norm``, ``k_norm``)."""

from warmstart.arch.llama import FAMILY as _LLAMA
from warmstart.arch.spec import Family

_B = "model.layers.{i}."

FAMILY = Family(
    name="qwen3",
    model_types=("qwen3",),
    global_roles=dict(_LLAMA.global_roles),
    block_roles={
        **_LLAMA.block_roles,
        "attn.q_norm.weight": _B + "self_attn.q_norm.weight",
        "attn.k_norm.weight": _B + "self_attn.k_norm.weight",
    },
    fields=dict(_LLAMA.fields),
    defaults={"tied": False, "head_dim": 128},
    norm="rms",
    norm_position="pre",
    qk_norm="head",  # Qwen3RMSNorm(head_dim): one weight shared by every head
    gated_mlp=True,
    causal=True,
    per_layer_config=("layer_types",),  # sliding or full attention, from use_sliding_window/max_window_layers
    facts=(("sliding window", "sliding_window"), ("max window layers", "max_window_layers")),
    buffers=_LLAMA.buffers,
    auto_class="AutoModelForCausalLM",
)
