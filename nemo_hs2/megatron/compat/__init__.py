"""Every patch nemo_hs2 applies to NeMo, megatron-core, NeMo-Aligner and torch, one file per group.

The pinned stack (NeMo 2.1, megatron-core 0.10, NeMo-Aligner 0.7.0) assumes an NGC container: CUDA, NVIDIA apex and
Transformer Engine. Our CPU machines have none of them, so each patch fixes one assumption and is applied only when
the thing it stands in for is missing: ``cuda.py``, ``apex.py``, ``te.py``. On a GPU node with CUDA, apex and TE
nothing from those groups is touched. ``torch_api.py`` tracks the torch version rather than the hardware (checkpoint
writer signature, ``weights_only`` loads, load-time size checks). The rest apply on any hardware: ``nemo.py`` fixes
NeMo behaviour (an HF tokenizer inside a ``.nemo``), ``process.py`` ties mcore's checkpoint helper processes to the
trainer, ``env.py`` covers the environment (NGC variables; jieba/opencc, absent from the GPU device kit).

Each patch is registered with one line saying why (``registry.patch``) and names the package versions it was written
against: a different version fails loudly instead of silently patching code that may have moved. ``apply()`` is
idempotent and must run before any NeMo model is built. Patches are thin switches; model code they install (e.g.
``nemo_hs2.megatron.layernorm1p``) lives beside the model.

On a machine without CUDA, the device mapping (``cuda-device``) is a torch function mode, which torch keeps per
thread: run the model in the thread that called ``apply()`` (the reward server does).
"""

from __future__ import annotations

import importlib

from nemo_hs2.megatron.compat import registry
from nemo_hs2.megatron.compat.registry import SUPPORTED, CompatError, Environment, Patch
from nemo_hs2.megatron.compat.torch_api import full_unpickling

__all__ = ["SUPPORTED", "CompatError", "Environment", "Patch", "apply", "applied", "check_megatron_core",
           "full_unpickling", "planned"]
# Importing a group registers its patches; registration order is application order: env first, then the hardware
# groups (te's local-spec before the layernorm1p patch that wraps it), NeMo, the torch API, process lifetimes.
for _group in ("env", "cuda", "apex", "te", "nemo", "torch_api", "process"):
    importlib.import_module(f"nemo_hs2.megatron.compat.{_group}")


def check_megatron_core() -> None:
    """NeMo sets HAVE_MEGATRON_CORE=False silently when tensorstore/zarr are wrong, and only fails much later."""
    import nemo.collections.nlp.models.language_modeling.megatron_gpt_model as gpt_model

    if not getattr(gpt_model, "HAVE_MEGATRON_CORE", False):
        raise CompatError(
            "NeMo did not find megatron-core (HAVE_MEGATRON_CORE=False). This usually means tensorstore or zarr "
            "is at the wrong version: install requirements/cpu.lock (tensorstore==0.1.45, zarr<3)."
        )


def planned(env: Environment | None = None) -> list[Patch]:
    env = env or Environment.detect()
    return [p for p in registry.PATCHES if p.needed(env)]


def apply(env: Environment | None = None) -> list[str]:
    """Apply the patches this machine needs; returns their names. Raises CompatError on an unknown stack."""
    env = env or Environment.detect()
    todo = [p for p in planned(env) if p.name not in registry.APPLIED]
    for p in todo:  # check every version first so a refusal leaves nothing half-patched
        for dist in p.dists:
            registry.require_version(dist, p.name)
    for p in todo:
        p.apply()
        registry.APPLIED.append(p.name)
    check_megatron_core()
    return list(registry.APPLIED)


def applied() -> list[str]:
    return list(registry.APPLIED)
