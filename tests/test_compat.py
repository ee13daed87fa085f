"""The compat layer: version guards, what gets patched where, and the HAVE_MEGATRON_CORE trap."""

import pytest

from nemo_hs2.megatron import compat
from nemo_hs2.megatron.compat import registry

CPU = compat.Environment(cuda=False, apex=False, te=False)
NGC = compat.Environment(cuda=True, apex=True, te=True)


def test_unknown_version_is_refused_before_anything_is_patched(monkeypatch):
    real = registry.installed_version
    monkeypatch.setattr(registry, "installed_version", lambda d: "9.9.9" if d == "megatron_core" else real(d))
    monkeypatch.setattr(registry, "APPLIED", [])
    with pytest.raises(compat.CompatError) as err:
        compat.apply(CPU)
    msg = str(err.value)
    first = next(p.name for p in compat.planned(CPU) if "megatron_core" in p.dists)
    assert "megatron_core" in msg and "9.9.9" in msg and "0.10.0" in msg and f"patch '{first}'" in msg
    assert registry.APPLIED == []


def test_pinned_versions_are_the_supported_ones():
    for dist, supported in compat.SUPPORTED.items():
        assert registry.installed_version(dist) in supported, dist


def test_every_patch_says_why_in_one_line_and_names_its_versions():
    names = [p.name for p in registry.PATCHES]
    assert len(names) == len(set(names))
    for p in registry.PATCHES:
        assert p.why and "\n" not in p.why and p.dists and all(d in registry.SUPPORTED for d in p.dists), p.name
        assert p.apply.__module__.startswith("nemo_hs2.megatron.compat."), p.name


def test_safe_loading_stays_on_outside_megatron_cores_own_loads(tmp_path):
    """torch >= 2.6 loads with weights_only=True; the patch lifts it inside mcore's common.pt load only."""
    import collections

    import torch
    from megatron.core.dist_checkpointing.strategies.common import TorchCommonLoadStrategy

    compat.apply()
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in __import__("os").environ
    obj = {"cfg": collections.OrderedDict(a=1), "fn": print}  # a pickled callable: refused by safe loading
    torch.save(obj, tmp_path / "common.pt")
    with pytest.raises(Exception, match="[Ww]eights only"):
        torch.load(tmp_path / "common.pt")
    assert TorchCommonLoadStrategy().load_common(tmp_path)["fn"] is print
    with pytest.raises(Exception, match="[Ww]eights only"):  # and it is back on afterwards
        torch.load(tmp_path / "common.pt")


def test_nothing_cuda_apex_or_te_is_patched_on_a_full_ngc_stack(monkeypatch):
    monkeypatch.setenv("NVIDIA_PYTORCH_VERSION", "24.07")
    kinds = {p.kind for p in compat.planned(NGC)}
    # Only adapters for the torch API (where torch is newer than the NGC image's), process lifetimes and NeMo
    # behaviour fixes needed on any hardware (the HF tokenizer inside a .nemo) remain.
    assert kinds <= {"torch", "process", "nemo"}


def test_cpu_plans_every_hardware_patch(monkeypatch):
    monkeypatch.delenv("NVIDIA_PYTORCH_VERSION", raising=False)
    names = {p.name for p in compat.planned(CPU)}
    assert {"cuda-rng", "cuda-device", "ddp-strategy", "local-spec", "clip-grads", "nvidia-pytorch-version"} <= names
    assert all(p.why and p.dists for p in compat.planned(CPU))


def test_missing_megatron_core_is_a_clear_error(monkeypatch):
    import nemo.collections.nlp.models.language_modeling.megatron_gpt_model as gpt_model

    monkeypatch.setattr(gpt_model, "HAVE_MEGATRON_CORE", False)
    with pytest.raises(compat.CompatError, match="HAVE_MEGATRON_CORE=False.*tensorstore"):
        compat.check_megatron_core()


def test_pypi_apex_is_not_mistaken_for_nvidia_apex(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "apex" else real(n, *a))
    assert compat.Environment.detect().apex is False


def test_checkpoint_helper_survives_preemption_signals_meant_for_the_trainer():
    """SLURM signals every process of a job step; mcore's results-queue Manager must leave USR1/TERM to the trainer
    (before this, scancel --signal=USR1 during a save killed it and the save failed with EOFError)."""
    import os
    import signal
    import time

    import megatron.core.dist_checkpointing.strategies.filesystem_async as mcore_fs

    compat.apply()
    assert "dist-ckpt-helpers-die-with-parent" in compat.applied()
    saved, mcore_fs._results_queue = mcore_fs._results_queue, None
    try:
        queue = mcore_fs._get_write_results_queue()
        manager = queue._manager
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            os.kill(manager._process.pid, sig)
        time.sleep(1.0)
        assert manager._process.is_alive()
        queue.put("still here")
        assert queue.get(timeout=10) == "still here"
        manager.shutdown()
    finally:
        mcore_fs._results_queue = saved
