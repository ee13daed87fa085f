"""What happens when a job dies: pre-emption signals, unfinished checkpoints, non-finite steps, lost ranks, RNG state.

Everything here plugs into NeMo-Aligner's own mechanisms instead of adding a second checkpoint path:
pre-emption makes the run timer report "finished", so ``SupervisedTrainer.fit`` saves and returns exactly as it
does at ``max_time``; unfinished checkpoints are recognised by NeMo's own ``-unfinished`` marker.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import random
import re
import signal
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from nemo_aligner.utils.distributed import Timer

# Exit status of a run that stopped for pre-emption after saving; examples/slurm requeues on it (EX_TEMPFAIL).
EXIT_PREEMPTED = 75
# A run that lost another rank exits with the same status: it has nothing to save, the rerun resumes.
EXIT_REQUEUE = EXIT_PREEMPTED
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


def leave_after_preemption(timeout_s: float) -> int:
    """Wait until every rank has written its part of the pre-emption checkpoint; returns the exit status (75).

    Each rank calls this once training returned (its checkpoint shards and, on rank 0, the metrics written) and exits
    with the result right away. Launchers end a step at its first non-zero exit: ``srun --kill-on-bad-exit`` sends
    SIGTERM to the other tasks (SIGKILL after KillWait), so a rank that leaves first gets the others killed while they
    still write or shut down, and srun then reports the signal (exit 143), not 75. So no rank leaves before all have
    arrived here, and from here on the pre-emption signals are ignored: interpreter shutdown restores the default
    action of every signal that has a Python handler (CPython's signal-module finalization), the window in which a
    slower rank died of its peer's exit; an ignored signal stays ignored. If a peer is gone before agreeing, its part
    was written anyway (the save's own collectives completed), so this rank still exits for requeue, saying so.
    """
    for name in ("SIGTERM", "SIGUSR1"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    if not torch.distributed.is_initialized():
        return EXIT_PREEMPTED
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    stamp = datetime.datetime.now().isoformat(timespec="milliseconds")
    print(f"rank {rank}: pre-emption checkpoint part written at {stamp}; waiting for all {world} ranks",
          file=sys.stderr, flush=True)
    detail = None
    try:  # completes only once every rank has contributed
        arrived = torch.ones(1, dtype=torch.int32, device=torch.cuda.current_device())
        torch.distributed.all_reduce(arrived, async_op=True).wait(timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as exc:  # a peer that died or hangs: nothing more to wait for
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    if detail is None:
        print(f"rank {rank}: all {world} ranks wrote their part of the checkpoint; exiting {EXIT_PREEMPTED} for "
              "requeue", file=sys.stderr, flush=True)
    else:
        print(f"rank {rank}: could not agree with the other ranks before exiting ({detail}); this rank's part of "
              f"the checkpoint is written, exiting {EXIT_PREEMPTED} for requeue", file=sys.stderr, flush=True)
    return EXIT_PREEMPTED


class NonFiniteStepError(RuntimeError):
    pass


class FiniteStepGuard:
    """Wraps the optimizer: refuses to apply a step whose loss or gradients are not finite, and skips (counting it)
    the step of a global batch with nothing to learn (``AttributeRewardModel.skip_step``).

    The check runs after the backward pass and before ``optimizer.step``, so the poisoned update never reaches
    the weights and no checkpoint of it is written (the error ends ``fit`` before its save).
    """

    def __init__(self, optimizer, model, trainer_state):
        self._optimizer = optimizer
        self._model = model
        self._trainer_state = trainer_state  # the SupervisedTrainer, for the step number

    def __getattr__(self, name):
        return getattr(self._optimizer, name)

    def _nonfinite_gradients(self) -> torch.Tensor:
        """[1.] if a gradient of this rank is not finite, else [0.], on the device (no host sync)."""
        opt = self._optimizer
        if callable(getattr(opt, "grad_norm", None)) and hasattr(opt, "_grad_norm"):
            # apex distributed_fused_adam (GPU presets): gradients live in the optimizer's sharded buckets and p.grad
            # is None; its grad norm (reduced over all ranks, cached for clipping) is non-finite iff a shard is.
            return torch.isfinite(opt.grad_norm()).logical_not().float().reshape(1)
        # The model's own gradients: mcore DDP's grad buffers (main_grad) or .grad. Not the optimizer's parameters:
        # megatron-core's distributed optimizer fills its fp32 shards' .grad only inside step(), after this check.
        grads = [g for p in self._model.parameters()
                 if (g := p.grad if getattr(p, "main_grad", None) is None else p.main_grad) is not None]
        local = torch.zeros(1, dtype=torch.float32, device=torch.cuda.current_device())
        if grads:  # reduced on the device: one host sync per step, not one per parameter
            local[0] = torch.stack([torch.isfinite(g).logical_not().any() for g in grads]).any()
        return local

    def step(self, closure=None):
        if getattr(self._model, "skip_step", False):
            # Nothing to learn in this global batch (all ties, no present label): no update, not even Adam's
            # momentum; the schedule and the data order move on as for any step.
            self._model.skipped_steps += 1
            return None
        loss = getattr(self._model, "last_loss", 0.0)
        local = self._nonfinite_gradients()
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


def set_collective_timeout(trainer, seconds: float) -> None:
    """How long any collective waits for a rank that died or hangs (the backend default is 30 minutes).

    Lightning's DDP strategy passes it to ``init_process_group`` and NeMo to megatron-core's model-parallel groups;
    it must be set before ``init_distributed``.
    """
    if not hasattr(trainer.strategy, "_timeout"):
        raise RuntimeError(f"{type(trainer.strategy).__name__} has no collective timeout to set")
    trainer.strategy._timeout = datetime.timedelta(seconds=float(seconds))


# What gloo / NCCL say when a peer process is gone or stopped answering (a backend's error, not any timeout).
_BACKEND = re.compile(r"gloo|nccl|c10d|processgroup", re.IGNORECASE)
_LOST_PEER = re.compile(r"connection (reset|closed|refused)|broken pipe|timed out|timeout|watchdog|"
                        r"communicator was aborted|remote process exited", re.IGNORECASE)


def lost_peer(exc: BaseException) -> bool:
    dist_errors = tuple(getattr(torch.distributed, n) for n in ("DistNetworkError", "DistStoreError")
                        if hasattr(torch.distributed, n))
    if isinstance(exc, dist_errors):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and bool(_BACKEND.search(text)) and bool(_LOST_PEER.search(text))


@contextlib.contextmanager
def requeue_if_a_rank_is_lost(timeout_s: float):
    """A collective that fails because another rank died (or hung past ``timeout_s``) ends this rank for requeue.

    Exits with ``os._exit``: normal interpreter shutdown would run teardown collectives that wait on the lost rank.
    """
    try:
        yield
    except Exception as exc:
        if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1 and lost_peer(exc)):
            raise
        rank = torch.distributed.get_rank()
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        message = (f"rank {rank}: lost another rank of the job (it died, or did not answer a collective within "
                   f"collective_timeout_s={timeout_s:g}): {detail}. Exiting with status {EXIT_REQUEUE} for requeue; "
                   "the rerun resumes from the last complete checkpoint.")
        try:
            from nemo.utils import logging

            logging.error(message)
        finally:
            print(message, file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(EXIT_REQUEUE)


def _rng_layout():
    from megatron.core import parallel_state as ps

    shape = (ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size(),
             ps.get_data_parallel_world_size())
    offset = (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank(),
              ps.get_data_parallel_rank())
    return shape, offset


def rng_state() -> dict:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "tracker": get_cuda_rng_tracker().get_states()}


def set_rng_state(state: dict) -> None:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


class RngStateCheckpoint(pl.Callback):
    """Saves every random stream a step draws from with each checkpoint, one copy per rank, and restores it on resume.

    Python, numpy, torch (and CUDA) and megatron-core's model-parallel RNG tracker (dropout inside tensor-parallel
    regions): a resumed run with dropout draws the masks the uninterrupted run draws. Stored in the dist-ckpt as a
    ``ShardedObject`` over (PP, TP, DP) ranks; a checkpoint without one (older, or another layout) resumes with
    fresh RNG and a warning.
    """

    KEY = "nemo_hs2_rng_state"

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        from megatron.core.dist_checkpointing.mapping import ShardedObject

        checkpoint[self.KEY] = ShardedObject(self.KEY, rng_state(), *_rng_layout(), replica_id=0)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        from megatron.core import dist_checkpointing
        from megatron.core.dist_checkpointing.mapping import ShardedObject
        from nemo.utils import logging
        from nemo.utils.model_utils import ckpt_to_dir
        from torch.distributed.checkpoint.api import CheckpointException

        path = ckpt_to_dir(trainer.ckpt_path)
        request = {self.KEY: ShardedObject(self.KEY, None, *_rng_layout(), replica_id=0)}
        try:
            state = dist_checkpointing.load(request, str(path))[self.KEY]
        # torch's CheckpointException (missing key) is a BaseException; every rank sees the same checkpoint
        except (Exception, CheckpointException) as exc:
            logging.warning(f"{path} has no RNG state for this layout ({type(exc).__name__}); resuming with fresh "
                            "random streams: dropout masks will differ from an uninterrupted run")
            return
        set_rng_state(state)
