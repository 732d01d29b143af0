"""Calibration batches for the data-driven initializations, tokenized with the model's own tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from warmstart.errors import WarmstartError


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    if not any((model_dir / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise WarmstartError("the model has no tokenizer, which a data-driven method needs to read --corpus", model_dir)
    return AutoTokenizer.from_pretrained(str(model_dir))


def token_stream(tokenizer, files: Sequence[Path], limit: int) -> list[int]:
    """Token ids of the files, documents separated by EOS, stopping once `limit` tokens are read."""
    from transformers.utils import logging

    ids: list[int] = []
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id  # BERT: [SEP]
    # a whole file is longer than the model's positions; it is cut into --seq-len windows afterwards
    logging.get_logger("transformers.tokenization_utils_base").setLevel(logging.ERROR)
    for f in files:
        try:
            text = Path(f).read_text(encoding="utf-8", errors="replace")
        except OSError as err:
            raise WarmstartError(f"cannot read corpus file: {err.strerror}", f) from None
        if not text.strip():
            continue
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        if eos is not None:
            ids.append(eos)
        if len(ids) >= limit:
            break
    return ids


def calibration_batches(model_dir: Path, files: Sequence[Path], batches: int, batch_size: int, seq_len: int):
    """Up to `batches` batches of `batch_size` x `seq_len` token windows, consecutive, from the start of the corpus."""
    import torch

    tok = load_tokenizer(model_dir)
    need = batches * batch_size * seq_len
    ids = token_stream(tok, files, need)
    rows = len(ids) // seq_len
    if rows == 0:
        raise WarmstartError(f"the corpus holds {len(ids)} tokens, fewer than one window of --seq-len {seq_len}",
                             files[0] if files else None)
    data = torch.tensor(ids[: rows * seq_len], dtype=torch.long).view(rows, seq_len)
    out = []
    for start in range(0, min(rows, batches * batch_size), batch_size):
        x = data[start:start + batch_size]
        out.append({"input_ids": x, "attention_mask": torch.ones_like(x)})
    return out
