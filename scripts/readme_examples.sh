#!/usr/bin/env bash
# Reproduce the README's examples: run from a fresh clone's root after `make install`;
# the commands run in ./scratch (ignored by git) against SmolLM2 imported from its GGUF.
set -u
export PYTHONPATH=$PWD/src HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-$PWD/.venv/bin/python}"
W="$PY -m warmstart.cli"
C=$($PY -c "from warmstart.assets import cache_dir; print(cache_dir())")
$W fetch >/dev/null
SMOL=$C/models/smollm2-135m-instruct
GGUF=$(ls $C/gguf/*/*.gguf 2>/dev/null | head -1)
mkdir -p scratch && cd scratch
run() { echo "\$ warmstart $*"; $W "$@" 2>&1; echo "[exit $?]"; echo; }
run inspect $SMOL
run import $GGUF smollm2 --quiet
run convert smollm2 smollm2-sharded --max-shard-size 200MB --quiet
run grow smollm2 exp40 --layers 40 --depth-method expand --quiet
run grow smollm2 big --width-method hyperclone --width-mult 2 --layers 40 --depth-method expand --dry-run
run inspect exp40
run verify smollm2 exp40 --expect-exact
echo "{}" > exp40/my-eval.json
run convert smollm2 exp40 --force
rm exp40/my-eval.json
mkdir -p home && mv exp40 home/ && echo "my notes" > home/notes.txt
run convert home/exp40 home --force
mv home/exp40 . 
run convert smollm2 . --force
$PY - <<'PY'
import torch
from safetensors.torch import load_file, save_file
import shutil, os
src = "smollm2"
for k in (1, 2, 3):
    dst = f"copy{k}"
    shutil.copytree(src, dst, dirs_exist_ok=True)
    os.remove(f"{dst}/warmstart.json")
    t = load_file(f"{src}/model.safetensors")
    g = torch.Generator().manual_seed(k)
    t = {n: (v + 1e-3 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v) for n, v in t.items()}
    save_file(t, f"{dst}/model.safetensors", metadata={"format": "pt"})
PY
run merge copy1 copy2 copy3 merged --method ema --ema-half-life 100 --input-steps 100,200,300 --quiet
run merge copy1 copy1/ twice --quiet
run upcycle smollm2 moe8 --experts 8 --top-k 2 --quiet
run verify smollm2 moe8 --expect-exact
run prune smollm2 small --corpus $C/corpora/shakespeare --batches 4 --layers 6 --hidden 192 --heads 3 --kv-heads 1 --intermediate 512 --quiet
run adapter smollm2 pissa16 --method pissa --rank 16
run shrink smollm2 shallow --layers 15 --dry-run --json
$PY - <<'PY'
import warmstart
r = warmstart.grow("smollm2", "api-grown", width_mult=2, width_method="hyperclone")
print("\n".join(r.lines()))
print(warmstart.inspect("api-grown").summary["provenance"]["command"] if warmstart.inspect("api-grown").summary["provenance"] else None)
PY
