"""Adapters for a torch newer than the pinned megatron-core was written against (keyed on the torch API, not the
hardware)."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import threading
import warnings

import torch

from nemo_hs2.megatron.compat.registry import patch


def _torch_write_item_changed(env):
    import torch.distributed.checkpoint.filesystem as torch_fs

    return "transforms" in inspect.signature(torch_fs._write_item).parameters


@patch("dist-ckpt-write-item", "torch", "mcore's async checkpoint writer calls torch's private _write_item with its pre-2.6 "
        "signature", _torch_write_item_changed, dists=("megatron_core",))
def _dist_ckpt_write_item():
    import megatron.core.dist_checkpointing.strategies.filesystem_async as mcore_fs
    import torch.distributed.checkpoint.filesystem as torch_fs

    def write_item(stream, data, write_item, storage_key):
        return torch_fs._write_item(torch_fs._StorageWriterTransforms(), stream, data, write_item, storage_key,
                                    torch_fs.SerializationFormat.TORCH_SAVE)

    mcore_fs._write_item = write_item


def _torch_checks_load_sizes(env):
    import torch.distributed.checkpoint.default_planner as dp

    return "Size mismatch between saved" in inspect.getsource(dp.create_default_local_load_plan)


@patch("dist-ckpt-vocab-padding", "torch", "torch >= 2.6 refuses any saved/current size difference on load, which defeats "
        "mcore's allow_shape_mismatch (the padded vocabulary depends on TP and make_vocab_size_divisible_by); "
        "read the overlap for those tensors, as older torch did", _torch_checks_load_sizes, dists=("megatron_core",))
def _dist_ckpt_vocab_padding():
    import torch.distributed.checkpoint.default_planner as dp
    from megatron.core.dist_checkpointing.strategies.torch import MCoreLoadPlanner

    plan_from = dp.create_default_local_load_plan
    local_plan = MCoreLoadPlanner.create_local_plan

    def create_default_local_load_plan(state_dict, metadata, strict=True):
        md, loose = metadata.state_dict_metadata, getattr(_LOAD_SIZES, "loose", ())
        differ = {k for k in loose if k in state_dict and k in md and isinstance(md[k], dp.TensorStorageMetadata)
                  and getattr(state_dict[k], "size", None) is not None and md[k].size != state_dict[k].size()}
        plan = plan_from({k: v for k, v in state_dict.items() if k not in differ}, metadata, strict)
        extra = [item for k in sorted(differ) for item in dp._create_read_items(k, md[k], state_dict[k])]
        return dataclasses.replace(plan, items=[*plan.items, *extra]) if extra else plan

    def create_local_plan(self):
        validated = {t.key for t in self.shapes_validation_sharded_tensors}  # mcore checks these shapes itself
        _LOAD_SIZES.loose = {k for k in self.state_dict if k not in validated}
        try:
            return local_plan(self)
        finally:
            _LOAD_SIZES.loose = ()

    dp.create_default_local_load_plan = create_default_local_load_plan
    MCoreLoadPlanner.create_local_plan = create_local_plan


_LOAD_SIZES = threading.local()


def _torch_loads_weights_only(env):
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 6)


@contextlib.contextmanager
def full_unpickling(why: str):
    """Let ``torch.load`` unpickle arbitrary objects inside this block only (``why``: the file that needs it).

    torch >= 2.6 loads with ``weights_only=True``; everything else in the process keeps that default. The switch is
    the environment variable torch reads at each call, restored on exit."""
    saved = os.environ.get(_NO_WEIGHTS_ONLY)
    os.environ[_NO_WEIGHTS_ONLY] = "1"
    try:
        with warnings.catch_warnings():  # torch warns that the variable is set: here it is set on purpose
            warnings.filterwarnings("ignore", message=f"Environment variable {_NO_WEIGHTS_ONLY} detected")
            yield
    finally:
        if saved is None:
            os.environ.pop(_NO_WEIGHTS_ONLY, None)
        else:
            os.environ[_NO_WEIGHTS_ONLY] = saved


_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@patch("torch-load-weights-only", "torch", "torch >= 2.6 loads with weights_only=True, which cannot read mcore's common.pt "
       "(a pickled DictConfig) or its sharded objects; allow a full unpickle inside those two loads only",
       _torch_loads_weights_only, dists=("megatron_core",))
def _torch_load_weights_only():
    from megatron.core.dist_checkpointing.strategies.common import TorchCommonLoadStrategy

    for name in ("load_common", "load_sharded_objects"):
        load = getattr(TorchCommonLoadStrategy, name)

        def scoped(self, *args, _load=load, _name=name, **kwargs):
            with full_unpickling(f"megatron-core {_name}"):
                return _load(self, *args, **kwargs)

        setattr(TorchCommonLoadStrategy, name, scoped)
