"""Write an initialized adapter (and, when the method moved weights, the residual base), and export plain LoRA.

Output layout of ``warmstart adapter MODEL OUT``, created atomically (a
temporary sibling renamed into place, so a failure leaves nothing)::

    OUT/adapter/                PEFT adapter: adapter_config.json + adapter_model.safetensors
    OUT/base/                   only for methods that move weights (pissa, olora, nlora, corda, lora-ga, loftq):
                                the residual base, a full HF model directory (config, weights, tokenizer)
    OUT/warmstart_adapter.json  method, rank, alpha, targets, timings, layout

Load with ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(OUT/base or MODEL), OUT/adapter)``
(``AutoModel`` for an encoder such as BERT: the class the family's spec declares);
the adapter's ``base_model_name_or_path`` names OUT/base for moving methods,
so ``AutoPeftModelForCausalLM`` finds the residual, never the source.
The adapter's config says ``init_lora_weights: true`` on purpose: PEFT re-runs
the named initialization when it loads an adapter, and PiSSA/OLoRA would then
subtract the principal part from the residual a second time. The method
actually used is in warmstart_adapter.json.

The residual base goes through the streaming writer: tensors the method did
not touch are copied file to file from the source without being decoded; only
the adapted matrices are computed. The source directory is only read.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from warmstart.adapter import config as cfg
from warmstart.adapter import methods as registry
from warmstart.checkpoint.atomic import atomic_directory, check_output
from warmstart.checkpoint.dtypes import code_to_torch, parse_user_dtype
from warmstart.errors import WarmstartError

META = "warmstart_adapter.json"


@dataclass
class AdapterReport:
    out: Path
    method: str
    targets: int
    trainable: int
    moved_base: bool
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        lines = [f"wrote {self.out}/adapter: {self.method}, {self.targets} matrices, {self.trainable:,} trainable parameters"]
        if self.moved_base:
            lines.append(f"wrote {self.out}/base: the residual base (load the adapter on it, not on the source)")
        lines.append(f"initialization took {self.timings.get('total_s', 0.0):.2f} s")
        lines += self.notes
        return lines

    lines = summary

    def as_dict(self) -> dict:
        return {"out": str(self.out), "method": self.method, "targets": self.targets, "trainable": self.trainable,
                "moved_base": self.moved_base, "timings": self.timings, "notes": self.notes}


def validate(model_dir: Path, spec: cfg.AdapterSpec):
    """Every check that needs no tensor data: (checkpoint, method, PEFT target names, matched matrices)."""
    from warmstart.checkpoint.reader import Checkpoint

    method = registry.get(spec.method)
    if spec.method.startswith("pissa_niter_") and int(registry.NITER.match(spec.method).group(1)) < 1:
        raise WarmstartError("pissa_niter_N needs N >= 1")
    ckpt = Checkpoint(model_dir)
    keys, targets = cfg.resolve_targets(ckpt, spec)
    cfg.check_rank(spec, targets, model_dir)
    why = cfg.is_quantized(ckpt, targets)
    if why is not None:
        if method.full_precision:
            raise WarmstartError(f"method {spec.method} needs full-precision weights, and the model is quantized: {why}",
                                 model_dir)
        raise WarmstartError(f"warmstart adapter reads full-precision checkpoints only: {why}", model_dir)
    if method.needs_loss and model_class(ckpt) != "AutoModelForCausalLM":
        raise WarmstartError(f"method {spec.method} needs the gradients of a language-model loss, and this "
                             f"{ckpt.config.get('model_type')} checkpoint loads as {model_class(ckpt)} (no LM head); "
                             "eva and corda need only forward passes", model_dir)
    if method.needs_corpus:
        if not spec.corpus:
            raise WarmstartError(f"method {spec.method} is data-driven: give --corpus FILES (and --batches N)")
        from warmstart.corpus import corpus_files

        spec.corpus = corpus_files(list(spec.corpus))  # folders read recursively; missing or binary files refused
        positions = ckpt.config.get("max_position_embeddings", ckpt.config.get("n_positions"))
        if isinstance(positions, int) and spec.seq_len > positions:
            raise WarmstartError(f"--seq-len {spec.seq_len} is longer than the model's {positions} positions",
                                 model_dir / "config.json")
    if spec.method == "loftq":
        why = registry.loftq_unavailable()
        if why:
            raise WarmstartError(why)
    return ckpt, method, keys, targets


def model_class(ckpt) -> str:
    """The transformers Auto class that the family's spec declares (AutoModel for an encoder without an LM head);
    a causal LM for a model type no family declares."""
    from warmstart.arch.spec import family_for_config
    from warmstart.errors import UnsupportedArchitecture

    try:
        return family_for_config(ckpt.config).auto_class
    except UnsupportedArchitecture:
        return "AutoModelForCausalLM"


def load_model(ckpt, dtype="auto"):
    """The checkpoint as its family's transformers class; no remote code, nothing fetched, no load report."""
    import transformers

    cls = model_class(ckpt)
    transformers.utils.logging.disable_progress_bar()
    level = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()  # a checkpoint without a head would print a page of MISSING
    try:
        return getattr(transformers, cls).from_pretrained(str(ckpt.path), dtype=dtype, trust_remote_code=False,
                                                          local_files_only=True)
    except (ValueError, OSError, KeyError) as err:
        raise WarmstartError(f"transformers cannot load this as {cls}: {str(err).splitlines()[0]}", ckpt.path) from err
    finally:
        transformers.utils.logging.set_verbosity(level)


def task_type(model) -> str:
    """PEFT's task type for a loaded model: CAUSAL_LM where transformers maps a causal LM to its class."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    causal = {n for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() for n in ((v,) if isinstance(v, str) else v)}
    return "CAUSAL_LM" if type(model).__name__ in causal else "FEATURE_EXTRACTION"


def attach(model, spec: cfg.AdapterSpec, target_modules: list[str], batches=None, where=None):
    """Run `spec.method` on a loaded transformers model (modified in place); returns (PEFT model, context).

    The in-memory entry point (benchmarks use it); :func:`initialize` adds
    the checks, the loading and the writing around it.
    """
    method = registry.get(spec.method)
    ctx = registry.Context(model, spec, list(target_modules), batches, task_type=task_type(model))
    try:
        return method.fn(ctx), ctx
    except WarmstartError:
        raise
    except Exception as err:  # noqa: BLE001 - PEFT's own refusals come as many types; one line for each
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise WarmstartError(f"PEFT could not initialize {spec.method}: {first}", where) from err


def initialize(model_dir, out, spec: cfg.AdapterSpec, *, force: bool = False, dtype: str | None = None) -> AdapterReport:
    """Initialize a LoRA adapter on `model_dir` with `spec.method`; write OUT/adapter (and OUT/base).

    `dtype` (fp32, bf16, fp16): load and compute in it, and write the residual base in it. Default: the
    checkpoint's, except that a method moving weights out of a bf16/fp16 checkpoint computes and writes the
    residual base in fp32, since a half-precision residual rounds away the exactness (--dtype bf16 to keep it)."""
    from warmstart.adapter.data import calibration_batches, load_tokenizer

    model_dir, out = Path(model_dir), Path(out)
    ckpt, method, keys, targets = validate(model_dir, spec)
    check_output(out, force, [model_dir])
    if method.needs_corpus:
        load_tokenizer(model_dir)  # refuse a model without a tokenizer before loading the weights
    t_start = time.perf_counter()
    code = parse_user_dtype(dtype)
    half = next((t.dtype for t in targets if t.dtype in ("BF16", "F16")), None)
    widened = code is None and method.moves_base and method.exact and half is not None
    if widened:  # a half-precision residual would round away the exactness: fp32 unless asked otherwise
        code = "F32"
    model = load_model(ckpt, dtype="auto" if code is None else code_to_torch(code))
    model.eval()
    batches = None
    if method.needs_corpus:
        batches = calibration_batches(model_dir, [Path(f) for f in spec.corpus], spec.batches, spec.batch_size,
                                      spec.seq_len)
    peft_model, ctx = attach(model, spec, keys, batches, where=model_dir)
    ctx.timings["total_s"] = time.perf_counter() - t_start
    error = check_factors(ckpt, peft_model, spec, method)
    if error is not None:
        ctx.notes.append(f"residual base + adapter = source: largest relative difference {error:.2e}")
    if widened:
        ctx.notes.append(f"the residual base is written in fp32 so that residual + adapter is the {half.lower()} "
                         f"source exactly; --dtype {half.lower()} writes it in {half.lower()}, rounded")
    trainable = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    report = AdapterReport(out, spec.method, len(targets), trainable, method.moves_base, ctx.timings, ctx.notes)
    calibration = ({"files": len(spec.corpus), "batches": len(batches), "batch_size": spec.batch_size,
                    "seq_len": spec.seq_len} if batches else None)
    meta = metadata(ckpt, model_dir, spec, method, keys, targets, calibration, ctx.timings, error)
    with atomic_directory(out, force, [model_dir]) as tmp:
        save_adapter(peft_model, tmp / "adapter")
        if method.moves_base:
            # AutoPeftModel loads the base named here: it must be the residual, never the source
            set_base_path(tmp / "adapter", str(out.resolve() / "base"))
        if method.moves_base:
            write_residual_base(ckpt, peft_model, tmp / "base", dtype=code)
        with open(tmp / META, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")
    return report


def metadata(ckpt, model_dir: Path, spec: cfg.AdapterSpec, method, keys: list[str], targets, calibration,
             timings: dict, error: float | None) -> dict:
    """The content of warmstart_adapter.json: what was initialized, how, from what, and how long it took."""
    return {
        "method": spec.method,
        "implemented_by": method.by,
        "rank": spec.rank,
        "lora_alpha": spec.lora_alpha,
        "target_modules": keys,
        "adapted_tensors": [t.tensor for t in targets],
        "moves_base": method.moves_base,
        "exact_at_init": method.exact,
        "layout": {"adapter": "adapter", "base": "base" if method.moves_base else None},
        "source": {"model_type": ckpt.config.get("model_type"), "name": Path(model_dir).name},
        "seed": spec.seed,
        "options": {k: v for k, v in spec.options.items() if v is not None},
        "calibration": calibration,
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "reconstruction_max_rel_error": error,
    }


def check_factors(ckpt, peft_model, spec: cfg.AdapterSpec, method) -> float | None:
    """Refuse factors of the wrong shape; for moving methods, the largest relative |W_res + s B A - W| (one tensor at a time)."""
    import torch

    worst = 0.0
    limit = 1e-3
    for name, layer in registry.lora_layers(peft_model):
        base = layer.get_base_layer()
        fan_in_fan_out = getattr(layer, "fan_in_fan_out", False)
        w_shape = tuple(base.weight.shape[::-1] if fan_in_fan_out else base.weight.shape)  # (out, in)
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        if tuple(b.shape) != (w_shape[0], a.shape[0]) or tuple(a.shape) != (b.shape[1], w_shape[1]):
            how = "a transposed (Conv1D) layer" if fan_in_fan_out else "this layer"
            raise WarmstartError(f"{spec.method} produced factors of shape {tuple(b.shape)} x {tuple(a.shape)} for "
                                 f"{name} {list(w_shape)}: PEFT does not support {how} for this method", ckpt.path)
        if not method.moves_base or not method.exact:
            continue
        delta = layer.scaling["default"] * (b.detach().double() @ a.detach().double())
        if fan_in_fan_out:
            delta = delta.T
        # the residual is rounded to the checkpoint's dtype: bf16/fp16 bases allow a few of their epsilons
        limit = max(limit, 4 * torch.finfo(base.weight.dtype).eps)
        source = ckpt.get(tensor_name(ckpt, peft_model, name)).double()
        err = float((base.weight.detach().double() + delta - source).abs().max() / source.abs().max().clamp_min(1e-30))
        worst = max(worst, err)
    if not method.moves_base or not method.exact:
        return None
    if worst > limit:
        raise WarmstartError(f"{spec.method}: residual base + adapter differs from the source by {worst:.2e} "
                             "(relative); refusing to write it", ckpt.path)
    return worst


def save_adapter(peft_model, path: Path) -> None:
    """PEFT's save_pretrained, with a config that makes loading add the stored factors and nothing else."""
    reset_init_config(peft_model)
    peft_model.save_pretrained(str(path))


def reset_init_config(peft_model) -> None:
    """Say ``init_lora_weights: true`` in the adapter's config: PEFT re-runs the named initialization when it
    loads an adapter, which for PiSSA/OLoRA would subtract the principal part from the residual a second time."""
    config = peft_model.peft_config["default"]
    config.init_lora_weights = True
    for sub in ("eva_config", "corda_config", "lora_ga_config", "loftq_config"):
        if hasattr(config, sub):
            setattr(config, sub, None if sub != "loftq_config" else {})


def set_base_path(adapter_dir: Path, base: str) -> None:
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def tensor_name(ckpt, peft_model, module: str) -> str:
    """The checkpoint's name for an adapted module's weight.

    The loaded model's names can differ from the checkpoint's: transformers
    renames some families' keys on load (Gemma 3's ``language_model.model.``
    becomes ``model.language_model.``), and a model class may add or drop the
    base-model prefix (BertModel loads a checkpoint saved as ``bert.encoder...``).
    The residual must keep the checkpoint's names, so the renaming that
    ``save_pretrained`` would apply is asked of transformers first.
    """
    name = f"{module}.weight"
    if name in ckpt:
        return name
    model = peft_model.get_base_model()
    try:
        import torch
        from transformers.core_model_loading import revert_weight_conversion

        saved = list(revert_weight_conversion(model, {name: torch.empty(0)}))
    except Exception:  # noqa: BLE001 - an internal API of transformers; the prefix rule below still applies
        saved = []
    prefix = getattr(model, "base_model_prefix", "") or ""
    candidates = saved[:1]
    if prefix:
        candidates += [name[len(prefix) + 1:]] if name.startswith(prefix + ".") else [f"{prefix}.{name}"]
    return next((c for c in candidates if c in ckpt), name)


def residual_weights(ckpt, peft_model) -> dict[str, object]:
    """Checkpoint tensor name -> the base weight as the adapter sees it (residual for moving methods)."""
    return {tensor_name(ckpt, peft_model, name): layer.get_base_layer().weight
            for name, layer in registry.lora_layers(peft_model)}


def write_residual_base(ckpt, peft_model, path: Path, dtype: str | None = None) -> None:
    """The source checkpoint with the adapted matrices replaced by their residuals, streamed tensor by tensor.

    A plan like every other output: untouched tensors are copied file to file, the residuals come from the PEFT
    model; `dtype` (a safetensors code) casts every floating tensor through the plan's one cast path."""
    from warmstart.plan import Plan, Step, copy_step, execute

    residual = residual_weights(ckpt, peft_model)
    missing = [n for n in residual if n not in ckpt]
    if missing:
        raise RuntimeError(f"adapted modules without a checkpoint tensor: {missing[:3]}")
    plan = Plan([ckpt])
    for name in ckpt.names():
        if name in residual:
            info = ckpt.info(name)
            plan.add(Step(name, tuple(info.shape), info.dtype, (), _Residual(residual[name]),
                          note="residual of the adapted matrix"))
        else:
            plan.add(copy_step(0, ckpt, name))
    execute(plan, path, config=dict(ckpt.config), copy_files=ckpt.extra_files(), dtype=dtype)


class _Residual:
    """A plan function with no inputs: the residual weight as the PEFT model holds it."""

    def __init__(self, weight):
        self.weight = weight

    def __call__(self):
        return self.weight.detach()


# -- export ------------------------------------------------------------------------
def read_meta(init_dir: Path) -> dict:
    from warmstart.checkpoint.reader import load_json

    meta = load_json(init_dir / META, f"{META} (the output of `warmstart adapter`)")
    if not isinstance(meta, dict) or "method" not in meta:
        raise WarmstartError(f"corrupt {META}", init_dir / META)
    return meta


def export_lora(model_dir, init_dir, out, *, trained=None, force: bool = False) -> list[str]:
    """A plain LoRA adapter against the untouched `model_dir`, equal to `trained` on the residual base.

    With W = W_res + s B0 A0 at initialization and W_res + s B A after
    training, the update is s (B A - B0 A0) = s' [B | -B0] [A ; A0] with
    rank 2r and alpha doubled (s' = s): PEFT's documented conversion
    (``save_pretrained(path_initial_model_for_weight_conversion=...)``), run
    on a copy of the initial adapter because PEFT rewrites its config.
    `trained` defaults to the initial adapter itself (a zero update).
    """
    import transformers
    from peft import PeftModel

    from warmstart.checkpoint.reader import Checkpoint, load_json

    model_dir, init_dir, out = Path(model_dir), Path(init_dir), Path(out)
    meta = read_meta(init_dir)
    initial = init_dir / "adapter"
    trained = Path(trained) if trained is not None else initial
    load_json(initial / "adapter_config.json", "adapter config of the initial adapter")
    trained_cfg = load_json(trained / "adapter_config.json", "adapter config of the trained adapter")
    source = Checkpoint(model_dir)
    for name in meta.get("adapted_tensors", []):
        if name not in source:
            raise WarmstartError(f"not the model the adapter was made from: it has no tensor {name!r}", model_dir)
    if trained_cfg.get("peft_type") not in (None, "LORA"):
        raise WarmstartError(f"not a LoRA adapter (peft_type {trained_cfg.get('peft_type')})", trained)
    check_output(out, force, [model_dir, init_dir, trained])
    transformers.utils.logging.disable_progress_bar()
    if not meta.get("moves_base"):
        # Nothing was moved: the trained adapter already applies to the untouched base.
        with atomic_directory(out, force, [model_dir, init_dir, trained]) as tmp:
            for f in trained.iterdir():
                if f.is_file():
                    shutil.copyfile(f, tmp / f.name)
        return [f"wrote {out}: {meta['method']} moves no weights, so the adapter is already plain LoRA (copied)"]
    base_dir = init_dir / "base"
    base = load_model(Checkpoint(base_dir))  # Checkpoint: a clear error if the residual base is missing
    model = PeftModel.from_pretrained(base, str(trained))
    with tempfile.TemporaryDirectory(prefix="warmstart-export-") as scratch:
        copy = Path(scratch) / "initial"
        shutil.copytree(initial, copy)
        with atomic_directory(out, force, [model_dir, init_dir, trained]) as tmp:
            model.save_pretrained(str(tmp), path_initial_model_for_weight_conversion=str(copy))
            set_base_path(tmp, str(model_dir.resolve()))  # plain LoRA: against the untouched source
    r = meta["rank"]
    return [f"wrote {out}: plain LoRA of rank {2 * r} (= [trained | initial] factors of {meta['method']}) "
            f"against the untouched base"]
