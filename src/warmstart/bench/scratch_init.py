"""Initializations of the bench's scratch arm: transformers' default, or LSUV on one calibration batch.

LSUV ("All you need is a good init", Mishkin & Matas), as in the paper:
every linear layer first gets a random orthonormal matrix (QR of a Gaussian,
scaled back to the layer's shape; biases zero), then, layer by layer in the
order the forward pass calls them, the layer's weight is divided by the std
of its output on the calibration batch until that variance is within
``tol`` of 1 (at most ``max_iter`` rescalings per layer). Embeddings and norms
keep transformers' init; a language-model head tied to the input embedding
is left out (scaling it would scale the embedding too).

What it costs beyond the default init (the calibration forwards) is
returned, so the bench can count it like a source's cost.
"""

from __future__ import annotations

import time

from warmstart.errors import WarmstartError

SCRATCH_INITS = ("default", "lsuv")


def _linears_in_call_order(model, batch) -> list:
    """The model's nn.Linear modules, in the order one forward pass calls them (each once)."""
    import torch

    order: list = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: order.append(mod) if mod not in order else None)
             for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        with torch.no_grad():
            model(input_ids=batch, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return order


def lsuv_init(model, batch, *, seed: int = 0, tol: float = 0.1, max_iter: int = 10) -> dict:
    """LSUV of every linear layer of `model` on `batch` ([batch, seq] token ids), in place.

    Returns the cost: ``forwards`` (calibration passes), ``tokens`` (tokens they read), ``flops`` (forward
    FLOPs, 2 x parameters x tokens), ``time`` (seconds) and ``layers`` (how many were normalized).
    """
    import torch

    start = time.perf_counter()
    if batch.dim() != 2 or batch.numel() == 0:
        raise WarmstartError(f"lsuv: the calibration batch must be [batch, seq] token ids, got {tuple(batch.shape)}")
    was_training = model.training
    model.eval()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = head is not None and emb is not None and head.weight is emb.weight
    layers = [m for m in _linears_in_call_order(model, batch) if not (tied and m is head)]
    forwards = 1
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for m in layers:  # orthonormal pre-initialization
            w = torch.empty_like(m.weight, dtype=torch.float32)
            torch.nn.init.orthogonal_(w, generator=g)
            m.weight.copy_(w)
            if m.bias is not None:
                m.bias.zero_()
        for m in layers:
            seen = {}

            def grab(mod, args, output):
                seen["var"] = float(output.detach().double().var())
                raise _Stop

            h = m.register_forward_hook(grab)
            try:
                for _ in range(max_iter):
                    try:
                        model(input_ids=batch, use_cache=False)
                    except _Stop:
                        pass
                    forwards += 1
                    var = seen["var"]
                    if not var > 0:
                        raise WarmstartError("lsuv: a layer outputs zeros on the calibration batch; cannot scale it")
                    if abs(var - 1.0) < tol:
                        break
                    m.weight.div_(var ** 0.5)
            finally:
                h.remove()
    model.train(was_training)
    n_params = sum(p.numel() for p in model.parameters())
    tokens = forwards * batch.numel()
    return {"forwards": forwards, "tokens": float(tokens), "flops": 2.0 * n_params * tokens,
            "time": time.perf_counter() - start, "layers": len(layers)}


class _Stop(Exception):
    """Raised once the layer being measured has run: the rest of the forward pass is not needed."""
