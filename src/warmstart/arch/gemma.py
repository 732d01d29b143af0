"""Gemma (1): RMSNorm as x * (1 + w), embeddings multiplied by sqrt(hidden), GeGLU MLP, tied head."""

from warmstart.arch.llama import FAMILY as _LLAMA
from warmstart.arch.spec import Family

_B = "model.layers.{i}."

FAMILY = Family(
    name="gemma",
    model_types=("gemma",),
    global_roles=dict(_LLAMA.global_roles),
    block_roles={k: v for k, v in _LLAMA.block_roles.items() if not k.endswith(".bias")},
    fields=dict(_LLAMA.fields),
    defaults={"tied": True, "head_dim": 256},
    norm="rms",
    norm_position="pre",
    norm_offset=1.0,  # GemmaRMSNorm: x_hat * (1 + weight)
    embed_scale="sqrt_hidden",  # GemmaTextScaledWordEmbedding: embed * sqrt(hidden_size)
    gated_mlp=True,  # gate_proj through GELU (tanh), times up_proj
    causal=True,
    buffers=_LLAMA.buffers + (r"embed_tokens\.embed_scale$",),
    auto_class="AutoModelForCausalLM",
)
