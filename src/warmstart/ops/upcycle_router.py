"""A data-driven router for upcycling: spherical k-means of the MLP inputs on a calibration text.

The router has no bias, so its logit for a token ``x`` is ``w_c . x``. With
rows of equal norm, ``argmax_c w_c . x = argmax_c cos(w_c, x)``: the router
sends each token to its nearest centroid in angle. So the hidden states
entering each layer's MLP are clustered by spherical k-means (cosine), one
cluster per copy of the MLP, and the unit centroids, scaled so that the
logits have unit standard deviation on the calibration tokens, become the
router rows. Tokens then start spread over the experts as the data clusters,
instead of uniformly at random.

The dense model is run once, lazily, when the first router tensor is
written (the plan stays free of tensor reads); it is built from the
checkpoint being upcycled, so a chain (``hyperclone`` then ``upcycle``)
calibrates on the grown dense model. This holds one dense model in memory
for the calibration pass, not the MoE.
"""

from __future__ import annotations

from pathlib import Path

from warmstart.errors import ParamError, WarmstartError

SEQUENCE = 256  # calibration tokens per forward pass
ITERATIONS = 30


class KMeansRouter:
    """Router rows per layer, from spherical k-means of that layer's MLP inputs (computed on first use)."""

    def __init__(self, model, corpus: str, *, copies: int, seed: int, max_tokens: int):
        src = model.checkpoint.path
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 16:
            raise ParamError("calibration_tokens", f"upcycle: calibration tokens must be a whole number >= 16, "
                             f"got {max_tokens!r}", src)
        path = Path(corpus)
        if not path.is_file():
            raise ParamError("corpus", "upcycle: no such calibration text file", path)
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                self.text = f.read(max_tokens * 16)
        except OSError as err:
            raise ParamError("corpus", f"upcycle: cannot read the calibration text: {err.strerror}", path) from None
        if not self.text.strip():
            raise ParamError("corpus", "upcycle: the calibration text is empty", path)
        self.tokenizer_dir = tokenizer_dir(model)
        self.model = model
        self.copies, self.seed, self.max_tokens = copies, seed, max_tokens
        self._rows: dict[int, object] | None = None

    def rows(self, layer: int):
        if self._rows is None:
            self._rows = self._compute()
        return self._rows[layer]

    def _compute(self) -> dict[int, object]:
        import torch

        states = mlp_inputs(self.model, self.tokenizer_dir, self.text, self.max_tokens)
        out = {}
        for layer, x in states.items():
            g = torch.Generator().manual_seed(self.seed * 1000003 + layer)
            centroids = spherical_kmeans(x, self.copies, g)
            logits = x @ centroids.T
            scale = 1.0 / float(logits.std().clamp_min(1e-12))
            out[layer] = centroids * scale
        return out


def tokenizer_dir(model) -> Path:
    """The directory holding the tokenizer: the model's own, or (in a chain) its source's."""
    ckpt = model.checkpoint
    candidates = [Path(ckpt.path)] + [Path(p).parent for p in ckpt.extra_files()]
    for d in candidates:
        if (d / "tokenizer.json").is_file() or (d / "tokenizer.model").is_file() or (d / "vocab.json").is_file():
            return d
    raise WarmstartError("--router kmeans needs the model's tokenizer files (tokenizer.json ...) next to it",
                         ckpt.path)


def mlp_inputs(model, tok_dir: Path, text: str, max_tokens: int) -> dict[int, object]:
    """{layer: the hidden states entering its MLP, [tokens, hidden] fp32} for the calibration text."""
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True, trust_remote_code=False)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0][:max_tokens]
    if ids.numel() < 16:
        raise WarmstartError(f"the calibration text gives only {ids.numel()} tokens; need at least 16")
    dense = build_dense(model)
    captured: dict[int, list] = {i: [] for i in range(model.dims.layers)}
    hooks = []
    for i in range(model.dims.layers):
        module_name = model.layout.name("mlp.up.weight", i).rsplit(".", 2)[0]  # '...layers.i.mlp'
        module = dense.get_submodule(module_name)
        hooks.append(module.register_forward_pre_hook(
            lambda _m, args, _i=i: captured[_i].append(args[0].detach().reshape(-1, args[0].shape[-1]).float())))
    try:
        with torch.no_grad():
            for start in range(0, ids.numel(), SEQUENCE):
                chunk = ids[start:start + SEQUENCE]
                if chunk.numel() > 1:
                    dense(input_ids=chunk[None])
    finally:
        for h in hooks:
            h.remove()
    return {i: torch.cat(v) for i, v in captured.items()}


def build_dense(model):
    """The dense transformers model of `model` (a checkpoint or a planned one), fp32, eval mode."""
    import torch
    import transformers

    cfg = dict(model.config)
    model_type = cfg.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **{k: v for k, v in cfg.items()
                                                              if k not in ("architectures", "transformers_version")})
    dense = getattr(transformers, model.family.auto_class).from_config(config, dtype=torch.float32)
    ckpt = model.checkpoint
    state = {name: ckpt.get(name).float() for name in ckpt.names() if name not in model.layout.buffers}
    missing, unexpected = dense.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (model.dims.tied and k.endswith("lm_head.weight"))]
    if missing or unexpected:
        raise WarmstartError(f"cannot run the dense model for calibration: missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}", ckpt.path)
    if model.dims.tied:
        dense.tie_weights()
    return dense.eval()


def spherical_kmeans(x, k: int, generator):
    """k unit centroids of the rows of `x` by cosine k-means (k-means++ seeding); [k, hidden]."""
    import torch

    u = torch.nn.functional.normalize(x, dim=-1)
    n = u.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centroids = [u[first]]
    for _ in range(1, k):
        sim = (u @ torch.stack(centroids).T).max(dim=1).values
        dist = (1.0 - sim).clamp_min(0) + 1e-12
        centroids.append(u[int(torch.multinomial(dist, 1, generator=generator))])
    c = torch.stack(centroids)
    for _ in range(ITERATIONS):
        assign = (u @ c.T).argmax(dim=1)
        new = torch.zeros_like(c).index_add_(0, assign, u)
        counts = torch.bincount(assign, minlength=k)
        for j in torch.nonzero(counts == 0).flatten().tolist():  # an empty cluster takes the worst-served point
            worst = int((u @ c.T).max(dim=1).values.argmin())
            new[j] = u[worst]
        new = torch.nn.functional.normalize(new, dim=-1)
        if torch.allclose(new, c):
            break
        c = new
    return c
