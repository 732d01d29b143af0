"""Mixture-of-Experts output formats: which transformers MoE class a dense family upcycles into.

Declarative, like the family specs: for each dense ``model_type``, the MoE
``model_type`` whose class loads the result with ``from_pretrained``, the
tensor names of its router, experts and shared expert, and the config
fields that hold the MoE shape. The names are the per-expert layout that
transformers' own ``save_pretrained`` writes and its checkpoint conversion
fuses on load (``experts.gate_up_proj`` / ``experts.down_proj`` in memory),
so every expert tensor is an output tensor of its own and is written
without the other experts of its layer.

Adding a family's MoE means adding one :class:`MoeFormat` and listing the
dense model types it serves in :data:`MOE_FORMATS`. A dense model type
listed here but not (yet) described by an arch spec is simply unreachable
until its spec exists (qwen3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from warmstart.errors import UnsupportedArchitecture


@dataclass(frozen=True)
class MoeFormat:
    model_type: str
    architecture: str
    router: str  # router weight [experts, hidden], template with {i}
    experts: dict[str, str]  # dense MLP role -> expert tensor template with {i} and {e}
    shared: dict[str, str] = field(default_factory=dict)  # dense MLP role -> shared expert template ({i})
    shared_gate: str | None = None  # sigmoid gate [1, hidden] in front of the shared expert
    # config fields
    experts_field: str = "num_experts"
    top_k_field: str = "num_experts_per_tok"
    expert_size_field: str = "moe_intermediate_size"  # each routed expert's intermediate size
    shared_size_field: str | None = None
    norm_topk_field: str | None = "norm_topk_prob"  # None: the top-k weights are always renormalized
    aux_loss_field: str = "router_aux_loss_coef"
    attention_bias_field: str | None = None  # where the format keeps "q/k/v have biases" (None: it has none)
    extra_config: dict[str, Any] = field(default_factory=dict)
    drop_config: tuple[str, ...] = ()  # dense config keys that mean nothing (or something else) in the MoE class

    def router_name(self, layer: int, prefix: str = "") -> str:
        return prefix + self.router.format(i=layer)

    def expert_name(self, role: str, layer: int, expert: int, prefix: str = "") -> str:
        return prefix + self.experts[role].format(i=layer, e=expert)

    @property
    def has_shared(self) -> bool:
        return bool(self.shared)


_B = "model.layers.{i}."

MIXTRAL = MoeFormat(
    model_type="mixtral",
    architecture="MixtralForCausalLM",
    router=_B + "block_sparse_moe.gate.weight",
    experts={
        "mlp.gate.weight": _B + "block_sparse_moe.experts.{e}.w1.weight",
        "mlp.down.weight": _B + "block_sparse_moe.experts.{e}.w2.weight",
        "mlp.up.weight": _B + "block_sparse_moe.experts.{e}.w3.weight",
    },
    experts_field="num_local_experts",
    expert_size_field="intermediate_size",
    norm_topk_field=None,  # MixtralTopKRouter always divides the top-k weights by their sum
    drop_config=("mlp_bias", "attention_bias", "layer_types", "pretraining_tp"),
)

QWEN2_MOE = MoeFormat(
    model_type="qwen2_moe",
    architecture="Qwen2MoeForCausalLM",
    router=_B + "mlp.gate.weight",
    experts={
        "mlp.gate.weight": _B + "mlp.experts.{e}.gate_proj.weight",
        "mlp.up.weight": _B + "mlp.experts.{e}.up_proj.weight",
        "mlp.down.weight": _B + "mlp.experts.{e}.down_proj.weight",
    },
    shared={
        "mlp.gate.weight": _B + "mlp.shared_expert.gate_proj.weight",
        "mlp.up.weight": _B + "mlp.shared_expert.up_proj.weight",
        "mlp.down.weight": _B + "mlp.shared_expert.down_proj.weight",
    },
    shared_gate=_B + "mlp.shared_expert_gate.weight",
    shared_size_field="shared_expert_intermediate_size",
    attention_bias_field="qkv_bias",
    extra_config={"decoder_sparse_step": 1, "mlp_only_layers": []},
)

QWEN3_MOE = MoeFormat(
    model_type="qwen3_moe",
    architecture="Qwen3MoeForCausalLM",
    router=_B + "mlp.gate.weight",
    experts=dict(QWEN2_MOE.experts),
    attention_bias_field="attention_bias",
    extra_config={"decoder_sparse_step": 1, "mlp_only_layers": []},
)

# dense model_type -> the MoE format it upcycles into
MOE_FORMATS: dict[str, MoeFormat] = {
    "llama": MIXTRAL,
    "mistral": MIXTRAL,
    "qwen2": QWEN2_MOE,
    "qwen3": QWEN3_MOE,
}

MOE_MODEL_TYPES = frozenset(f.model_type for f in MOE_FORMATS.values())


def moe_format_for(model_type: str | None, source: Any = None) -> MoeFormat:
    fmt = MOE_FORMATS.get(model_type or "")
    if fmt is None:
        served = ", ".join(f"{d} -> {f.model_type}" for d, f in MOE_FORMATS.items())
        raise UnsupportedArchitecture(
            f"no Mixture-of-Experts class in transformers to upcycle {model_type!r} into (supported: {served})",
            source)
    return fmt
