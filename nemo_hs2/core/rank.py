"""Which process of a launch this is: the one answer every module asks (progress bars, writes, console lines)."""

from __future__ import annotations

import os


def global_rank() -> int:
    """The process group's rank once it exists; before that, the launcher's (torchrun ``RANK``, SLURM ``SLURM_PROCID``)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def is_main_rank() -> bool:
    """Rank 0: the process that reads inputs, prints and writes outputs."""
    return global_rank() == 0
