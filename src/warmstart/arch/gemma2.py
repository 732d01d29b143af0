"""Gemma 2: Gemma plus a norm behind the attention and the MLP (four per block), soft-capping, local/global layers."""

from warmstart.arch.gemma import FAMILY as _GEMMA
from warmstart.arch.spec import Family

_B = "model.layers.{i}."

FAMILY = Family(
    name="gemma2",
    model_types=("gemma2",),
    global_roles=dict(_GEMMA.global_roles),
    block_roles={
        "attn.q.weight": _B + "self_attn.q_proj.weight",
        "attn.k.weight": _B + "self_attn.k_proj.weight",
        "attn.v.weight": _B + "self_attn.v_proj.weight",
        "attn.o.weight": _B + "self_attn.o_proj.weight",
        "mlp.gate.weight": _B + "mlp.gate_proj.weight",
        "mlp.up.weight": _B + "mlp.up_proj.weight",
        "mlp.down.weight": _B + "mlp.down_proj.weight",
        "norm_attn.weight": _B + "input_layernorm.weight",
        # Gemma 2 names the norm *behind* the attention post_attention_layernorm (Llama's name for the pre-MLP norm).
        "norm_attn_out.weight": _B + "post_attention_layernorm.weight",
        "norm_mlp.weight": _B + "pre_feedforward_layernorm.weight",
        "norm_mlp_out.weight": _B + "post_feedforward_layernorm.weight",
    },
    fields=dict(_GEMMA.fields),
    defaults={"tied": True, "head_dim": 256},
    norm="rms",
    norm_position="sandwich",
    norm_offset=1.0,
    embed_scale="sqrt_hidden",
    gated_mlp=True,
    causal=True,
    per_layer_config=("layer_types",),  # sliding_attention / full_attention, alternating
    facts=(("sliding window", "sliding_window"), ("attention soft-cap", "attn_logit_softcapping"),
           ("final logit soft-cap", "final_logit_softcapping"), ("query scale 1/sqrt of", "query_pre_attn_scalar")),
    buffers=_GEMMA.buffers,
    auto_class="AutoModelForCausalLM",
)
