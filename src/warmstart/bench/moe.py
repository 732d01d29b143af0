"""Mixture-of-Experts accounting for the bench: active parameters, and how evenly tokens spread over experts.

A token passes through the router and its top-k experts only, so the 6ND rule
counts those ("active parameters"), not every expert. Works on transformers'
MoE classes, whose experts are fused 3-D parameters (``experts.gate_up_proj``
[E, 2m, h], ``experts.down_proj`` [E, h, m]) or, in older layouts, a list of
expert modules; the shared expert and the router are always active.
"""

from __future__ import annotations

from warmstart.bench.data import windows


def top_k_of(config) -> int | None:
    k = getattr(config, "num_experts_per_tok", None)
    return int(k) if k else None


def inactive_expert_params(model) -> int:
    """Parameters of the experts a token does not use: (E - k) / E of every expert block. 0 for dense models."""
    import torch

    config = getattr(model, "config", None)
    k = top_k_of(config)
    if not k:
        return 0
    inactive = 0
    for name, module in model.named_modules():
        if not name.endswith("experts") or name.endswith("shared_experts"):
            continue
        if isinstance(module, torch.nn.ModuleList):
            e = len(module)
            per = sum(p.numel() for p in module[0].parameters()) if e else 0
            inactive += max(e - k, 0) * per
            continue
        params = [p for p in module.parameters(recurse=False) if p.dim() == 3]
        if not params:
            continue
        e = params[0].shape[0]
        total = sum(p.numel() for p in params)
        inactive += total * max(e - k, 0) // e
    return int(inactive)


def expert_load(model, tokens, offsets, seq_len: int, batch_size: int = 16) -> list[list[float]]:
    """Per layer, the share of top-k assignments each expert receives on the given windows."""
    import torch

    k = top_k_of(model.config)
    counts = None
    was = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(offsets), batch_size):
            x, _ = windows(tokens, offsets[i:i + batch_size], seq_len)
            out = model(input_ids=x, output_router_logits=True)
            per_layer = [r.reshape(-1, r.shape[-1]) for r in out.router_logits]
            if counts is None:
                counts = [torch.zeros(r.shape[-1], dtype=torch.float64) for r in per_layer]
            for c, r in zip(counts, per_layer):
                chosen = r.float().topk(k, dim=-1).indices.reshape(-1)
                c += torch.bincount(chosen, minlength=c.numel()).double()
    model.train(was)
    return [(c / c.sum()).tolist() for c in counts or []]


def balance(shares: list[list[float]]) -> dict[str, float]:
    """Summaries of expert load: normalized entropy (1 = even) and the busiest expert's share x E (1 = even)."""
    import math

    if not shares:
        return {"entropy": float("nan"), "max_over_mean": float("nan")}
    ent, peak = [], []
    for s in shares:
        e = len(s)
        h = -sum(p * math.log(p) for p in s if p > 0)
        ent.append(h / math.log(e) if e > 1 else 1.0)
        peak.append(max(s) * e)
    return {"entropy": sum(ent) / len(ent), "max_over_mean": sum(peak) / len(peak)}
