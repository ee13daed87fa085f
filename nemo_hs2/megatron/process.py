"""Helper processes tied to the trainer: they die with it and leave its pre-emption signals to it."""

from __future__ import annotations

import os


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux ``PR_SET_PDEATHSIG``).

    Runs inside helper processes (it is pickled by name into spawned ones). The signal is tied to the thread that
    started the helper; mcore starts them from the training thread, which lives as long as the trainer.
    """
    import ctypes
    import signal

    if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:  # 1 = PR_SET_PDEATHSIG
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent died before prctl: no signal will come
        os._exit(1)


PREEMPTION_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGTERM", "SIGINT")


def checkpoint_helper_init(parent_pid: int) -> None:
    """Start of an mcore checkpoint helper: die with the trainer, and leave pre-emption signals to it.

    SLURM delivers ``--signal`` / ``scancel --signal`` to every process of the job step; a helper killed by it
    mid-save fails the trainer's save (EOFError on the results queue) instead of letting it checkpoint and exit 75.
    """
    import signal

    die_with_parent(parent_pid)
    for name in PREEMPTION_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_IGN)
