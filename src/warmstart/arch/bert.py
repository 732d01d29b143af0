"""BERT: post-LayerNorm encoder, learned positions, token types, pooler."""

from warmstart.arch.spec import Family

_B = "encoder.layer.{i}."

FAMILY = Family(
    name="bert",
    model_types=("bert",),
    global_roles={
        "embed.weight": "embeddings.word_embeddings.weight",
        "pos_embed.weight": "embeddings.position_embeddings.weight",
        "type_embed.weight": "embeddings.token_type_embeddings.weight",
        "embed_norm.weight": "embeddings.LayerNorm.weight",
        "embed_norm.bias": "embeddings.LayerNorm.bias",
        "pooler.weight": "pooler.dense.weight",
        "pooler.bias": "pooler.dense.bias",
    },
    block_roles={
        "attn.q.weight": _B + "attention.self.query.weight",
        "attn.q.bias": _B + "attention.self.query.bias",
        "attn.k.weight": _B + "attention.self.key.weight",
        "attn.k.bias": _B + "attention.self.key.bias",
        "attn.v.weight": _B + "attention.self.value.weight",
        "attn.v.bias": _B + "attention.self.value.bias",
        "attn.o.weight": _B + "attention.output.dense.weight",
        "attn.o.bias": _B + "attention.output.dense.bias",
        "norm_attn.weight": _B + "attention.output.LayerNorm.weight",
        "norm_attn.bias": _B + "attention.output.LayerNorm.bias",
        "mlp.up.weight": _B + "intermediate.dense.weight",
        "mlp.up.bias": _B + "intermediate.dense.bias",
        "mlp.down.weight": _B + "output.dense.weight",
        "mlp.down.bias": _B + "output.dense.bias",
        "norm_mlp.weight": _B + "output.LayerNorm.weight",
        "norm_mlp.bias": _B + "output.LayerNorm.bias",
    },
    fields={
        "layers": "num_hidden_layers",
        "hidden": "hidden_size",
        "heads": "num_attention_heads",
        "intermediate": "intermediate_size",
        "vocab": "vocab_size",
        "max_positions": "max_position_embeddings",
    },
    defaults={"tied": False},
    norm="layer",
    norm_position="post",
    gated_mlp=False,
    causal=False,
    # BertModel saves bare names; BertFor* heads save them under "bert.".
    prefixes=("", "bert."),
    buffers=(r"position_ids$",),
    auto_class="AutoModel",
)
