"""LoRA adapter initialization: PEFT's methods, NLoRA and LoRA-SB, residual bases, export to plain LoRA."""

from warmstart.adapter.config import AdapterSpec
from warmstart.adapter.methods import METHODS, Method, get, register
from warmstart.adapter.writer import AdapterReport, export_lora, initialize

__all__ = ["AdapterSpec", "AdapterReport", "METHODS", "Method", "export_lora", "get", "initialize", "register"]
