"""Phi-3: the Llama layout with one fused qkv_proj (q, k, v rows) and one fused gate_up_proj (gate, up rows)."""

from warmstart.arch.llama import FAMILY as _LLAMA
from warmstart.arch.spec import Family

_B = "model.layers.{i}."

FAMILY = Family(
    name="phi3",
    model_types=("phi3",),
    global_roles=dict(_LLAMA.global_roles),
    block_roles={
        "attn.qkv.weight": _B + "self_attn.qkv_proj.weight",
        "attn.o.weight": _B + "self_attn.o_proj.weight",
        "mlp.gate_up.weight": _B + "mlp.gate_up_proj.weight",
        "mlp.down.weight": _B + "mlp.down_proj.weight",
        "norm_attn.weight": _B + "input_layernorm.weight",
        "norm_mlp.weight": _B + "post_attention_layernorm.weight",
    },
    # No head_dim field: Phi-3's RoPE uses hidden_size // num_attention_heads, so hidden = heads x head_dim.
    fields={k: v for k, v in _LLAMA.fields.items() if k != "head_dim"},
    defaults={"tied": False},
    norm="rms",
    norm_position="pre",
    fused_qkv=True,
    fused_gate_up=True,
    gated_mlp=True,
    causal=True,
    facts=(("sliding window", "sliding_window"),),
    buffers=_LLAMA.buffers,
    auto_class="AutoModelForCausalLM",
)
