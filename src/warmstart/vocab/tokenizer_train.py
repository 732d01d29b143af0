"""Train a tokenizer on a corpus, of the same kind as an existing model's.

A new tokenizer for a transplant should differ from the model's only in its
vocabulary: same normalizer, pre-tokenizer, decoder, post-processor and
special tokens, so that the model's special-token roles and chat template
carry over. transformers' ``train_new_from_iterator`` does exactly that with
the ``tokenizers`` trainers; this module feeds it the corpus and writes the
result atomically. Without a model to imitate, it trains a byte-level BPE
(the GPT-2 / Llama-3 kind), which can encode any text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from warmstart.checkpoint.writer import atomic_directory, check_output
from warmstart.errors import WarmstartError
from warmstart.inputs import MAX_VOCAB
from warmstart.vocab.aux_embeddings import check_corpus, text_chunks
from warmstart.vocab.match import load_tokenizer

DEFAULT_SPECIAL = "<|endoftext|>"


def _byte_level_bpe():
    """An untrained byte-level BPE tokenizer, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([DEFAULT_SPECIAL])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=DEFAULT_SPECIAL, eos_token=DEFAULT_SPECIAL,
                                   unk_token=DEFAULT_SPECIAL)


def train_tokenizer(corpus: Sequence[str | Path], out: str | Path, vocab_size: int, *, like: str | Path | None = None,
                    force: bool = False, progress: bool = False):
    """Train on `corpus` and save to `out`; returns the trained transformers tokenizer."""
    if vocab_size < 1:
        raise WarmstartError(f"--vocab-size must be positive, got {vocab_size}")
    if vocab_size > MAX_VOCAB:
        raise WarmstartError(f"--vocab-size {vocab_size} is larger than the limit of {MAX_VOCAB} "
                             f"(the tokenizer library aborts on sizes it cannot allocate)")
    out = check_output(out, force, [*corpus, *([like] if like is not None else [])])
    paths = check_corpus(corpus)
    base = load_tokenizer(like) if like is not None else _byte_level_bpe()
    try:
        trained = base.train_new_from_iterator(text_chunks(paths), vocab_size, show_progress=progress)
    except Exception as err:  # the trainers reject settings with plain exceptions
        raise WarmstartError(f"tokenizer training failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}",
                             like) from err
    with atomic_directory(out, force, [*corpus, *([like] if like is not None else [])]) as tmp:
        trained.save_pretrained(str(tmp))
    return trained
