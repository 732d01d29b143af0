"""Give a model a new tokenizer: plan the output, compute the vocabulary rows, stream the rest.

The transplant is a :class:`~warmstart.plan.Plan` over the model's
checkpoint in which every tensor is a byte copy except the input embedding,
the output head (when it is not tied) and any other tensor indexed by the
vocabulary; those are computed by applying the method's :class:`Init`, each
in its own space. A tied model stays tied (it stores no head to treat).

``replace`` gives the model exactly the new tokenizer. ``extend`` keeps the
old vocabulary (its rows untouched, same ids) and appends the new tokens the
old one lacks; the output tokenizer is the old one with those tokens (and,
for BPE, their merges) appended.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from warmstart.arch import open_model
from warmstart.checkpoint.dtypes import parse_user_dtype
from warmstart.checkpoint.writer import check_output
from warmstart.errors import WarmstartError
from warmstart.plan import Plan, Ref, Step, copy_step, execute
from warmstart.vocab.aux_embeddings import check_corpus
from warmstart.vocab.match import TokenizerError, Vocab, load_tokenizer, match_vocabs, vocab_of
from warmstart.vocab.methods import FILLS, Context, Init, get_method

MODES = ("replace", "extend")
ROLE_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "pad": "pad_token_id"}


@dataclass
class TransplantReport:
    path: Path
    method: str
    mode: str
    old_vocab: int
    new_vocab: int
    rows: int  # rows of the output embedding
    copied: int  # rows copied bit for bit from the old model
    combined: int  # rows made as combinations of old rows
    filled: int  # rows filled (mean / drawn)
    fill: str = "mean"  # how the filled rows were made (a name in FILLS)
    by_role: dict[str, tuple[int, int]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    tensors_computed: list[str] = field(default_factory=list)
    dry_run: bool = False

    def lines(self) -> list[str]:
        return [self.summary()]

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items()}
        d["path"] = str(self.path)
        return d

    def summary(self) -> str:
        t = self.timings
        aux = ""
        if "aux_training_s" in t:
            aux = " (cached)" if t.get("aux_cached") else f" (+ {t['aux_training_s']:.1f}s aux-embedding training)"
        return (f"{'would write' if self.dry_run else 'wrote'} {self.path}: {self.method}/{self.mode}, vocabulary {self.old_vocab} -> {self.rows} rows; "
                f"{self.copied} copied, {self.combined} combined, {self.filled} filled ({self.fill}); "
                f"special roles kept: {', '.join(sorted(self.by_role)) or 'none'}; "
                f"rows computed in {t.get('method_s', 0):.1f}s{aux}, written in {t.get('write_s', 0):.1f}s")


def _old_tokenizer(model_dir: Path):
    if not (model_dir / "tokenizer.json").is_file():
        raise TokenizerError("model directory has no tokenizer.json: the transplant needs the model's own tokenizer",
                             model_dir)
    return load_tokenizer(model_dir)


def donor_vectors(donor_dir: str | Path, new: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """The donor model's input-embedding row for every new token it knows (by canonical form)."""
    donor_dir = Path(donor_dir)
    dm = open_model(donor_dir)
    dv = vocab_of(_old_tokenizer(donor_dir), dm.config)
    embed = dm.layout.name("embed.weight")
    rows = dm.checkpoint.info(embed).shape[0]
    if len(dv) > rows:
        raise WarmstartError(
            f"donor's vocabulary does not match its tokenizer: the tokenizer has {len(dv)} tokens but the embedding "
            f"has {rows} rows", donor_dir)
    if dm.dims.vocab != rows:
        raise WarmstartError(
            f"donor's vocabulary does not match its config: vocab_size is {dm.dims.vocab} but the embedding has "
            f"{rows} rows", donor_dir)
    by_canon: dict[bytes, int] = {}
    for i in range(len(dv) - 1, -1, -1):
        if dv.canon[i] is not None and i not in dv.special:
            by_canon[dv.canon[i]] = i
    ids = np.array([by_canon.get(c, -1) if (c is not None and i not in new.special) else -1
                    for i, c in enumerate(new.canon)], dtype=np.int64)
    known = ids >= 0
    weights = dm.checkpoint.get(embed).float().numpy()
    vectors = np.zeros((len(new), weights.shape[1]), np.float32)
    vectors[known] = weights[ids[known]]
    if not known.any():
        raise WarmstartError("donor's tokenizer shares no token with the new tokenizer", donor_dir)
    return vectors, known


# -- extend: the old tokenizer with new tokens appended -------------------------------------
def extended_tokenizer_json(old: Vocab, new: Vocab, appended: np.ndarray, start: int) -> str:
    """tokenizer.json of the old tokenizer with `appended` new tokens at ids start, start+1, ..."""
    if (old.scheme.kind, old.scheme.model) != (new.scheme.kind, new.scheme.model):
        raise TokenizerError(
            f"--mode extend needs two tokenizers of the same kind; the model's is {old.scheme.model}/{old.scheme.kind}, "
            f"the new one is {new.scheme.model}/{new.scheme.kind} (use --mode replace)")
    doc = copy.deepcopy(old.tok_json)
    model = doc["model"]
    new_added = {a["id"]: a for a in new.tok_json.get("added_tokens", [])}
    vocab_tokens = []
    for k, nid in enumerate(appended):
        tid = start + k
        token = new.tokens[nid]
        if nid in new.added:
            entry = dict(new_added.get(int(nid), {"content": token, "single_word": False, "lstrip": False,
                                                  "rstrip": False, "normalized": False, "special": nid in new.special}))
            entry["id"] = tid
            doc.setdefault("added_tokens", []).append(entry)
        else:
            vocab_tokens.append((token, tid))
    mtype = model.get("type")
    if mtype in ("BPE", "WordPiece"):
        model["vocab"].update({t: i for t, i in vocab_tokens})
    elif mtype == "Unigram":
        scores = {p: s for p, s in new.tok_json["model"]["vocab"]}
        if vocab_tokens and vocab_tokens[0][1] != len(model["vocab"]):
            raise TokenizerError("cannot extend this Unigram tokenizer: its ids are not contiguous")
        model["vocab"].extend([[t, scores.get(t, -20.0)] for t, _ in vocab_tokens])
    else:
        raise TokenizerError(f"--mode extend does not support {mtype} tokenizers (use --mode replace)")
    if mtype == "BPE":
        def as_pair(m):
            return tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)

        old_merges = model.get("merges", [])
        strings = bool(old_merges) and isinstance(old_merges[0], str)
        have = {as_pair(m) for m in old_merges}
        for m in new.tok_json["model"].get("merges", []):
            pair = as_pair(m)
            if pair not in have:
                old_merges.append(" ".join(pair) if strings else list(pair))
                have.add(pair)
        model["merges"] = old_merges
    text = json.dumps(doc, ensure_ascii=False)
    from tokenizers import Tokenizer

    Tokenizer.from_str(text)  # fails loudly here, not when the user loads it
    return text


# -- the transplant ------------------------------------------------------------------------
def _config_for(model, out_rows: int, roles: dict[str, int] | None) -> dict:
    config = model.family.set_dims(model.config, vocab=out_rows)
    if roles is not None:
        for role, key in ROLE_KEYS.items():
            if role in roles:
                config[key] = roles[role]
            elif key in config:
                config[key] = None
    return config


def _generation_config(model_dir: Path, config: dict, roles: dict[str, int] | None) -> dict | None:
    path = model_dir / "generation_config.json"
    gen = None
    if path.is_file():
        try:
            gen = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            gen = None
    if gen is None:
        from warmstart.checkpoint.writer import generation_config_for

        return generation_config_for(config)
    if roles is not None:
        for role, key in ROLE_KEYS.items():
            if key in gen or role in roles:
                gen[key] = roles.get(role)
        if "decoder_start_token_id" in gen:
            gen["decoder_start_token_id"] = roles.get("bos")
    return gen


def _apply(init: Init, real_rows: int):
    def fn(old):
        if old.dim() == 1:
            return init.apply(old.unsqueeze(1), real_rows).squeeze(1)
        return init.apply(old, real_rows)

    return fn


# Bounds of the methods' options: far beyond any useful value, well below what
# would exhaust memory (--aux-dim) or run for days (--aux-epochs).
OPTION_LIMITS = {"k": 4096, "aux_dim": 4096, "aux_epochs": 1000}


def check_options(options: dict[str, Any]) -> None:
    """Refuse option values no method can use, naming the flag, before anything is read."""
    for name, value in options.items():
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if name == "temperature":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise WarmstartError(f"{flag} must be a finite number > 0, got {value!r}")
        elif name in OPTION_LIMITS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise WarmstartError(f"{flag} must be a whole number >= 1, got {value!r}")
            if value > OPTION_LIMITS[name]:
                raise WarmstartError(f"{flag} {value} is larger than the limit of {OPTION_LIMITS[name]}")


def transplant(model_dir: str | Path, out: str | Path, tokenizer: str | Path, method: str = "fvt", *,
               mode: str = "replace", corpus: Sequence[str | Path] = (), donor: str | Path | None = None,
               aligned: tuple[str | Path, str | Path] | None = None, options: dict[str, Any] | None = None,
               seed: int = 0, force: bool = False, dtype: str | None = None, max_shard_bytes: int | None = None,
               progress: bool = False, dry_run: bool = False, fill: str | None = None) -> TransplantReport:
    """Write `model_dir` with the tokenizer `tokenizer` and its embedding rows made by `method` to `out`.

    `fill` (a name in FILLS) replaces the method's own choice for the rows no copy or combination makes."""
    if mode not in MODES:
        raise WarmstartError(f"unknown mode {mode!r}; choose replace or extend")
    check_options(options or {})
    meth = get_method(method)
    if fill is not None:
        FILLS.get(fill)
    out = check_output(out, force, [model_dir, tokenizer, *corpus, donor, *(aligned or ())])
    model_dir = Path(model_dir)
    code = parse_user_dtype(dtype)
    model = open_model(model_dir)
    old_tok = _old_tokenizer(model_dir)
    new_tok = load_tokenizer(tokenizer)
    old = vocab_of(old_tok, model.config)
    new = vocab_of(new_tok)
    if len(new) == 0:
        raise TokenizerError("tokenizer has an empty vocabulary", tokenizer)

    embed = model.layout.name("embed.weight")
    old_rows, hidden = model.checkpoint.info(embed).shape
    if len(old) > old_rows:
        raise TokenizerError(f"the model's tokenizer has {len(old)} tokens but its embedding only {old_rows} rows",
                             model_dir)

    # Inputs the method needs, checked before any work.
    paths = [Path(c) for c in corpus]
    donor_vecs = donor_known = None
    if donor is not None:
        if meth.name != "omp":
            raise WarmstartError(f"--donor is used by the omp method only, not by {meth.name}")
        donor_vecs, donor_known = donor_vectors(donor, new)
    if "corpus" in meth.needs or ("corpus|donor" in meth.needs and donor is None):
        paths = check_corpus(paths)
    elif paths:
        paths = check_corpus(paths)
    if "aligned" in meth.needs:
        if not aligned:
            raise WarmstartError(f"method {meth.name} needs --aligned-embeddings SRC.vec TGT.vec")
        aligned = (Path(aligned[0]), Path(aligned[1]))
        for p in aligned:
            if not p.is_file():
                raise WarmstartError("no such word-vector file", p)

    match = match_vocabs(old, new, old_rows)
    ctx = Context(old, new, match, old_rows, corpus=paths, donor_vectors=donor_vecs, donor_known=donor_known,
                  aligned=aligned, options=dict(options or {}), progress=progress, seed=seed)
    t0 = time.perf_counter()
    init = meth.fn(ctx)
    if fill is not None:
        init.fill = fill
    method_s = time.perf_counter() - t0 - float(ctx.timings.get("aux_training_s", 0.0))

    present = np.array([t is not None for t in new.tokens], dtype=bool)
    if mode == "replace":
        out_init = init
        out_rows = len(new)
        roles: dict[str, int] | None = dict(new.roles)
        save_tokenizer = new_tok.save_pretrained
    else:
        appended = np.flatnonzero((match.source < 0) & present)
        start = old_rows
        out_rows = start + len(appended)
        new_to_out = np.full(len(new), -1, np.int64)
        new_to_out[appended] = start + np.arange(len(appended))
        source = np.full(out_rows, -1, np.int64)
        source[:old_rows] = np.arange(old_rows)
        keep = new_to_out[init.rows] >= 0
        out_init = Init(source, new_to_out[init.rows[keep]], init.cols[keep], init.vals[keep], init.fill,
                        init.seed, init.stats)
        roles = None
        text = extended_tokenizer_json(old, new, appended, start) if len(appended) else None

        def save_tokenizer(directory):
            old_tok.save_pretrained(directory)
            if text is not None:
                Path(directory, "tokenizer.json").write_text(text, encoding="utf-8")

    real_rows = len(old)
    config = _config_for(model, out_rows, roles)
    gen = _generation_config(model_dir, config, roles)

    ckpt = model.checkpoint
    head = None if model.dims.tied and not model.layout.has("head.weight") else model.layout.name("head.weight")
    vocab_tensors = {embed}
    if head is not None:
        vocab_tensors.add(head)
    for name in model.layout.unknown:  # e.g. a masked-LM head's bias: indexed by the vocabulary too
        shape = ckpt.info(name).shape
        if shape and shape[0] == old_rows and len(shape) <= 2:
            vocab_tensors.add(name)
    steps = []
    for name in ckpt.names():
        if name in vocab_tensors:
            info = ckpt.info(name)
            shape = (out_rows,) + tuple(info.shape[1:])
            steps.append(Step(name, shape, info.dtype, (Ref(0, name),), _apply(out_init, real_rows),
                              note=f"vocabulary rows ({meth.name})"))
        else:
            steps.append(copy_step(0, ckpt, name))
    plan = Plan([ckpt], steps)

    def finish(tmp: Path) -> None:
        save_tokenizer(str(tmp))

    t1 = time.perf_counter()
    report = execute(plan, out, config=config, copy_files=[], force=force, dtype=code, max_shard_bytes=max_shard_bytes,
                     progress=progress, desc=f"vocab {meth.name}", finish=finish, generation_config=gen,
                     dry_run=dry_run, record={"command": "vocab", "method": meth.name, "mode": mode, "seed": seed,
                                              "fill": init.fill,
                                              "tokenizer": str(tokenizer), "exact": False})
    write_s = time.perf_counter() - t1
    combined = int(out_init.combined().sum())
    filled = int(out_init.filled().sum())
    return TransplantReport(
        path=report.path, method=meth.name, mode=mode, old_vocab=len(old), new_vocab=len(new), rows=out_rows,
        copied=int((out_init.source >= 0).sum()), combined=combined, filled=filled, fill=out_init.fill,
        by_role=match.by_role,
        stats=init.stats, timings={**ctx.timings, "method_s": method_s, "write_s": write_s},
        tensors_computed=sorted(vocab_tensors), dry_run=dry_run,
    )
