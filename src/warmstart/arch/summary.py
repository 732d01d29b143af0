"""`warmstart inspect`: what a checkpoint is, read from its config and headers only."""

from __future__ import annotations

from collections import Counter

from warmstart.arch import open_model


def summarize(path) -> dict:
    """Family, shapes, tying, parameter count and dtype of a model directory.

    Reads config.json and the safetensors headers; no tensor data is loaded.
    """
    model = open_model(path)
    ckpt = model.checkpoint
    params = 0
    dtypes: Counter[str] = Counter()
    for name, info in ckpt.tensors.items():
        if name in model.layout.buffers:
            continue
        params += info.numel
        dtypes[info.dtype] += info.numel
    d = model.dims
    return {
        "path": str(ckpt.path),
        "family": model.family.name,
        "model_type": ckpt.config.get("model_type"),
        "layers": d.layers,
        "hidden": d.hidden,
        "heads": d.heads,
        "kv_heads": d.kv_heads,
        "head_dim": d.head_dim,
        "intermediate": d.intermediate,
        "vocab": d.vocab,
        "tied": d.tied,
        "norm": f"{model.family.norm_position}-{'RMSNorm' if model.family.norm == 'rms' else 'LayerNorm'}",
        "parameters": params,
        "dtype": dtypes.most_common(1)[0][0] if dtypes else None,
        "dtypes": dict(dtypes),
        "tensors": len(ckpt.tensors),
        "format": ckpt.format,
        "unknown_tensors": list(model.layout.unknown),
    }


def format_summary(s: dict) -> str:
    def human(n: int) -> str:
        for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if n >= div:
                return f"{n / div:.2f}{unit}"
        return str(n)

    rows = [
        ("model", s["path"]),
        ("family", f"{s['family']} ({s['model_type']})"),
        ("layers", s["layers"]),
        ("hidden", s["hidden"]),
        ("heads", s["heads"]),
        ("kv heads", s["kv_heads"]),
        ("head_dim", s["head_dim"]),
        ("intermediate", s["intermediate"]),
        ("vocab", s["vocab"]),
        ("tied", "yes" if s["tied"] else "no"),
        ("norm", s["norm"]),
        ("parameters", f"{s['parameters']:,} ({human(s['parameters'])})"),
        ("dtype", s["dtype"]),
        ("tensors", f"{s['tensors']} ({s['format']})"),
    ]
    if s["unknown_tensors"]:
        rows.append(("unclassified", ", ".join(s["unknown_tensors"][:5]) + (" ..." if len(s["unknown_tensors"]) > 5 else "")))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
