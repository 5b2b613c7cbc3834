"""Which torch device a command runs on: the one reading of `gpu` for training, prediction and serving."""

from __future__ import annotations

import torch

from edgecls.errors import UserError


def resolve_device(gpu) -> torch.device:
    """`gpu` as the commands take it (an int or its text; -1 or None: the CPU) or a device string ('cpu', 'cuda',
    'cuda:N') -> a torch.device, checked against the CUDA devices this machine has."""
    if isinstance(gpu, str) and gpu.lstrip("-").isdigit():
        gpu = int(gpu)
    if gpu is None or (isinstance(gpu, int) and gpu < 0) or gpu == "cpu":
        return torch.device("cpu")
    if isinstance(gpu, str):
        if gpu != "cuda" and not (gpu.startswith("cuda:") and gpu[5:].isdigit()):
            raise UserError(f"`gpu` {gpu!r}: use -1 (the CPU), a CUDA device index, or cpu / cuda:N")
        index = int(gpu[5:]) if ":" in gpu else 0
    else:
        index = int(gpu)
    if not torch.cuda.is_available():
        raise UserError(f"`gpu` {gpu}: CUDA is not available on this machine; use `gpu` -1 for the CPU")
    count = torch.cuda.device_count()
    if index >= count:
        raise UserError(f"`gpu` {index}: only {count} CUDA device(s); use 0..{count - 1}")
    return torch.device("cuda", index)
