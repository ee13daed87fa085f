"""Process lifetimes: megatron-core's checkpoint helper processes die with the trainer and leave its signals to it."""

from __future__ import annotations

import os
import signal
import sys

import torch

from nemo_hs2.megatron.compat.registry import CompatError, patch


@patch("dist-ckpt-helpers-die-with-parent", "process", "mcore's checkpoint writer starts a spawn Manager server (and "
        "forked writers) that outlive a SIGKILLed trainer and die of SLURM's step signals; tie them to the trainer",
        lambda env: sys.platform.startswith("linux"), dists=("megatron_core",))
def _dist_ckpt_helpers_die_with_parent():
    import multiprocessing
    import multiprocessing.resource_tracker
    from multiprocessing.managers import SyncManager

    import megatron.core.dist_checkpointing.strategies.filesystem_async as mcore_fs

    from nemo_hs2.megatron.process import PREEMPTION_SIGNALS, checkpoint_helper_init

    Writer = mcore_fs.FileSystemWriterAsync
    if not all(hasattr(o, n) for o, n in ((mcore_fs, "_get_write_results_queue"), (mcore_fs, "_results_queue"),
                                          (Writer, "write_preloaded_data"), (Writer, "write_preloaded_data_multiproc"))):
        raise CompatError("patch 'dist-ckpt-helpers-die-with-parent': megatron-core's filesystem_async has moved")

    def get_write_results_queue():
        if mcore_fs._results_queue is None:  # as upstream (a spawn-context Manager queue), plus the parent link
            manager = SyncManager(ctx=torch.multiprocessing.get_context("spawn"))
            # The spawned server (and the resource tracker started with it) has default signal actions until its
            # initializer runs, and a step signal in that window killed it (EOFError: the save failed). Blocked
            # here, the signals stay blocked in them (the mask survives fork and exec) until the initializer
            # ignores them; the trainer gets its own pending ones when the mask is restored. Starting the tracker
            # unblocks SIGINT / SIGTERM (CPython's resource_tracker), hence the second block.
            signals = {getattr(signal, n) for n in PREEMPTION_SIGNALS}
            old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
            try:
                multiprocessing.resource_tracker.ensure_running()
                signal.pthread_sigmask(signal.SIG_BLOCK, signals)
                manager.start(initializer=checkpoint_helper_init, initargs=(os.getpid(),))
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
            mcore_fs._results_queue = manager.Queue()
        return mcore_fs._results_queue

    # The save runs in a process forked from the trainer (mcore's DistributedAsyncCaller) or inline in the trainer;
    # it forks one writer per file. Forked processes are linked to their parent; the trainer itself is left alone.
    write_all, write = Writer.write_preloaded_data_multiproc, Writer.write_preloaded_data

    def write_preloaded_data_multiproc(*args, **kwargs):
        if multiprocessing.parent_process() is not None:
            checkpoint_helper_init(multiprocessing.parent_process().pid)
        return write_all(*args, **kwargs)

    def write_preloaded_data(*args, **kwargs):
        checkpoint_helper_init(multiprocessing.parent_process().pid)
        return write(*args, **kwargs)

    mcore_fs._get_write_results_queue = get_write_results_queue
    Writer.write_preloaded_data_multiproc = staticmethod(write_preloaded_data_multiproc)
    Writer.write_preloaded_data = staticmethod(write_preloaded_data)
