"""The compat layer: version guards, what gets patched where, and the HAVE_MEGATRON_CORE trap."""

import pytest

from nemo_hs2 import compat

CPU = compat.Environment(cuda=False, apex=False, te=False)
NGC = compat.Environment(cuda=True, apex=True, te=True)


def test_unknown_version_is_refused_before_anything_is_patched(monkeypatch):
    real = compat.installed_version
    monkeypatch.setattr(compat, "installed_version", lambda d: "9.9.9" if d == "megatron_core" else real(d))
    monkeypatch.setattr(compat, "_APPLIED", [])
    with pytest.raises(compat.CompatError) as err:
        compat.apply(CPU)
    msg = str(err.value)
    assert "megatron_core" in msg and "9.9.9" in msg and "0.10.0" in msg and "cuda-rng" in msg
    assert compat._APPLIED == []


def test_pinned_versions_are_the_supported_ones():
    for dist, supported in compat.SUPPORTED.items():
        assert compat.installed_version(dist) in supported, dist


def test_nothing_cuda_apex_or_te_is_patched_on_a_full_ngc_stack(monkeypatch):
    monkeypatch.setenv("NVIDIA_PYTORCH_VERSION", "24.07")
    kinds = {p.kind for p in compat.planned(NGC)}
    # Only adapters for the torch API remain (and only where torch is newer than the NGC image's), plus NeMo
    # behaviour fixes needed on any hardware (the HF tokenizer inside a .nemo).
    assert kinds <= {"torch", "nemo"}


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
