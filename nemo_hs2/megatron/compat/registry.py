"""The patch registry: what a patch is, when it is needed, and the version guard every patch runs behind."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
from typing import Callable

import torch

# Versions each group of patches was read against (NOTES.md: 2.1.0 + 0.10.0 is the pin, 2.2.1 + 0.11.0 the fallback).
SUPPORTED = {
    "nemo_toolkit": ("2.1.0", "2.2.1"),
    "megatron_core": ("0.10.0", "0.11.0"),
    "nemo_aligner": ("0.7.0",),
}


class CompatError(RuntimeError):
    """The installed stack is not the one a patch was written for."""


def installed_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def require_version(dist: str, patch: str, supported: tuple[str, ...] | None = None) -> None:
    supported = supported or SUPPORTED[dist]
    found = installed_version(dist)
    if found not in supported:
        raise CompatError(
            f"nemo_hs2.megatron.compat: patch '{patch}' was written for {dist} {' or '.join(supported)}, but {found} "
            f"is installed. Install the pinned stack (requirements/cpu.lock, or the Dockerfile's image), or re-check "
            f"this patch against {dist} {found} and add the version to nemo_hs2.megatron.compat.registry.SUPPORTED."
        )


@dataclasses.dataclass(frozen=True)
class Environment:
    cuda: bool
    apex: bool
    te: bool

    @classmethod
    def detect(cls) -> "Environment":
        # NVIDIA apex ships amp_C; PyPI's unrelated "apex" package does not, so it cannot fool this check.
        apex = importlib.util.find_spec("amp_C") is not None and importlib.util.find_spec("apex") is not None
        te = importlib.util.find_spec("transformer_engine") is not None
        return cls(cuda=torch.cuda.is_available(), apex=apex, te=te)


@dataclasses.dataclass(frozen=True)
class Patch:
    name: str
    kind: str  # what is missing: "cuda", "apex", "te"; or "env", "torch", "nemo", "process" (see the package docstring)
    why: str
    needed: Callable[[Environment], bool]
    dists: tuple[str, ...]
    apply: Callable[[], None]


PATCHES: list[Patch] = []  # in registration order, which is application order
APPLIED: list[str] = []


def patch(name: str, kind: str, why: str, needed: Callable[[Environment], bool], dists=("nemo_toolkit",)):
    """Register the decorated function as patch ``name``; ``why`` is its one line of justification."""

    def register(fn):
        PATCHES.append(Patch(name, kind, why, needed, tuple(dists), fn))
        return fn

    return register


def no_cuda(env: Environment) -> bool:
    return not env.cuda


def no_apex(env: Environment) -> bool:
    return not env.apex


def no_te(env: Environment) -> bool:
    return not env.te


def always(env: Environment) -> bool:
    return True
