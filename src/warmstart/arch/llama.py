"""The Llama family (llama, mistral, qwen2): GQA, RoPE, RMSNorm pre-norm, SwiGLU MLP."""

from warmstart.arch.spec import Family

_B = "model.layers.{i}."

FAMILY = Family(
    name="llama",
    model_types=("llama", "mistral", "qwen2"),
    global_roles={
        "embed.weight": "model.embed_tokens.weight",
        "final_norm.weight": "model.norm.weight",
        "head.weight": "lm_head.weight",
    },
    block_roles={
        "attn.q.weight": _B + "self_attn.q_proj.weight",
        "attn.q.bias": _B + "self_attn.q_proj.bias",  # qwen2
        "attn.k.weight": _B + "self_attn.k_proj.weight",
        "attn.k.bias": _B + "self_attn.k_proj.bias",
        "attn.v.weight": _B + "self_attn.v_proj.weight",
        "attn.v.bias": _B + "self_attn.v_proj.bias",
        "attn.o.weight": _B + "self_attn.o_proj.weight",
        "mlp.gate.weight": _B + "mlp.gate_proj.weight",
        "mlp.up.weight": _B + "mlp.up_proj.weight",
        "mlp.down.weight": _B + "mlp.down_proj.weight",
        "norm_attn.weight": _B + "input_layernorm.weight",
        "norm_mlp.weight": _B + "post_attention_layernorm.weight",
    },
    fields={
        "layers": "num_hidden_layers",
        "hidden": "hidden_size",
        "heads": "num_attention_heads",
        "kv_heads": "num_key_value_heads",
        "head_dim": "head_dim",
        "intermediate": "intermediate_size",
        "vocab": "vocab_size",
        "tied": "tie_word_embeddings",
        "max_positions": "max_position_embeddings",
    },
    defaults={"tied": False},
    norm="rms",
    norm_position="pre",
    gated_mlp=True,
    causal=True,
    per_layer_config=("layer_types",),  # qwen2: sliding or full attention per layer
    buffers=(r"rotary_emb\.inv_freq$",),
    auto_class="AutoModelForCausalLM",
)
