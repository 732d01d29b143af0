"""Embedding-initialization methods for a new vocabulary, each a registered function.

Every method answers the same question, for each token of the new
tokenizer: which old rows make its row? The answer is an :class:`Init`:

- ``source``: the old id whose row is copied bit for bit (-1: none);
- a sparse matrix ``W`` (new id x old id, as row/col/value triplets): the
  row is ``W @ E_old``, a combination of old rows;
- ``fill``: what the remaining rows get (the mean row, a draw from the old
  rows' normal distribution, or i.i.d. noise).

The same ``Init`` is applied to the input embeddings and, for an untied
model, to the output head, each in its own space. Nothing here loops over
pairs of tokens or holds a vocabulary-by-vocabulary matrix: similarities are
computed a chunk of new tokens at a time and reduced to a few weights each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from warmstart.errors import WarmstartError
from warmstart.registry import Registry
from warmstart.registry import summary as first_line
from warmstart.vocab.aux_embeddings import read_vec, token_vectors
from warmstart.vocab.match import Match, Vocab, retokenize

CHUNK_ELEMENTS = 1 << 24  # similarities held at once: 64 MB of float32


# -- the result of a method -------------------------------------------------------
@dataclass
class Init:
    """How every row of the new embedding matrix is made (indexed by new token id)."""

    source: np.ndarray  # int64 [n]: old id copied exactly, -1 for none
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cols: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    vals: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    fill: str = "mean"  # a name in FILLS: what the rows no copy or combination makes get
    seed: int = 0
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.source)

    def combined(self) -> np.ndarray:
        """Bool mask of rows made as combinations of old rows."""
        mask = np.zeros(len(self), dtype=bool)
        mask[self.rows] = True
        return mask & (self.source < 0)

    def filled(self) -> np.ndarray:
        return (self.source < 0) & ~self.combined()

    def apply(self, old, real_rows: int | None = None):
        """The new matrix from an old one (torch tensor [V_old, d]); copied rows keep their bytes.

        `real_rows`: how many leading old rows are real tokens (the rest,
        padding, is left out of the mean and covariance).
        """
        import torch

        n, (v_old, d) = len(self), tuple(old.shape)
        real = old[: real_rows or v_old].float()
        out = torch.zeros(n, d, dtype=torch.float32)
        use = self.source < 0
        keep = use[self.rows]
        if keep.any():
            idx = torch.from_numpy(np.stack([self.rows[keep], self.cols[keep]]))
            w = torch.sparse_coo_tensor(idx, torch.from_numpy(self.vals[keep].astype(np.float32)), (n, v_old),
                                        check_invariants=True)
            out += torch.sparse.mm(w.coalesce(), old.float())
        fill = torch.from_numpy(self.filled())
        count = int(fill.sum())
        if count:
            gen = torch.Generator().manual_seed(self.seed)
            out[fill] = FILLS.get(self.fill).fn(real, count, gen).float()
        out = out.to(old.dtype)
        copied = torch.from_numpy(self.source >= 0)
        if copied.any():
            out[copied] = old[torch.from_numpy(self.source[self.source >= 0])]
        return out


# -- fills: what the rows that no copy or combination makes get (registered; `--fill` overrides a method's) ----------
@dataclass(frozen=True)
class Fill:
    name: str
    fn: Callable[..., Any]  # (old real rows [V, d] float32, count, torch.Generator) -> [count, d]
    summary: str


FILLS: Registry[Fill] = Registry("fill of new vocabulary rows")


def register_fill(name: str, summary: str = ""):
    return FILLS.decorator(name, lambda fn: Fill(name, fn, first_line(fn, summary)))


@register_fill("mean")
def mean_fill(real, count: int, gen):
    """The mean of the old rows: the new token starts as an average token."""
    return real.mean(0).expand(count, -1)


@register_fill("multivariate")
def multivariate_fill(real, count: int, gen):
    """Draws from N(mean, covariance) of the old rows ("Initializing New Word Embeddings for Pretrained Language
    Models", Hewitt): close to the average, yet distinct tokens."""
    import torch

    d = real.shape[1]
    centered = real.double() - real.double().mean(0)
    cov = centered.T @ centered / max(1, real.shape[0] - 1)
    cov += torch.eye(d, dtype=torch.float64) * 1e-8 * cov.diagonal().mean()
    chol = torch.linalg.cholesky(cov)
    z = torch.randn(count, d, generator=gen, dtype=torch.float64)
    return real.double().mean(0) + z @ chol.T


@register_fill("random")
def random_fill(real, count: int, gen):
    """i.i.d. normal with the old rows' overall std, centred on zero: no information from the old rows."""
    import torch

    return torch.randn(count, real.shape[1], generator=gen) * real.std()


@register_fill("zero")
def zero_fill(real, count: int, gen):
    """Zeros: the token contributes nothing until trained (a tied head then gives it logit 0)."""
    import torch

    return torch.zeros(count, real.shape[1])


@dataclass
class Context:
    """Everything a method may use. Methods read what they need and ignore the rest."""

    old: Vocab
    new: Vocab
    match: Match
    old_rows: int
    corpus: list[Path] = field(default_factory=list)
    donor_vectors: np.ndarray | None = None  # [len(new), d_donor]: donor rows of the new tokens
    donor_known: np.ndarray | None = None
    aligned: tuple[Path, Path] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    progress: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    seed: int = 0

    def targets(self) -> np.ndarray:
        """New ids a method must compute: not copied, not special, not a gap."""
        present = np.array([t is not None for t in self.new.tokens], dtype=bool)
        return np.flatnonzero((self.match.source < 0) & ~self.match.special & present)

    def option(self, name: str, default):
        value = self.options.get(name)
        return default if value is None else value


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[[Context], Init]
    needs: tuple[str, ...]  # "corpus", "aligned": inputs the method cannot run without
    summary: str


METHODS: Registry[Method] = Registry("vocabulary method")


def register(name: str, needs: tuple[str, ...] = (), summary: str = ""):
    """Decorator: make `fn(ctx) -> Init` available as method `name`."""
    return METHODS.decorator(name, lambda fn: Method(name, fn, needs, first_line(fn, summary)))


def get_method(name: str) -> Method:
    return METHODS.get(name)


def _bar(ctx: Context, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=not ctx.progress)


# -- numeric building blocks ------------------------------------------------------
def sparsemax(z, k: int = 32):
    """Sparsemax of each row of `z` [B, N], as (indices [B, k'], weights [B, k']).

    Sparsemax (Martins and Astudillo, "From Softmax to Sparsemax") is the
    Euclidean projection onto the probability simplex: weights are >= 0,
    sum to 1, and most are exactly 0. Only the top `k` entries are sorted;
    when a row's support fills all `k`, the chunk is redone with a larger
    `k`, so the result is exact.
    """
    import torch

    b, n = z.shape
    k = min(k, n)
    while True:
        vals, idx = z.topk(k, dim=1)
        vals = vals.double()
        cums = vals.cumsum(1)
        ranks = torch.arange(1, k + 1, dtype=vals.dtype)
        # The support condition holds for a prefix of the sorted row, so counting gives its size.
        support = (1 + ranks * vals > cums).sum(1)
        if k == n or not bool((support == k).any()):
            break
        k = min(n, 4 * k)
    tau = (cums.gather(1, (support - 1).unsqueeze(1)).squeeze(1) - 1) / support.to(vals.dtype)
    weights = (vals - tau.unsqueeze(1)).clamp_min(0)
    return idx, weights.to(z.dtype)


def omp(x, dictionary, k: int):
    """Orthogonal matching pursuit for each row of `x` [B, d] over atoms `dictionary` [N, d].

    Greedy: pick the atom most correlated with the residual, refit all
    picked atoms by least squares, repeat `k` times. Returns (indices [B, k],
    coefficients [B, k]) such that ``x ~ coef @ dictionary[idx]``.
    """
    import torch

    b, _ = x.shape
    n = dictionary.shape[0]
    k = min(k, n)
    unit = dictionary / dictionary.norm(dim=1, keepdim=True).clamp_min(1e-12)
    residual = x.clone()
    idx = torch.zeros(b, k, dtype=torch.long)
    coef = torch.zeros(b, k, dtype=x.dtype)
    arange = torch.arange(b)
    for t in range(k):
        corr = (residual @ unit.T).abs()
        if t:
            corr[arange.unsqueeze(1), idx[:, :t]] = -1.0
        idx[:, t] = corr.argmax(1)
        atoms = dictionary[idx[:, : t + 1]]  # [B, t+1, d]
        sol = torch.linalg.lstsq(atoms.transpose(1, 2), x.unsqueeze(2)).solution.squeeze(2)
        coef[:, : t + 1] = sol
        residual = x - (sol.unsqueeze(1) @ atoms).squeeze(1)
    return idx, coef


def _unit_rows(a):
    return a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _chunks(n_rows: int, n_cols: int):
    step = max(1, CHUNK_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield start, min(n_rows, start + step)


def _triplets(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]):
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    rows, cols, vals = zip(*parts)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals).astype(np.float32)


def fvt_triplets(ctx: Context, ids: np.ndarray):
    """Fast Vocabulary Transfer weights: each token is the mean of its old-tokenizer pieces.

    Returns (rows, cols, vals) and the ids that have no pieces at all.
    """
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    missing = []
    for nid in ids:
        pieces = [p for p in retokenize(ctx.new.canon[nid], ctx.old) if p < ctx.old_rows]
        if not pieces:
            missing.append(nid)
            continue
        w = 1.0 / len(pieces)
        rows.extend([nid] * len(pieces))
        cols.extend(pieces)
        vals.extend([w] * len(pieces))
    return (np.asarray(rows, np.int64), np.asarray(cols, np.int64), np.asarray(vals, np.float32)), np.asarray(missing, np.int64)


def _with_fvt_fallback(ctx: Context, source: np.ndarray, parts: list, done: np.ndarray, stats: dict) -> Init:
    """Finish an Init: targets the method could not place get FVT (then the mean)."""
    targets = ctx.targets()
    rest = targets[~np.isin(targets, done)]
    if len(rest):
        fvt, _ = fvt_triplets(ctx, rest)
        parts.append(fvt)
        stats["fvt_fallback"] = int(len(np.unique(fvt[0])))
    rows, cols, vals = _triplets(parts)
    return Init(source.copy(), rows, cols, vals, "mean", ctx.seed, stats)


# -- the methods -------------------------------------------------------------------
@register("copy")
def copy_method(ctx: Context) -> Init:
    """Tokens in both vocabularies are copied; the others get the mean embedding (baseline)."""
    return Init(ctx.match.source.copy(), fill="mean", seed=ctx.seed)


@register("random")
def random_method(ctx: Context) -> Init:
    """Every row drawn at random with the old rows' scale: nothing is kept (the floor to beat)."""
    return Init(np.full(len(ctx.new), -1, np.int64), fill="random", seed=ctx.seed)


@register("multivariate")
def multivariate_method(ctx: Context) -> Init:
    """Shared tokens copied; the others drawn from N(mean, covariance) of the old rows."""
    return Init(ctx.match.source.copy(), fill="multivariate", seed=ctx.seed)


@register("fvt")
def fvt_method(ctx: Context) -> Init:
    """Fast Vocabulary Transfer: a new token is the mean of its pieces under the old tokenizer."""
    parts, missing = fvt_triplets(ctx, ctx.targets())
    return Init(ctx.match.source.copy(), *parts, fill="mean", seed=ctx.seed, stats={"no_pieces": int(len(missing))})


def _aux(ctx: Context):
    aux = token_vectors(ctx.new, ctx.corpus, dim=int(ctx.option("aux_dim", 100)),
                        epochs=int(ctx.option("aux_epochs", 5)), seed=ctx.seed, progress=ctx.progress)
    ctx.timings["aux_training_s"] = aux.seconds
    ctx.timings["aux_cached"] = aux.cached
    return aux


def _anchors(ctx: Context, known: np.ndarray) -> np.ndarray:
    """New ids of tokens shared with the old vocabulary (not special) that have a vector."""
    return np.flatnonzero((ctx.match.source >= 0) & ~ctx.match.special & known)


@register("focus", needs=("corpus",))
def focus_method(ctx: Context) -> Init:
    """FOCUS: a sparsemax-weighted convex combination of shared tokens, by auxiliary-embedding similarity."""
    import torch

    aux = _aux(ctx)
    anchors = _anchors(ctx, aux.known)
    targets = ctx.targets()
    targets = targets[aux.known[targets]]
    if not len(anchors):
        raise WarmstartError("FOCUS needs tokens shared by both vocabularies; the tokenizers share none")
    temperature = float(ctx.option("temperature", 0.1))
    a = _unit_rows(torch.from_numpy(aux.vectors[anchors]))
    anchor_old = ctx.match.source[anchors]
    parts = []
    bar = _bar(ctx, len(targets), "focus")
    for s, e in _chunks(len(targets), len(anchors)):
        t = _unit_rows(torch.from_numpy(aux.vectors[targets[s:e]]))
        idx, w = sparsemax((t @ a.T) / temperature)
        w = w / w.sum(1, keepdim=True)
        nz = w > 0
        r = torch.arange(s, e).unsqueeze(1).expand_as(w)[nz].numpy()
        parts.append((targets[r], anchor_old[idx[nz].numpy()], w[nz].numpy()))
        bar.update(e - s)
    bar.close()
    return _with_fvt_fallback(ctx, ctx.match.source, parts, targets, {"anchors": int(len(anchors))})


@register("omp", needs=("corpus|donor",))
def omp_method(ctx: Context) -> Init:
    """Orthogonal matching pursuit over shared anchor tokens, in the auxiliary or the donor's space."""
    import torch

    if ctx.donor_vectors is not None:
        vectors, known = ctx.donor_vectors, ctx.donor_known
        space = "donor"
    else:
        aux = _aux(ctx)
        vectors, known = aux.vectors, aux.known
        space = "aux"
    anchors = _anchors(ctx, known)
    targets = ctx.targets()
    targets = targets[known[targets]]
    if not len(anchors):
        raise WarmstartError("OMP needs tokens shared by both vocabularies; the tokenizers share none")
    k = int(ctx.option("k", 8))
    pool = int(ctx.option("omp_pool", 64))
    dictionary = torch.from_numpy(np.ascontiguousarray(vectors[anchors], dtype=np.float32))
    if space == "aux":
        # Static-vector norms say nothing about the model's rows: fit directions only.
        dictionary = _unit_rows(dictionary)
    unit = _unit_rows(dictionary)
    anchor_old = ctx.match.source[anchors]
    parts = []
    done = []
    bar = _bar(ctx, len(targets), "omp")
    for s, e in _chunks(len(targets), len(anchors)):
        x = torch.from_numpy(np.ascontiguousarray(vectors[targets[s:e]], dtype=np.float32))
        if space == "aux":
            x = _unit_rows(x)
        # The pursuit runs over the `pool` anchors most correlated with each token.
        cand = (x @ unit.T).abs().topk(min(pool, len(anchors)), dim=1).indices  # [B, pool]
        local, coef = omp_pooled(x, dictionary, cand, k)
        chosen = cand.gather(1, local)
        rows = np.arange(s, e)
        if space == "aux":
            # Static-vector coefficients do not carry over to the model's rows with their
            # signs and scale (negative ones amplify noise): keep the non-negative part,
            # normalized to sum 1, so the row is a convex combination of the picked anchors.
            coef = coef.clamp_min(0)
            total = coef.sum(1, keepdim=True)
            ok = (total.squeeze(1) > 0).numpy()
            coef = coef / total.clamp_min(1e-12)
            chosen, coef, rows = chosen[ok], coef[ok], rows[ok]
        parts.append((np.repeat(targets[rows], chosen.shape[1]), anchor_old[chosen.reshape(-1).numpy()],
                      coef.reshape(-1).numpy()))
        done.append(targets[rows])
        bar.update(e - s)
    bar.close()
    done_ids = np.concatenate(done) if done else np.zeros(0, np.int64)
    return _with_fvt_fallback(ctx, ctx.match.source, parts, done_ids,
                              {"anchors": int(len(anchors)), "space": space, "k": k})


def omp_pooled(x, dictionary, cand, k: int):
    """OMP of each row of `x` over its own candidate atoms ``dictionary[cand[b]]``; indices are into `cand`."""
    import torch

    b = x.shape[0]
    atoms = dictionary[cand]  # [B, P, d]
    norms = dictionary.norm(dim=1)
    unit = atoms if bool(torch.allclose(norms, torch.ones_like(norms))) else \
        atoms / norms[cand].clamp_min(1e-12).unsqueeze(2)
    k = min(k, cand.shape[1])
    residual = x.clone()
    idx = torch.zeros(b, k, dtype=torch.long)
    coef = torch.zeros(b, k, dtype=x.dtype)
    rows = torch.arange(b).unsqueeze(1)
    for t in range(k):
        corr = (unit @ residual.unsqueeze(2)).squeeze(2).abs()
        if t:
            corr[rows, idx[:, :t]] = -1.0
        idx[:, t] = corr.argmax(1)
        picked = atoms[rows, idx[:, : t + 1]]  # [B, t+1, d]
        # Normal equations (t+1 unknowns each): far cheaper than a QR per token; a tiny
        # ridge keeps duplicate atoms solvable.
        gram = (picked @ picked.transpose(1, 2)).double()
        gram += torch.eye(t + 1, dtype=gram.dtype) * (1e-6 * gram.diagonal(dim1=1, dim2=2).mean(1) + 1e-12).view(-1, 1, 1)
        rhs = (picked @ x.unsqueeze(2)).double()
        sol = torch.linalg.solve(gram, rhs).squeeze(2).to(x.dtype)
        coef[:, : t + 1] = sol
        residual = x - (sol.unsqueeze(1) @ picked).squeeze(1)
    return idx, coef


def subword_vectors(vocab: Vocab, words: list[str], vectors: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """A vector per token: the mean vector of the words whose tokenization contains it.

    Each word is tokenized as it appears after a space. The word-token
    incidence is a sparse matrix, so the means are one sparse product.
    """
    import torch

    r: list[int] = []
    c: list[int] = []
    for wi, word in enumerate(words):
        for tid in set(retokenize((" " + word).encode("utf-8"), vocab)):
            if tid < rows:
                r.append(tid)
                c.append(wi)
    if not r:
        return np.zeros((rows, vectors.shape[1]), np.float32), np.zeros(rows, bool)
    idx = torch.tensor([r, c], dtype=torch.long)
    inc = torch.sparse_coo_tensor(idx, torch.ones(len(r)), (rows, len(words)), check_invariants=True).coalesce()
    sums = torch.sparse.mm(inc, torch.from_numpy(_unit_rows_np(vectors))).numpy()
    counts = np.bincount(np.asarray(r), minlength=rows)
    known = counts > 0
    sums[known] /= counts[known, None]
    return sums.astype(np.float32), known


def _unit_rows_np(a: np.ndarray) -> np.ndarray:
    return (a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def check_aligned(src: Path, tgt: Path, src_words, src_vecs, tgt_words, tgt_vecs) -> dict:
    """Refuse word vectors that cannot be aligned: other dimensions, or unrelated spaces."""
    if src_vecs.shape[1] != tgt_vecs.shape[1]:
        raise WarmstartError(
            f"aligned embeddings differ in dimension: {src_vecs.shape[1]} here, {tgt_vecs.shape[1]} in {tgt}", src)
    index = {w: i for i, w in enumerate(tgt_words)}
    shared = [(i, index[w]) for i, w in enumerate(src_words) if w in index]
    stats = {"shared_words": len(shared)}
    if len(shared) >= 20:
        a = _unit_rows_np(src_vecs[[i for i, _ in shared]])
        b = _unit_rows_np(tgt_vecs[[j for _, j in shared]])
        mean_cos = float((a * b).sum(1).mean())
        stats["shared_mean_cosine"] = mean_cos
        if mean_cos < 0.2:
            raise WarmstartError(
                f"source and target word vectors do not look aligned: the {len(shared)} words they share have mean "
                f"cosine {mean_cos:.2f} (aligned spaces give well above 0.2); are they the same language pair?", tgt)
    return stats


@register("wechsel", needs=("aligned",))
def wechsel_method(ctx: Context) -> Init:
    """WECHSEL: each new token is a softmax-weighted mix of its nearest old tokens in aligned word-vector space."""
    import torch

    src, tgt = ctx.aligned
    limit = int(ctx.option("max_words", 200_000))
    sw, sv = read_vec(src, limit)
    tw, tv = read_vec(tgt, limit)
    stats = check_aligned(src, tgt, sw, sv, tw, tv)
    old_vecs, old_known = subword_vectors(ctx.old, sw, sv, ctx.old_rows)
    new_vecs, new_known = subword_vectors(ctx.new, tw, tv, len(ctx.new))
    old_known &= ~np.isin(np.arange(ctx.old_rows), list(ctx.old.special))
    candidates = np.flatnonzero(old_known)
    if not len(candidates):
        raise WarmstartError("no word of the source vectors tokenizes to a token of the model's tokenizer", src)
    targets = ctx.targets()
    targets = targets[new_known[targets]]
    k = min(int(ctx.option("k", 10)), len(candidates))
    temperature = float(ctx.option("temperature", 0.1))
    c = _unit_rows(torch.from_numpy(old_vecs[candidates]))
    parts = []
    bar = _bar(ctx, len(targets), "wechsel")
    for s, e in _chunks(len(targets), len(candidates)):
        t = _unit_rows(torch.from_numpy(new_vecs[targets[s:e]]))
        sims, idx = (t @ c.T).topk(k, dim=1)
        w = torch.softmax(sims / temperature, dim=1)
        parts.append((np.repeat(targets[s:e], k), candidates[idx.reshape(-1).numpy()], w.reshape(-1).numpy()))
        bar.update(e - s)
    bar.close()
    stats.update(old_tokens_with_vectors=int(len(candidates)), new_tokens_with_vectors=int(new_known.sum()))
    return _with_fvt_fallback(ctx, ctx.match.source, parts, targets, stats)
