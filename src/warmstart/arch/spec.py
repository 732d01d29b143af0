"""Architecture specs: which tensor plays which role, and which config fields give the shapes.

Operations speak roles (``embed``, ``attn.q.weight`` of block 3, ``norm_mlp.bias``
...), never raw tensor names, so one operation serves every family. A family is
a declarative :class:`Family` in a file of its own (``llama.py``, ``gpt2.py``,
``bert.py``); adding a family means adding one such file and listing it in
``FAMILY_MODULES`` below.

Role names
----------
Global roles: ``embed.weight``, ``pos_embed.weight``, ``type_embed.weight``,
``embed_norm.{weight,bias}``, ``final_norm.{weight,bias}``, ``head.weight``,
``head.bias``, ``pooler.{weight,bias}``, ``mm_proj.weight`` (a multimodal
projector writing into the text hidden space, stored ``[other, hidden]``).

Block roles (per layer ``i``): ``attn.{q,k,v,o}.{weight,bias}`` or the fused
``attn.qkv.{weight,bias}``, ``mlp.{gate,up,down}.{weight,bias}`` (``up`` is the
input projection and ``down`` the output projection of a plain MLP too),
``norm_attn.{weight,bias}`` and ``norm_mlp.{weight,bias}``: the norm in front
of (pre-norm) or behind (post-norm) the attention and the MLP;
``norm_attn_out.{weight,bias}`` and ``norm_mlp_out.{weight,bias}``: a norm on
the attention's or the MLP's output before it is added to the residual stream
(Gemma 2/3's post-norms, OLMo 2's only norms); ``attn.{q,k}_norm.weight``:
a norm on the queries and keys (per head or over the whole projection, see
``Family.qk_norm``); the fused ``mlp.gate_up.{weight,bias}`` (gate rows, then
up rows).

Family properties that change what an operation must do are declared on the
:class:`Family` (``norm_offset``, ``embed_scale``, ``qk_norm``, ``fused_qkv``,
``fused_gate_up``, ``norm_position``, ``per_layer_config``); operations read
them, never the model type.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any

from warmstart.errors import CheckpointError, UnsupportedArchitecture
from warmstart.inputs import MAX_LAYERS

FAMILY_MODULES = ("llama", "gpt2", "bert", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_multimodal", "phi3", "olmo2")

# Where a family's norms sit, for Family.norm_position.
NORM_POSITIONS = {
    "pre": "pre-norm (a norm in front of each sublayer)",
    "post": "post-norm (a norm on the residual stream after each sublayer's addition)",
    "sandwich": "sandwich norm (a norm in front of and behind each sublayer, inside its branch)",
    "branch-post": "sublayer post-norm (a norm behind each sublayer, inside its branch; none in front)",
}
# Embedding multipliers a family applies inside the model, for Family.embed_scale.
EMBED_SCALES = {"sqrt_hidden": "sqrt(hidden_size)"}


@dataclass(frozen=True)
class Dims:
    """The shapes a config fixes."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    max_positions: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Family:
    """Declarative description of one model family's checkpoint layout."""

    name: str
    model_types: tuple[str, ...]
    global_roles: dict[str, str]  # role -> tensor name
    block_roles: dict[str, str]  # role -> tensor name template with {i}
    fields: dict[str, str]  # dims field -> config key
    defaults: dict[str, Any] = field(default_factory=dict)  # config defaults of the transformers class
    norm: str = "rms"  # "rms" or "layer"
    norm_position: str = "pre"  # a key of NORM_POSITIONS
    norm_offset: float = 0.0  # the norms compute x_hat * (norm_offset + weight) (Gemma: 1)
    embed_scale: str | None = None  # a key of EMBED_SCALES: the model multiplies the embedding output by it
    qk_norm: str | None = None  # "head" (one norm of head_dim shared by the heads) or "projection" (over all heads)
    fused_qkv: bool = False
    fused_gate_up: bool = False  # one gate_up projection: gate rows then up rows
    per_layer_config: tuple[str, ...] = ()  # config entries with one value per layer (follow the layer map)
    facts: tuple[tuple[str, str], ...] = ()  # (label, config key) reported by inspect when set
    conv1d: bool = False  # weights stored [in, out] (GPT-2's Conv1D)
    gated_mlp: bool = True
    causal: bool = True
    prefixes: tuple[str, ...] = ("",)  # accepted prefixes in front of every name
    outer_roles: dict[str, str] = field(default_factory=dict)  # role -> full name, outside the prefix (projectors)
    buffers: tuple[str, ...] = ()  # regexes of non-parameter tensors (position_ids, masks)
    auto_class: str = "AutoModelForCausalLM"

    # -- shapes -------------------------------------------------------------
    def config_value(self, config: dict, key: str) -> Any:
        value = get_config_value(config, self.fields.get(key, key))
        return value if value is not None else self.defaults.get(key)

    def dims(self, config: dict, source: Any = "config.json") -> Dims:
        def need(key: str) -> int:
            value = self.config_value(config, key)
            if value is None:
                raise CheckpointError(f"config has no {self.fields.get(key, key)!r} (needed for {self.name})", source)
            return size(key, value)

        def size(key: str, value: Any) -> int:
            """A positive whole number (a corrupt config must not divide by zero or allocate 10**12 layers)."""
            name = self.fields.get(key, key)
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise CheckpointError(f"config field {name!r} is not an integer: {value!r}", source)
            try:
                number = int(value)
            except (TypeError, ValueError, OverflowError):
                raise CheckpointError(f"config field {name!r} is not an integer: {value!r}", source) from None
            if number != value and not isinstance(value, str):
                raise CheckpointError(f"config field {name!r} is not a whole number: {value!r}", source)
            if number < 1:
                raise CheckpointError(f"config field {name!r} must be positive, got {number}", source)
            return number

        hidden = need("hidden")
        heads = need("heads")
        kv = self.config_value(config, "kv_heads")
        kv_heads = size("kv_heads", kv) if kv is not None else heads
        hd = self.config_value(config, "head_dim")
        head_dim = size("head_dim", hd) if hd is not None else max(1, hidden // heads)
        inter = self.config_value(config, "intermediate")
        intermediate = size("intermediate", inter) if inter is not None else 4 * hidden
        tied = self.config_value(config, "tied")
        tied = bool(tied) if tied is not None else False
        maxpos = self.config_value(config, "max_positions")
        if need("layers") > MAX_LAYERS:
            raise CheckpointError(f"config field {self.fields.get('layers', 'layers')!r} is {need('layers')}, more than "
                                  f"the limit of {MAX_LAYERS} layers", source)
        return Dims(
            layers=need("layers"), hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
            intermediate=intermediate, vocab=need("vocab"), tied=tied,
            max_positions=size("max_positions", maxpos) if maxpos is not None else None,
        )

    def set_dims(self, config: dict, **changes: Any) -> dict:
        """A copy of `config` with some dims changed (e.g. layers=40)."""
        out = dict(config)
        for key, value in changes.items():
            name = self.fields.get(key)
            if name is None:
                raise KeyError(f"{self.name} has no config field for {key}")
            set_config_value(out, name, value)
        return out

    @staticmethod
    def is_norm_weight(role: str) -> bool:
        """Whether `role` is the weight of a norm (the one the norm_offset applies to)."""
        return role.endswith("norm.weight") or (role.startswith("norm_") and role.endswith(".weight"))

    @property
    def normalizes_residual(self) -> bool:
        """Whether a norm sits on the residual stream itself (post-norm), not only inside the branches."""
        return self.norm_position == "post"

    def embed_multiplier(self, hidden: int) -> float:
        """What the model multiplies the embedding output by at this hidden size (1.0 if nothing)."""
        if self.embed_scale is None:
            return 1.0
        if self.embed_scale == "sqrt_hidden":
            return float(hidden) ** 0.5
        raise ValueError(f"{self.name}: unknown embed_scale {self.embed_scale!r}")

    def per_layer_values(self, config: dict, layers: int) -> dict[str, list]:
        """The config's per-layer lists, made explicit.

        A list missing from config.json is what the transformers config class
        derives from it (e.g. Gemma 3's sliding-window pattern, Qwen's
        max_window_layers), so that it can follow a layer map.
        """
        out: dict[str, list] = {}
        missing = []
        for key in self.per_layer_config:
            value = get_config_value(config, key)
            if isinstance(value, list):
                out[key] = list(value)
            else:
                missing.append(key)
        if missing:
            derived = _config_class_values(config, missing)
            for key in missing:
                value = derived.get(key)
                if isinstance(value, list):
                    out[key] = list(value)
        return {k: v for k, v in out.items() if len(v) == layers}

    # -- names --------------------------------------------------------------
    def tensor_name(self, role: str, layer: int | None = None, prefix: str = "") -> str:
        if layer is None:
            return prefix + self.global_roles[role]
        return prefix + self.block_roles[role].format(i=layer)


def _config_class_values(config: dict, keys: list[str]) -> dict:
    """Values that transformers' config class of `config` derives for `keys` (empty when it has none)."""
    try:
        from transformers import AutoConfig

        rest = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
        cfg = AutoConfig.for_model(config["model_type"], **rest)
    except Exception:  # no transformers class for it: nothing derived
        return {}
    out = {}
    for key in keys:
        value = cfg
        for part in key.split("."):
            value = getattr(value, part, None)
        out[key] = value
    return out


def get_config_value(config: dict, key: str) -> Any:
    """`config[key]`, where a dotted key reads a nested section (``text_config.hidden_size``); None if absent."""
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def set_config_value(config: dict, key: str, value: Any) -> None:
    """Set `config[key]` in place; a dotted key writes into a copy of the nested section."""
    parts = key.split(".")
    target = config
    for part in parts[:-1]:
        section = dict(target.get(part) or {})
        target[part] = section
        target = section
    target[parts[-1]] = value


@dataclass(frozen=True)
class TensorRole:
    role: str
    layer: int | None  # None for global roles


class Layout:
    """A checkpoint's tensors classified by role, under its family."""

    def __init__(self, family: Family, names: list[str], source: Any = None):
        self.family = family
        self.roles: dict[str, TensorRole] = {}
        self.unknown: list[str] = []
        self.buffers: list[str] = []
        self.prefix = self._detect_prefix(names)
        p = re.escape(self.prefix)
        globals_ = {p + re.escape(n) + "$": r for r, n in family.global_roles.items()}
        globals_.update({"^" + re.escape(n) + "$": r for r, n in family.outer_roles.items()})
        blocks = []
        for role, template in family.block_roles.items():
            pattern = p + re.escape(template).replace(re.escape("{i}"), r"(\d+)") + "$"
            blocks.append((re.compile(pattern), role))
        buffer_res = [re.compile(b) for b in family.buffers]
        for name in names:
            found = None
            for pattern, role in globals_.items():
                if re.match(pattern, name):
                    found = TensorRole(role, None)
                    break
            if found is None:
                for rx, role in blocks:
                    m = rx.match(name)
                    if m:
                        found = TensorRole(role, int(m.group(1)))
                        break
            if found is not None:
                self.roles[name] = found
            elif any(b.search(name) for b in buffer_res):
                self.buffers.append(name)
            else:
                self.unknown.append(name)
        self.by_role = {(r.role, r.layer): n for n, r in self.roles.items()}
        self.source = source

    def _detect_prefix(self, names: list[str]) -> str:
        embed = self.family.global_roles["embed.weight"]
        for prefix in self.family.prefixes:
            if prefix + embed in names:
                return prefix
        return self.family.prefixes[0]

    def name(self, role: str, layer: int | None = None) -> str | None:
        return self.by_role.get((role, layer))

    def has(self, role: str, layer: int | None = None) -> bool:
        return (role, layer) in self.by_role

    def layer_indices(self) -> list[int]:
        return sorted({r.layer for r in self.roles.values() if r.layer is not None})

    def block_roles_of(self, layer: int) -> dict[str, str]:
        return {r.role: n for n, r in self.roles.items() if r.layer == layer}


_FAMILIES: dict[str, Family] | None = None


def families() -> dict[str, Family]:
    """All families, by name (loaded once)."""
    global _FAMILIES
    if _FAMILIES is None:
        found = {}
        for mod in FAMILY_MODULES:
            family = importlib.import_module(f"warmstart.arch.{mod}").FAMILY
            found[family.name] = family
        _FAMILIES = found
    return _FAMILIES


def supported_model_types() -> list[str]:
    return sorted(t for f in families().values() for t in f.model_types)


def family_for_config(config: dict, source: Any = "config.json") -> Family:
    model_type = config.get("model_type")
    if not model_type:
        raise UnsupportedArchitecture("config.json has no model_type", source)
    for family in families().values():
        if model_type in family.model_types:
            return family
    raise UnsupportedArchitecture(
        f"unsupported architecture {model_type!r}; supported model types: {', '.join(supported_model_types())}",
        source,
    )


@dataclass
class Model:
    """A checkpoint together with its family, dims and role layout."""

    checkpoint: Any
    family: Family
    dims: Dims
    layout: Layout

    @property
    def config(self) -> dict:
        return self.checkpoint.config


def offset_norm_tensors(checkpoint) -> tuple[float, set[str]]:
    """(offset, names of the norm weights it applies to) for a checkpoint of a family with offset norms.

    (0.0, empty) when the family has none or is not known: nothing to adapt.
    """
    try:
        family = family_for_config(checkpoint.config)
    except Exception:
        return 0.0, set()
    if not family.norm_offset:
        return 0.0, set()
    layout = Layout(family, checkpoint.names(), checkpoint.path)
    return family.norm_offset, {n for n, r in layout.roles.items() if family.is_norm_weight(r.role)}


def describe(checkpoint) -> Model:
    """Classify an opened :class:`~warmstart.checkpoint.reader.Checkpoint`."""
    cfg_path = checkpoint.path / "config.json"
    family = family_for_config(checkpoint.config, cfg_path)
    dims = family.dims(checkpoint.config, cfg_path)
    layout = Layout(family, checkpoint.names(), checkpoint.path)
    if not layout.has("embed.weight"):
        raise CheckpointError(
            f"no {family.global_roles['embed.weight']!r} tensor: not a {family.name} checkpoint?", checkpoint.path
        )
    # The head is tied when the checkpoint does not store it.
    tied = dims.tied or (family.causal and not layout.has("head.weight"))
    if tied != dims.tied:
        dims = Dims(**{**dims.as_dict(), "tied": tied})
    found_layers = layout.layer_indices()
    if found_layers and found_layers != list(range(dims.layers)):
        raise CheckpointError(
            f"config says {dims.layers} layers but the weights hold blocks {found_layers[0]}..{found_layers[-1]}"
            f" ({len(found_layers)} blocks)",
            checkpoint.path,
        )
    return Model(checkpoint, family, dims, layout)
