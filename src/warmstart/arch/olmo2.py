"""OLMo 2: a norm behind each sublayer (none in front) and query/key RMSNorms over the whole projection."""

from warmstart.arch.llama import FAMILY as _LLAMA
from warmstart.arch.spec import Family

_B = "model.layers.{i}."

FAMILY = Family(
    name="olmo2",
    model_types=("olmo2",),
    global_roles=dict(_LLAMA.global_roles),
    block_roles={
        "attn.q.weight": _B + "self_attn.q_proj.weight",
        "attn.k.weight": _B + "self_attn.k_proj.weight",
        "attn.v.weight": _B + "self_attn.v_proj.weight",
        "attn.o.weight": _B + "self_attn.o_proj.weight",
        "attn.q_norm.weight": _B + "self_attn.q_norm.weight",  # RMSNorm(heads * head_dim)
        "attn.k_norm.weight": _B + "self_attn.k_norm.weight",  # RMSNorm(kv_heads * head_dim)
        "mlp.gate.weight": _B + "mlp.gate_proj.weight",
        "mlp.up.weight": _B + "mlp.up_proj.weight",
        "mlp.down.weight": _B + "mlp.down_proj.weight",
        "norm_attn_out.weight": _B + "post_attention_layernorm.weight",
        "norm_mlp_out.weight": _B + "post_feedforward_layernorm.weight",
    },
    fields=dict(_LLAMA.fields),
    defaults={"tied": False},
    norm="rms",
    norm_position="branch-post",
    qk_norm="projection",
    gated_mlp=True,
    causal=True,
    buffers=_LLAMA.buffers,
    auto_class="AutoModelForCausalLM",
)
