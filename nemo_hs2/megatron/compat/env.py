"""Patches for the environment: packages NeMo imports eagerly and variables only NGC containers set."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types

from nemo_hs2.megatron.compat.registry import patch


_CHINESE_TEXT_LIBS = ("jieba", "opencc")


class _StandIn(types.ModuleType):
    def __getattr__(self, attr):
        if attr.startswith("__"):  # introspection (inspect, pickle, hasattr) must see a plain missing attribute
            raise AttributeError(attr)
        raise ModuleNotFoundError(
            f"{self.__name__} is not installed: nemo_hs2.megatron.compat stood in for it so that NeMo can start (only NeMo's "
            f"Chinese tokenizer uses it); install {self.__name__} to use that tokenizer")


def _chinese_text_libs_missing(env):
    return any(importlib.util.find_spec(m) is None for m in _CHINESE_TEXT_LIBS)


@patch("chinese-text-libs", "env", "NeMo's tokenizer registry imports jieba/opencc eagerly; the GPU device kit has "
        "no room for them (21 MiB) and reward models never use them", _chinese_text_libs_missing)
def _chinese_text_libs():
    for name in _CHINESE_TEXT_LIBS:
        if importlib.util.find_spec(name) is None:
            stand_in = _StandIn(name)
            stand_in.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec() callers expect one
            sys.modules[name] = stand_in


@patch("nvidia-pytorch-version", "env", "MegatronBaseModel parses NVIDIA_PYTORCH_VERSION, set only inside NGC containers",
        lambda env: "NVIDIA_PYTORCH_VERSION" not in os.environ)
def _nvidia_pytorch_version():
    os.environ["NVIDIA_PYTORCH_VERSION"] = "none"
