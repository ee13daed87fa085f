"""What happens when a job dies: pre-emption signals, unfinished checkpoints, non-finite steps.

Everything here plugs into NeMo-Aligner's own mechanisms instead of adding a second checkpoint path:
pre-emption makes the run timer report "finished", so ``SupervisedTrainer.fit`` saves and returns exactly as it
does at ``max_time``; unfinished checkpoints are recognised by NeMo's own ``-unfinished`` marker.
"""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import torch
from nemo_aligner.utils.distributed import Timer

# Exit status of a run that stopped for pre-emption after saving; examples/slurm requeues on it (EX_TEMPFAIL).
EXIT_PREEMPTED = 75
UNFINISHED_SUFFIX = "-unfinished"  # NeMoModelCheckpoint.UNFINISHED_CHECKPOINT_SUFFIX


class PreemptionTimer(Timer):
    """NeMo-Aligner's run timer that also reports "finished" once any rank got a pre-emption signal."""

    def __init__(self, duration=None, signals=("SIGTERM", "SIGUSR1")):
        super().__init__(duration)
        self.signal_received: str | None = None
        self.preempted = False
        for name in signals:
            signal.signal(getattr(signal, name), self._on_signal)

    def _on_signal(self, signum, frame):
        self.signal_received = signal.Signals(signum).name

    def is_finished(self) -> bool:
        # Every rank must stop at the same step boundary, whichever of them the signal reached.
        flags = torch.tensor([self.get_time_remaining() <= 0, self.signal_received is not None],
                             dtype=torch.int32, device=torch.cuda.current_device())
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        self.preempted = self.preempted or bool(flags[1])
        return bool(flags.any())


class NonFiniteStepError(RuntimeError):
    pass


class FiniteStepGuard:
    """Wraps the optimizer: refuses to apply a step whose loss or gradients are not finite.

    The check runs after the backward pass and before ``optimizer.step``, so the poisoned update never reaches
    the weights and no checkpoint of it is written (the error ends ``fit`` before its save).
    """

    def __init__(self, optimizer, model, trainer_state):
        self._optimizer = optimizer
        self._model = model
        self._trainer_state = trainer_state  # the SupervisedTrainer, for the step number

    def __getattr__(self, name):
        return getattr(self._optimizer, name)

    def step(self, closure=None):
        loss = getattr(self._model, "last_loss", 0.0)
        grads = [g for group in self._optimizer.param_groups for p in group["params"]
                 if (g := p.grad if getattr(p, "main_grad", None) is None else p.main_grad) is not None]
        local = torch.zeros(1, dtype=torch.float32, device=torch.cuda.current_device())
        if grads:  # reduced on the device: one host sync per step, not one per parameter
            local[0] = torch.stack([torch.isfinite(g).logical_not().any() for g in grads]).any()
        torch.distributed.all_reduce(local, op=torch.distributed.ReduceOp.MAX)
        if not math.isfinite(loss) or local.item() > 0:
            step = self._trainer_state.step + 1
            what = f"loss {loss}" if not math.isfinite(loss) else "gradients"
            raise NonFiniteStepError(
                f"step {step}: non-finite {what}; stopping before the optimizer step, so the weights and the "
                f"checkpoints on disk are those of step {self._trainer_state.step} or earlier"
            )
        return self._optimizer.step(closure=closure)


def set_aside_unfinished_checkpoints(checkpoint_dir: str | os.PathLike) -> list[Path]:
    """Rename checkpoints NeMo marked unfinished (a kill during save) so resume falls back to the last complete one.

    NeMo itself refuses to resume when the newest ``-last`` checkpoint is unfinished; renaming (not deleting) keeps
    the evidence. Safe to call on every rank: a rename another rank already did is skipped.
    """
    from nemo.utils import logging

    moved = []
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return moved
    for marker in sorted(root.glob(f"*{UNFINISHED_SUFFIX}")):
        base = marker.name[: -len(UNFINISHED_SUFFIX)]
        ckpt = marker.with_name(base)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        # NeMo strips .ckpt / .nemo from the checkpoint's name to form the marker's.
        for path in (ckpt, ckpt.with_name(base + ".ckpt"), ckpt.with_name(base + ".nemo"), marker):
            target = path.with_name(f"{path.name}.incomplete-{stamp}")
            try:
                path.rename(target)
                moved.append(target)
            except FileNotFoundError:
                pass
        logging.warning(f"checkpoint {ckpt} was not finished (the job died while saving); set aside, resuming from "
                        "the previous complete checkpoint")
    return moved
