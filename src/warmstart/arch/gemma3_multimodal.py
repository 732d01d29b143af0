"""Gemma 3 multimodal checkpoints (model type ``gemma3``): the text model is a Gemma 3 text model under
``language_model.``, its sizes under ``text_config``; the vision tower and the projector ride along.

Depth operations copy the vision tensors as they are. Width operations treat the projector's output axis as the
text hidden space (the image features it writes are placed among the token embeddings, without the embedding
scale), so the vision side keeps its function and the text side grows as a text model does.
"""

from warmstart.arch.gemma3 import FAMILY as _TEXT
from warmstart.arch.spec import Family

FAMILY = Family(
    name="gemma3",
    model_types=("gemma3",),
    global_roles=dict(_TEXT.global_roles),
    block_roles=dict(_TEXT.block_roles),
    fields={**{k: "text_config." + v for k, v in _TEXT.fields.items() if k != "tied"},
            "tied": "tie_word_embeddings"},
    defaults=dict(_TEXT.defaults),
    norm=_TEXT.norm,
    norm_position=_TEXT.norm_position,
    norm_offset=_TEXT.norm_offset,
    embed_scale=_TEXT.embed_scale,
    qk_norm=_TEXT.qk_norm,
    gated_mlp=True,
    causal=True,
    per_layer_config=("text_config.layer_types",),
    facts=tuple((label, "text_config." + key) for label, key in _TEXT.facts),
    prefixes=("language_model.",),
    outer_roles={"mm_proj.weight": "multi_modal_projector.mm_input_projection_weight"},
    buffers=_TEXT.buffers,
    auto_class="AutoModelForCausalLM",  # Gemma3ForConditionalGeneration; text-only inputs run the text model
)
