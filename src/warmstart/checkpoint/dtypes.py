"""Mapping between torch dtypes, safetensors dtype codes and user spellings."""

from __future__ import annotations

from warmstart.errors import WarmstartError

# User spellings accepted by --dtype.
USER_DTYPES = {
    "fp32": "F32", "float32": "F32", "f32": "F32",
    "fp16": "F16", "float16": "F16", "f16": "F16", "half": "F16",
    "bf16": "BF16", "bfloat16": "BF16",
}


def parse_user_dtype(text: str | None) -> str | None:
    """`--dtype` value -> safetensors code (None keeps each tensor's dtype)."""
    if text is None:
        return None
    try:
        return USER_DTYPES[text.lower()]
    except KeyError:
        raise WarmstartError(f"unknown dtype {text!r}; choose one of fp32, fp16, bf16") from None


def _table():
    import torch

    return {
        torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
        torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
        torch.uint8: "U8", torch.bool: "BOOL",
        torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    }


def torch_to_code(dtype) -> str:
    return _table()[dtype]


def code_to_torch(code: str):
    for k, v in _table().items():
        if v == code:
            return k
    raise KeyError(code)


def config_dtype_name(code: str) -> str:
    """The spelling transformers uses in config.json's `torch_dtype`/`dtype`."""
    return {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}.get(code, "float32")
