"""Importance of a model's units and blocks, for pruning: what to keep when shrinking.

Activation importance ("Compact Language Models via Pruning and Knowledge
Distillation", Minitron) comes from one pass of the model over N calibration
batches (``torch.inference_mode``, forward hooks; nothing is trained):

- a **query head** scores the L2 norm of its attention output (the head's
  slice of the output projection's input), per block; a **KV group** scores
  the sum of its query heads, so GQA is pruned by whole groups;
- an **MLP neuron** scores the magnitude of its activation (the input of the
  down projection), per block;
- a **residual channel** scores the magnitude of the norm layers' outputs,
  summed over every norm of every block and the final norm, so that every
  block keeps the same residual channels.

Each score is aggregated as Minitron found best: the mean over a sequence's
tokens, then the L2 norm over sequences.

Block importance: ShortGPT's Block Influence ("ShortGPT: Layers in Large
Language Models are More Redundant Than You Expect"), ``1 - cos(x_in, x_out)``
of each block averaged over tokens, from the same pass; optionally the
calibration loss increase when a block is skipped (one more pass per block).

Data-free baselines: :func:`magnitude_importance` scores units by the L2 norm
of the weights that read or write them, streaming the checkpoint tensor by
tensor; Weight Selection (evenly spaced units) is the ``select`` operation.

Modules are found from the arch spec's tensor names (a role's weight
``model.layers.3.mlp.down_proj.weight`` lives in module
``model.layers.3.mlp.down_proj``), so no family is special-cased here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warmstart.errors import WarmstartError

NORM_ROLES = ("norm_attn.weight", "norm_mlp.weight")


@dataclass
class Importance:
    """Scores of every unit (higher = keep) and, when measured, of every block."""

    hidden: Any  # [hidden]
    intermediate: Any  # [layers, intermediate]
    heads: Any  # [layers, heads]
    kv_heads: Any  # [layers, kv_heads]: sum of the group's query heads
    block_influence: Any = None  # [layers]: 1 - cos(block input, block output), mean over tokens
    block_loss: Any = None  # [layers]: calibration loss with the block skipped, minus `loss`
    loss: float | None = None  # calibration loss of the whole model
    tokens: int = 0
    method: str = "activation"
    notes: list[str] = field(default_factory=list)


# -- calibration data -------------------------------------------------------------
def calibration_tokens(model_dir, files: Sequence, *, batches: int, batch_size: int, seq_len: int,
                       op: str = "prune"):
    """``[batches, batch_size, seq_len]`` token ids of the corpus under the model's own tokenizer.

    Files are read in order and joined with the end-of-text token until enough
    tokens are there; a corpus too short for the batches asked is refused.
    """
    import torch

    for name, v in (("batches", batches), ("batch size", batch_size), ("sequence length", seq_len)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise WarmstartError(f"{op}: {name} must be a positive whole number, got {v!r}")
    if not files:
        raise WarmstartError(f"{op}: no calibration corpus given (--corpus FILES)")
    tok = load_tokenizer(model_dir)
    need = batches * batch_size * seq_len
    ids: list[int] = []
    for f in files:
        path = Path(f)
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as err:
            raise WarmstartError(f"cannot read calibration file: {err.strerror or err}", path) from None
        if not text.strip():
            continue
        ids += tok.encode(text, add_special_tokens=False)
        if tok.eos_token_id is not None:
            ids.append(tok.eos_token_id)
        if len(ids) >= need:
            break
    if len(ids) < need:
        where = files[0] if len(files) == 1 else None
        raise WarmstartError(
            f"{op}: the calibration corpus has {len(ids)} tokens, fewer than the {need} asked "
            f"({batches} batches x {batch_size} x {seq_len}); give more text or fewer --batches", where)
    return torch.tensor(ids[:need], dtype=torch.long).reshape(batches, batch_size, seq_len)


def load_tokenizer(model_dir):
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as err:
        raise WarmstartError(f"no tokenizer to read the calibration corpus with: {str(err).splitlines()[0]}",
                             model_dir) from None


def load_causal_lm(model_dir, model, op: str = "prune: activation importance",
                   hint: str = " (use --importance magnitude or select)"):
    """The transformers model of `model` (a warmstart Model), in fp32 and eval mode."""
    import torch
    import transformers

    if not model.family.causal:
        raise WarmstartError(f"{op} needs a causal language model; {model.family.name} is not one{hint}",
                             model_dir)
    cls = getattr(transformers, model.family.auto_class)
    lm = cls.from_pretrained(str(model_dir), dtype=torch.float32)
    lm.eval()
    return lm


def _module(modules: dict, tensor_name: str | None, model):
    if tensor_name is None:
        return None
    name = tensor_name.rsplit(".", 1)[0]
    if name not in modules:
        raise WarmstartError(f"prune: module {name!r} (of tensor {tensor_name!r}) not found in the loaded model",
                             model.checkpoint.path)
    return modules[name]


def _block_modules(lm, model) -> list:
    from warmstart.ops.depth import block_prefix

    modules = dict(lm.named_modules())
    prefix = block_prefix(model)
    out = []
    for i in range(model.dims.layers):
        name = f"{prefix}{i}"
        if name not in modules:
            raise WarmstartError(f"prune: block module {name!r} not found in the loaded model", model.checkpoint.path)
        out.append(modules[name])
    return out


class _SeqAggregate:
    """Per unit: mean over a sequence's tokens, then the L2 norm over sequences (as a running sum of squares)."""

    def __init__(self):
        self.sq = None

    def add(self, per_token):  # [batch, seq, units], non-negative
        m = per_token.double().mean(dim=1)  # [batch, units]
        s = (m * m).sum(dim=0)
        self.sq = s if self.sq is None else self.sq + s

    def result(self):
        return self.sq.sqrt().float()


def _hidden_in(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _hidden_out(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def activation_importance(model_dir, tokens, *, block_loss: bool = False, lm=None) -> Importance:
    """Minitron's activation importance and ShortGPT's Block Influence, in one pass over `tokens`."""
    import torch

    from warmstart.arch import open_model

    model = open_model(model_dir)
    d, layout = model.dims, model.layout
    lm = lm if lm is not None else load_causal_lm(model_dir, model)
    modules = dict(lm.named_modules())
    heads_agg = [_SeqAggregate() for _ in range(d.layers)]
    inter_agg = [_SeqAggregate() for _ in range(d.layers)]
    hidden_agg = _SeqAggregate()
    bi_sum = torch.zeros(d.layers, dtype=torch.float64)
    bi_count = [0]
    handles = []

    def on_o(i):
        def hook(mod, args):
            x = args[0]
            b, s, _ = x.shape
            heads_agg[i].add(x.float().reshape(b, s, d.heads, d.head_dim).norm(dim=-1))
        return hook

    def on_down(i):
        def hook(mod, args):
            inter_agg[i].add(args[0].float().abs())
        return hook

    def on_norm(mod, args, output):
        hidden_agg.add(_hidden_out(output).float().abs())

    def on_block(i):
        def hook(mod, args, kwargs, output):
            x, y = _hidden_in(args, kwargs).float(), _hidden_out(output).float()
            cos = torch.nn.functional.cosine_similarity(x, y, dim=-1)  # [batch, seq]
            bi_sum[i] += (1.0 - cos).double().sum()
            if i == 0:
                bi_count[0] += cos.numel()
        return hook

    try:
        for i, block in enumerate(_block_modules(lm, model)):
            o = _module(modules, layout.name("attn.o.weight", i), model)
            down = _module(modules, layout.name("mlp.down.weight", i), model)
            if o is None or down is None:
                raise WarmstartError(f"prune: block {i} has no attention output or MLP down projection",
                                     model.checkpoint.path)
            handles.append(o.register_forward_pre_hook(on_o(i)))
            handles.append(down.register_forward_pre_hook(on_down(i)))
            for role in NORM_ROLES:
                norm = _module(modules, layout.name(role, i), model)
                if norm is not None:
                    handles.append(norm.register_forward_hook(on_norm))
            handles.append(block.register_forward_hook(on_block(i), with_kwargs=True))
        final = _module(modules, layout.name("final_norm.weight"), model)
        if final is not None:
            handles.append(final.register_forward_hook(on_norm))
        loss = _mean_loss(lm, tokens)
    finally:
        for h in handles:
            h.remove()
    heads = torch.stack([a.result() for a in heads_agg])
    group = d.heads // d.kv_heads
    imp = Importance(
        hidden=hidden_agg.result(),
        intermediate=torch.stack([a.result() for a in inter_agg]),
        heads=heads,
        kv_heads=heads.reshape(d.layers, d.kv_heads, group).sum(dim=-1),
        block_influence=(bi_sum / max(1, bi_count[0])).float(),
        loss=loss,
        tokens=int(tokens.numel()),
        method="activation",
    )
    if block_loss:
        imp.block_loss = block_loss_increase(lm, model, tokens, base=loss)
    return imp


def _mean_loss(lm, tokens) -> float:
    """Mean next-token cross-entropy of `lm` over the calibration batches."""
    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for batch in tokens:
            logits = lm(input_ids=batch, use_cache=False).logits.float()
            ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                   batch[:, 1:].reshape(-1), reduction="sum")
            total += float(ce)
            count += batch[:, 1:].numel()
    return total / count


def block_loss_increase(lm, model, tokens, base: float | None = None):
    """Per block: the calibration loss with that block skipped (its output = its input), minus the full model's."""
    import torch

    if base is None:
        base = _mean_loss(lm, tokens)

    def skip(mod, args, kwargs, output):
        x = _hidden_in(args, kwargs)
        if isinstance(output, tuple):
            return (x,) + tuple(output[1:])
        return x

    out = []
    for block in _block_modules(lm, model):
        h = block.register_forward_hook(skip, with_kwargs=True)
        try:
            out.append(_mean_loss(lm, tokens) - base)
        finally:
            h.remove()
    return torch.tensor(out, dtype=torch.float32)


# -- data-free: weight magnitude ---------------------------------------------------
def magnitude_importance(model) -> Importance:
    """Scores from weight norms, streaming the checkpoint one tensor at a time (no data).

    A residual channel scores the L2 norm of every weight entry on its hidden
    axis (embedding column, norm weights, projection rows/columns); an MLP
    neuron the norm of its gate/up rows and down column; a query head the norm
    of its query rows and output-projection columns.
    """
    import torch

    from warmstart.ops import width as W

    d, layout, ckpt = model.dims, model.layout, model.checkpoint
    hidden = torch.zeros(d.hidden, dtype=torch.float64)
    inter = torch.zeros(d.layers, d.intermediate, dtype=torch.float64)
    heads = torch.zeros(d.layers, d.heads, dtype=torch.float64)
    kv_extra = torch.zeros(d.layers, d.kv_heads, dtype=torch.float64)
    for name, tr in layout.roles.items():
        axes = W.ROLE_AXES.get(tr.role)
        if axes is None:
            continue
        x = ckpt.get(name).double()
        if model.family.conv1d and x.dim() == 2 and tr.role.startswith(("attn.", "mlp.")):
            x = x.t()
        sq = x * x
        for dim, ax in enumerate(axes):
            if ax is None:
                continue
            space = ax[0]
            other = [k for k in range(sq.dim()) if k != dim]
            per = sq.sum(dim=other) if other else sq
            if space == W.HIDDEN:
                hidden += per
            elif space == W.INTER and tr.layer is not None:
                inter[tr.layer] += per
            elif space == W.HEADS and tr.layer is not None:
                heads[tr.layer] += per.reshape(d.heads, -1).sum(-1)
            elif space == W.KV and tr.layer is not None:
                kv_extra[tr.layer] += per.reshape(d.kv_heads, -1).sum(-1)
        del x, sq
    group = d.heads // d.kv_heads
    kv = heads.reshape(d.layers, d.kv_heads, group).sum(-1) + kv_extra
    return Importance(hidden=hidden.sqrt().float(), intermediate=inter.sqrt().float(), heads=heads.sqrt().float(),
                      kv_heads=kv.sqrt().float(), method="magnitude")


# -- choosing what to keep --------------------------------------------------------
def top(scores, k: int) -> list[int]:
    """Indices of the k highest scores, in ascending index order (ties: the lower index)."""
    import torch

    s = torch.as_tensor(scores, dtype=torch.float64)
    order = sorted(range(s.numel()), key=lambda i: (-float(s[i]), i))
    return sorted(order[:k])


def choose_heads(head_scores, kv_scores, kv_new: int, heads_new: int, kv_src: int) -> list[int]:
    """Whole KV groups by their score, then inside each kept group its best query heads."""
    group_src = len(head_scores) // kv_src
    group_new = heads_new // kv_new
    kept = []
    for k in top(kv_scores, kv_new):
        local = top([float(head_scores[k * group_src + r]) for r in range(group_src)], group_new)
        kept += [k * group_src + r for r in local]
    return kept


def choose_layers(scores, n: int) -> list[int]:
    """The n blocks of highest importance, in their original order."""
    return top(scores, n)
