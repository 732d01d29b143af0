"""A Gemma-sized vocabulary (262,144 tokens x 640 hidden) through `warmstart vocab` and `warmstart merge`.

Builds a synthetic Gemma 3 text checkpoint with Gemma 3 270M's embedding shape (262144 x 640, bf16, tied; one
block so that the embedding dominates) and two synthetic byte-level BPE tokenizers of 262,144 tokens each that
share about 70% of their tokens, then runs, each as its own process under ``/usr/bin/time -v``:

- ``warmstart vocab MODEL OUT --tokenizer NEW --method fvt`` (replace: 262k rows matched, the rest built
  by FVT from the old tokenizer's pieces),
- ``warmstart merge OUT A B`` (mean of two such checkpoints),

and prints wall time and peak resident memory. No V x V matrix is ever built (at 262k that would be 275 GB in
fp32); the embedding itself is 335 MB in bf16, 671 MB in fp32.

    python benchmarks/large_vocab.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from warmstart.vocab.match import byte_to_char

VOCAB, HIDDEN = 262_144, 640
ROOT = Path(__file__).resolve().parent.parent


def _alphabet() -> list[str]:
    """The byte-level alphabet, in byte order."""
    table = byte_to_char()
    return [table[b] for b in range(256)]


def synthetic_bpe(path: Path, first_pair: int) -> Path:
    """A byte-level BPE of exactly VOCAB tokens: bytes, all byte pairs, then pair+byte triples from `first_pair` on."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    a = _alphabet()
    specials = ["<bos>", "<eos>"]
    tokens = list(specials) + a
    merges = []
    pairs = [x + y for x in a for y in a]
    for p in pairs:
        tokens.append(p)
        merges.append((p[0], p[1]))
    need = VOCAB - len(tokens)
    i = first_pair
    while need > 0:
        p = pairs[i % len(pairs)]
        for c in a:
            if need == 0:
                break
            tokens.append(p + c)
            merges.append((p, c))
            need -= 1
        i += 1
    vocab = {t: k for k, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>")
    fast.save_pretrained(str(path))
    return path


def synthetic_model(path: Path, seed: int, tokenizer: Path) -> Path:
    """A one-block Gemma 3 text checkpoint with a 262144 x 640 bf16 embedding (random), config from transformers."""
    import torch
    import transformers as tf
    from safetensors.torch import save_file

    cfg = tf.Gemma3TextConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2048, num_hidden_layers=1,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=256, bos_token_id=0,
                              eos_token_id=1, pad_token_id=None)
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "model.embed_tokens.weight": (VOCAB, HIDDEN),
        "model.norm.weight": (HIDDEN,),
        "model.layers.0.input_layernorm.weight": (HIDDEN,),
        "model.layers.0.post_attention_layernorm.weight": (HIDDEN,),
        "model.layers.0.pre_feedforward_layernorm.weight": (HIDDEN,),
        "model.layers.0.post_feedforward_layernorm.weight": (HIDDEN,),
        "model.layers.0.self_attn.q_proj.weight": (4 * 256, HIDDEN),
        "model.layers.0.self_attn.k_proj.weight": (256, HIDDEN),
        "model.layers.0.self_attn.v_proj.weight": (256, HIDDEN),
        "model.layers.0.self_attn.o_proj.weight": (HIDDEN, 4 * 256),
        "model.layers.0.self_attn.q_norm.weight": (256,),
        "model.layers.0.self_attn.k_norm.weight": (256,),
        "model.layers.0.mlp.gate_proj.weight": (2048, HIDDEN),
        "model.layers.0.mlp.up_proj.weight": (2048, HIDDEN),
        "model.layers.0.mlp.down_proj.weight": (HIDDEN, 2048),
    }
    tensors = {n: (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16) for n, s in shapes.items()}
    path.mkdir(parents=True)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = cfg.to_dict()
    config["architectures"] = ["Gemma3ForCausalLM"]
    config["torch_dtype"] = "bfloat16"
    (path / "config.json").write_text(json.dumps(config, indent=2))
    for f in tokenizer.iterdir():
        (path / f.name).write_bytes(f.read_bytes())
    return path


def timed(argv: list[str]) -> dict:
    """Run the CLI under /usr/bin/time -v; wall seconds and peak RSS (MB)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "warmstart.cli"] + argv
    run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{run.stderr[-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", run.stderr).group(1)
    parts = [float(x) for x in wall.split(":")]
    seconds = parts[-1] + 60 * parts[-2] + (3600 * parts[-3] if len(parts) > 2 else 0)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1)) / 1024
    return {"seconds": seconds, "peak_rss_mb": rss, "stdout": run.stdout.strip()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", help="keep the files here (default: a temporary folder)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        old_tok = synthetic_bpe(work / "tok-old", first_pair=0)
        new_tok = synthetic_bpe(work / "tok-new", first_pair=300)
        a = synthetic_model(work / "model-a", 0, old_tok)
        b = synthetic_model(work / "model-b", 1, old_tok)
        size = (a / "model.safetensors").stat().st_size / 1e6
        print(f"synthetic gemma3_text: embedding {VOCAB} x {HIDDEN} bf16, checkpoint {size:.0f} MB")
        results = {
            "vocab fvt (replace, 262k -> 262k)": timed(["vocab", str(a), str(work / "vocab-out"), "--tokenizer",
                                                         str(new_tok), "--method", "fvt", "--quiet"]),
            "merge mean (2 x 262k)": timed(["merge", str(a), str(b), str(work / "merge-out"), "--quiet"]),
        }
        for name, r in results.items():
            print(f"{name}: {r['seconds']:.1f} s wall, peak RSS {r['peak_rss_mb']:.0f} MB")
            for line in r["stdout"].splitlines()[:3]:
                print(f"    {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
