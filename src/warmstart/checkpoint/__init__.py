"""Checkpoint engine: lazy reader, streaming atomic writer, GGUF import."""

from __future__ import annotations

