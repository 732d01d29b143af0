"""Whole tensors read by positioned reads, one at a time, with no memory map.

Merges and Fisher files read the same tensor from several checkpoints in
turn; positioned reads keep only the tensor being combined in memory, where a
memory map would let the page cache of every input grow.
"""

from __future__ import annotations

import os
from pathlib import Path

from warmstart.checkpoint.dtypes import code_to_torch
from warmstart.checkpoint.reader import Checkpoint
from warmstart.checkpoint.safetensors_format import TensorInfo
from warmstart.errors import CheckpointError


class TensorFile:
    """Reads whole tensors by positioned reads (no memory map), one at a time.

    `infos` maps names to where their bytes are (safetensors layout);
    `fallback` reads a tensor some other way (pickled checkpoints).
    """

    def __init__(self, infos: dict[str, TensorInfo], fallback=None):
        self.infos = infos
        self.fallback = fallback
        self._fds: dict[Path, int] = {}

    def read(self, name: str):
        import torch

        info = self.infos[name]
        try:
            dtype = code_to_torch(info.dtype)
        except KeyError:
            dtype = None
        if info.offset < 0 or dtype is None:
            if self.fallback is None:
                raise CheckpointError(f"cannot read tensor {name!r} of dtype {info.dtype}", info.file)
            return self.fallback(name).clone()
        buf = torch.empty(info.nbytes, dtype=torch.uint8)
        if info.nbytes:
            fd = self._fds.get(info.file)
            if fd is None:
                fd = self._fds[info.file] = os.open(info.file, os.O_RDONLY)
            view = memoryview(buf.numpy())
            done = 0
            while done < info.nbytes:
                n = os.preadv(fd, [view[done:]], info.offset + done)
                if n <= 0:
                    raise CheckpointError(f"unexpected end of file reading tensor {name!r}", info.file)
                done += n
        return buf.view(dtype).reshape(info.shape)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def checkpoint_tensor_file(ckpt: Checkpoint) -> TensorFile:
    infos = dict(ckpt.tensors) if ckpt.format == "safetensors" else {
        n: TensorInfo(n, i.file, i.dtype, i.shape, -1, i.nbytes) for n, i in ckpt.tensors.items()
    }
    return TensorFile(infos, fallback=ckpt.get)
