"""Token strings compared across tokenizers, and the old->new token match.

Two tokenizers write the same piece of text differently: a byte-level BPE
writes " hello" as ``Ġhello`` (its bytes mapped to printable characters), a
SentencePiece model as ``▁hello``, a WordPiece model as ``hello`` at a word
start and ``##llo`` inside a word. Every token is therefore reduced to a
*canonical form*, the UTF-8 bytes of the text it stands for (a word-initial
token keeps its leading space), and tokens match when their canonical forms
are equal.

Special tokens are matched by role (bos, eos, pad, unk, cls, sep, mask), not
by string: ``<s>`` and ``<|endoftext|>`` are the same token when both begin a
sequence. Special tokens without a shared role match by exact content.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from warmstart.errors import WarmstartError
from warmstart.inputs import MAX_VOCAB, require_regular_file

ROLES = ("bos", "eos", "pad", "unk", "cls", "sep", "mask")
SPIECE_SPACE = "\u2581"  # ▁
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class TokenizerError(WarmstartError):
    """A tokenizer that is missing, unreadable or unusable for the transplant."""


# -- loading ------------------------------------------------------------------
def load_tokenizer(path: str | Path):
    """A transformers fast tokenizer from a directory or a tokenizer.json file.

    Remote code is never run; only the Rust-backed (``tokenizers``) format is
    accepted, because the transplant reads its vocabulary and model directly.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    p = Path(path)
    if not p.exists():
        raise TokenizerError("no such tokenizer (expected a directory or a tokenizer.json file)", p)
    if not p.is_dir():
        require_regular_file(p, "tokenizer file", TokenizerError)
    try:
        if p.is_file():
            if (p.parent / "tokenizer_config.json").is_file() and p.name == "tokenizer.json":
                tok = AutoTokenizer.from_pretrained(str(p.parent), trust_remote_code=False, local_files_only=True)
            else:
                json.loads(p.read_text(encoding="utf-8"))  # a clear error for a file that is not JSON
                tok = PreTrainedTokenizerFast(tokenizer_file=str(p))
        else:
            if not (p / "tokenizer.json").is_file():
                raise TokenizerError("no tokenizer.json in this directory (a fast tokenizer is needed)", p)
            tok = AutoTokenizer.from_pretrained(str(p), trust_remote_code=False, local_files_only=True)
    except WarmstartError:
        raise
    except json.JSONDecodeError as err:
        raise TokenizerError(f"tokenizer is not valid JSON: {err.msg} at line {err.lineno}", p) from err
    except Exception as err:  # tokenizers and transformers raise many types for bad files
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise TokenizerError(f"cannot read tokenizer: {first}", p) from err
    if getattr(tok, "backend_tokenizer", None) is None:
        raise TokenizerError("not a fast tokenizer (no tokenizer.json backend)", p)
    check_token_ids(tok, p)
    return tok


def check_token_ids(tokenizer, path=None) -> None:
    """Refuse a token id past the vocabulary limit: every id up to the largest becomes an embedding row."""
    vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True)
    if vocab and max(vocab.values()) >= MAX_VOCAB:
        big = max(vocab, key=vocab.get)
        raise TokenizerError(f"token {big!r} has id {vocab[big]}, beyond the limit of {MAX_VOCAB} "
                             f"(the tokenizer has {len(vocab)} tokens)", path)


# -- canonical forms ------------------------------------------------------------
@lru_cache(maxsize=1)
def byte_to_char() -> dict[int, str]:
    """The byte-level BPE alphabet: each byte as one printable character.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (control
    characters, space, soft hyphen ...) are shifted to U+0100 and up, in byte
    order. This is the table GPT-2 introduced and every byte-level BPE shares.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table = {b: chr(b) for b in keep}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


@lru_cache(maxsize=1)
def char_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_char().items()}


def bytes_to_surface(data: bytes) -> str:
    table = byte_to_char()
    return "".join(table[b] for b in data)


@dataclass(frozen=True)
class Scheme:
    """How a tokenizer marks word boundaries in its token strings."""

    kind: str  # "byte_level", "metaspace", "wordpiece" or "plain"
    prefix: str = "##"  # WordPiece continuation prefix
    replacement: str = SPIECE_SPACE  # SentencePiece space marker
    byte_fallback: bool = False  # <0xNN> tokens stand for raw bytes
    model: str = "BPE"


def _components(node) -> list[dict]:
    """A normalizer / pre-tokenizer / decoder and, for a Sequence, its members."""
    if not isinstance(node, dict):
        return []
    out = [node]
    for key in ("pretokenizers", "normalizers", "decoders"):
        for child in node.get(key) or []:
            out.extend(_components(child))
    return out


def scheme_of(tok_json: dict) -> Scheme:
    """Read the marker scheme from a tokenizer.json document."""
    model = tok_json.get("model") or {}
    mtype = model.get("type", "BPE")
    parts = (_components(tok_json.get("pre_tokenizer")) + _components(tok_json.get("decoder"))
             + _components(tok_json.get("normalizer")))
    types = {p.get("type") for p in parts}
    byte_fallback = bool(model.get("byte_fallback"))
    if "ByteLevel" in types:
        return Scheme("byte_level", model=mtype)
    if mtype == "WordPiece":
        return Scheme("wordpiece", prefix=model.get("continuing_subword_prefix") or "##", model=mtype)
    for p in parts:
        if p.get("type") == "Metaspace":
            return Scheme("metaspace", replacement=p.get("replacement") or SPIECE_SPACE,
                          byte_fallback=byte_fallback, model=mtype)
        if p.get("type") == "Replace" and p.get("content") == SPIECE_SPACE:
            return Scheme("metaspace", byte_fallback=byte_fallback, model=mtype)
    return Scheme("plain", byte_fallback=byte_fallback, model=mtype)


def canonical(token: str, scheme: Scheme) -> bytes:
    """The UTF-8 bytes of the text a (non-added) token stands for."""
    if scheme.kind == "byte_level":
        table = char_to_byte()
        try:
            return bytes(table[c] for c in token)
        except KeyError:
            return token.encode("utf-8")
    if scheme.byte_fallback:
        m = _BYTE_TOKEN.fullmatch(token)
        if m:
            return bytes([int(m.group(1), 16)])
    if scheme.kind == "metaspace":
        return token.replace(scheme.replacement, " ").encode("utf-8")
    if scheme.kind == "wordpiece":
        if token.startswith(scheme.prefix) and len(token) > len(scheme.prefix):
            return token[len(scheme.prefix):].encode("utf-8")
        return (" " + token).encode("utf-8")
    return token.encode("utf-8")


# -- vocabularies -----------------------------------------------------------------
@dataclass
class Vocab:
    """A tokenizer's vocabulary by id, with canonical forms and special-token roles."""

    tokenizer: object
    tokens: list[str | None]  # by id (None: an id no token has)
    canon: list[bytes | None]
    special: set[int]
    added: set[int]
    roles: dict[str, int]
    scheme: Scheme
    tok_json: dict = field(repr=False, default_factory=dict)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def backend(self):
        return self.tokenizer.backend_tokenizer


def vocab_of(tokenizer, config: dict | None = None) -> Vocab:
    """Read a fast tokenizer's vocabulary; `config` supplies role ids the tokenizer lacks."""
    backend = tokenizer.backend_tokenizer
    tok_json = json.loads(backend.to_str())
    scheme = scheme_of(tok_json)
    vocab = backend.get_vocab(with_added_tokens=True)
    size = max(vocab.values()) + 1 if vocab else 0
    check_token_ids(tokenizer, getattr(tokenizer, "name_or_path", None) or None)
    tokens: list[str | None] = [None] * size
    for t, i in vocab.items():
        tokens[i] = t
    added_decoder = backend.get_added_tokens_decoder()
    added = set(added_decoder)
    special = {i for i, a in added_decoder.items() if a.special}
    roles: dict[str, int] = {}
    for role in ROLES:
        tid = getattr(tokenizer, f"{role}_token_id", None)
        if isinstance(tid, int) and 0 <= tid < size:
            roles[role] = tid
    for role in ("bos", "eos", "pad"):
        tid = (config or {}).get(f"{role}_token_id")
        if isinstance(tid, list):
            tid = tid[0] if tid else None
        if role not in roles and isinstance(tid, int) and 0 <= tid < size:
            roles[role] = tid
    special |= set(roles.values())
    canon: list[bytes | None] = []
    for i, t in enumerate(tokens):
        if t is None:
            canon.append(None)
        elif i in added:
            canon.append(t.encode("utf-8"))
        else:
            canon.append(canonical(t, scheme))
    return Vocab(tokenizer, tokens, canon, special, added, roles, scheme, tok_json)


@dataclass
class Match:
    """For every new token id, the old id it is copied from (-1: none)."""

    source: np.ndarray  # int64 [len(new)]
    by_role: dict[str, tuple[int, int]]  # role -> (new id, old id)
    special: np.ndarray  # bool [len(new)]: special tokens (never re-tokenized)

    @property
    def copied(self) -> int:
        return int((self.source >= 0).sum())


def match_vocabs(old: Vocab, new: Vocab, old_rows: int) -> Match:
    """Match new tokens to old ones: specials by role, then by content; others by canonical form.

    One dictionary lookup per new token: no loop over pairs.
    """
    source = np.full(len(new), -1, dtype=np.int64)
    special = np.zeros(len(new), dtype=bool)
    by_role: dict[str, tuple[int, int]] = {}
    for role, nid in new.roles.items():
        oid = old.roles.get(role)
        if oid is not None and oid < old_rows and source[nid] in (-1, oid):
            source[nid] = oid
            by_role[role] = (nid, oid)
    old_special_content = {old.tokens[i]: i for i in sorted(old.special | old.added, reverse=True)
                           if old.tokens[i] is not None and i < old_rows}
    old_by_canon: dict[bytes, int] = {}
    for i in range(min(len(old), old_rows) - 1, -1, -1):  # lowest id wins
        c = old.canon[i]
        if c is not None and i not in old.special:
            old_by_canon[c] = i
    for nid, (t, c) in enumerate(zip(new.tokens, new.canon)):
        if t is None:
            continue
        if nid in new.special:
            special[nid] = True
            if source[nid] < 0:
                source[nid] = old_special_content.get(t, -1)
            continue
        if nid in new.added and t in old_special_content:
            source[nid] = old_special_content[t]
            continue
        source[nid] = old_by_canon.get(c, -1)
    return Match(source, by_role, special)


def retokenize(text: bytes, vocab: Vocab) -> list[int]:
    """Ids of `text` (canonical bytes) under `vocab`'s model, without special tokens.

    The tokenizer's model is applied to the text written in its own surface
    form (byte characters, ``▁`` for spaces, WordPiece prefixes), so partial
    UTF-8 sequences and word-internal pieces keep their meaning. Unknown
    pieces are dropped.
    """
    model = vocab.backend.model
    scheme = vocab.scheme
    unk = vocab.roles.get("unk")
    ids: list[int] = []
    if scheme.kind == "byte_level":
        ids = [t.id for t in model.tokenize(bytes_to_surface(text))]
    elif scheme.kind == "wordpiece":
        s = text.decode("utf-8", errors="ignore")
        normalizer = vocab.backend.normalizer
        if normalizer is not None:
            s = normalizer.normalize_str(s)
        words = s.split(" ")
        for k, word in enumerate(words):
            if not word:
                continue
            pieces = [t.value for t in model.tokenize(word)]
            if k == 0 and not s.startswith(" ") and pieces:
                cont = scheme.prefix + pieces[0]
                if vocab.backend.token_to_id(cont) is not None:
                    pieces[0] = cont
            ids.extend(vocab.backend.token_to_id(p) for p in pieces)
    else:
        # Valid UTF-8 runs go through the model; stray bytes become <0xNN> tokens where they exist.
        s = text.decode("utf-8", errors="surrogateescape")
        chunks = re.split(r"([\udc80-\udcff]+)", s)
        for chunk in chunks:
            if not chunk:
                continue
            if "\udc80" <= chunk[0] <= "\udcff":
                for ch in chunk:
                    tid = vocab.backend.token_to_id(f"<0x{ord(ch) - 0xDC00:02X}>")
                    if tid is not None:
                        ids.append(tid)
                continue
            surface = chunk.replace(" ", scheme.replacement) if scheme.kind == "metaspace" else chunk
            ids.extend(t.id for t in model.tokenize(surface))
    return [i for i in ids if i is not None and i != unk]
