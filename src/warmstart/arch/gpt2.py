"""GPT-2: learned positions, LayerNorm pre-norm, fused qkv, Conv1D weights stored [in, out]."""

from warmstart.arch.spec import Family

_B = "transformer.h.{i}."

FAMILY = Family(
    name="gpt2",
    model_types=("gpt2",),
    global_roles={
        "embed.weight": "transformer.wte.weight",
        "pos_embed.weight": "transformer.wpe.weight",
        "final_norm.weight": "transformer.ln_f.weight",
        "final_norm.bias": "transformer.ln_f.bias",
        "head.weight": "lm_head.weight",
    },
    block_roles={
        "norm_attn.weight": _B + "ln_1.weight",
        "norm_attn.bias": _B + "ln_1.bias",
        "attn.qkv.weight": _B + "attn.c_attn.weight",
        "attn.qkv.bias": _B + "attn.c_attn.bias",
        "attn.o.weight": _B + "attn.c_proj.weight",
        "attn.o.bias": _B + "attn.c_proj.bias",
        "norm_mlp.weight": _B + "ln_2.weight",
        "norm_mlp.bias": _B + "ln_2.bias",
        "mlp.up.weight": _B + "mlp.c_fc.weight",
        "mlp.up.bias": _B + "mlp.c_fc.bias",
        "mlp.down.weight": _B + "mlp.c_proj.weight",
        "mlp.down.bias": _B + "mlp.c_proj.bias",
    },
    fields={
        "layers": "n_layer",
        "hidden": "n_embd",
        "heads": "n_head",
        "intermediate": "n_inner",
        "vocab": "vocab_size",
        "tied": "tie_word_embeddings",
        "max_positions": "n_positions",
    },
    defaults={"tied": True},
    norm="layer",
    norm_position="pre",
    fused_qkv=True,
    conv1d=True,
    gated_mlp=False,
    causal=True,
    buffers=(r"attn\.bias$", r"attn\.masked_bias$"),
    auto_class="AutoModelForCausalLM",
)
