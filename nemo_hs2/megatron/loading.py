"""Load a trained nemo_hs2 reward model (``.nemo``) for inference in the current process.

One process (TP = PP = 1) is the default; under ``torchrun`` the same call builds one model-parallel replica over
all ranks (``trainer.devices x trainer.num_nodes = TP x PP``), and every rank must then call ``RewardScorer.score``
(or ``model.predict``) with the same rows. Data parallelism is refused rather than silently scoring everything on
every replica.

The flow is training's (``nemo_hs2.megatron.train_recipe``): ``compat.apply()``, the checkpoint's config with the caller's overrides
on top, NeMo-Aligner's ``resolve_and_create_trainer``, ``build_model`` in ``init.mode=reward_model`` (backbone and
head), ``init_distributed`` and the model-parallel RNG seed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf, open_dict

from nemo_hs2.megatron import compat
from nemo_hs2.megatron.build import seed_model_parallel_rng

# What an inference-only trainer needs; NeMo-Aligner's resolve_and_create_trainer pops the ``rm`` key.
CPU_TRAINER = {"num_nodes": 1, "devices": 1, "accelerator": "cpu", "precision": 32, "logger": False,
               "enable_checkpointing": False, "use_distributed_sampler": False, "enable_progress_bar": False,
               "max_steps": -1, "rm": {}}


_RENDEZVOUS_KEYS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK")


def _as_config(value, default) -> DictConfig:
    if value is None:
        value = default
    if isinstance(value, DictConfig):
        return OmegaConf.create(OmegaConf.to_container(value, resolve=True))
    return OmegaConf.create(dict(value))


def check_layout(trainer_cfg: Mapping, tp: int, pp: int) -> int:
    """World size of the launch, if it can hold exactly one TP x PP replica; raises ValueError otherwise."""
    world = int(trainer_cfg.get("num_nodes", 1)) * int(trainer_cfg.get("devices", 1))
    if tp < 1 or pp < 1:
        raise ValueError(f"tensor/pipeline model parallel sizes must be >= 1, got TP={tp} PP={pp}")
    if world != tp * pp:
        raise ValueError(f"inference runs one model replica: trainer.num_nodes x trainer.devices = {world} must "
                         f"equal TP x PP = {tp} x {pp} = {tp * pp} (data parallelism would score every row on "
                         "every replica)")
    launched = os.environ.get("WORLD_SIZE")
    if launched is not None and int(launched) != world:
        raise ValueError(f"launched {launched} processes (WORLD_SIZE) but trainer.num_nodes x trainer.devices = "
                         f"{world}: start as many processes as the layout has ranks")
    return world


def checkpoint_config(checkpoint: str | os.PathLike, head_layout=None, attributes=None) -> DictConfig:
    """The model config saved in a ``.nemo`` (file or extracted directory), with ``regression.attributes`` the
    names the loaded model will predict: the checkpoint's own, or (a NeMo-Aligner positional head) those
    ``head_layout`` gives its outputs, cut to ``attributes`` (default: the layout's trained ones)."""
    path = os.fspath(checkpoint)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    from nemo_aligner.utils.utils import load_checkpoint_model_config

    from nemo_hs2.megatron.head_layout import head_attributes

    saved = load_checkpoint_model_config(path)
    _, keep = head_attributes(saved.get("regression"), path, head_layout, attributes)
    with open_dict(saved):
        saved.regression.attributes = list(keep)
    return saved


def load_reward_model(checkpoint: str | os.PathLike, trainer: Mapping | None = None,
                      model_overrides: Mapping | None = None, head_layout=None):
    """An ``AttributeRewardModel`` with the checkpoint's backbone and head, ready for ``RewardScorer``.

    ``trainer``: a trainer config such as ``conf/trainer/cpu.yaml`` (default: one CPU process, fp32).
    ``model_overrides``: keys merged over the checkpoint's model config, e.g. ``tensor_model_parallel_size``,
    ``pipeline_model_parallel_size``, ``forward_micro_batch_size``; ``precision`` follows the trainer.
    ``head_layout``: names a positional head's outputs (``aligner_9slot``: NVIDIA's published NeMo-Aligner reward
    models; or a list, one name or null per output); ``model_overrides={"regression": {"attributes": [...]}}``
    picks which of them to keep (default: the layout's trained ones).
    """
    path = os.fspath(checkpoint)
    if not os.path.exists(path):  # before NeMo's import, which takes a while
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    trainer_cfg = _as_config(trainer, CPU_TRAINER)
    overrides = _as_config(model_overrides, {})
    with open_dict(trainer_cfg), open_dict(overrides):
        trainer_cfg.setdefault("rm", {})
        # The checkpoint's precision is the one it trained with (bf16 on GPU); the weights are cast to what
        # this launch runs, which only the trainer knows.
        overrides.precision = trainer_cfg.get("precision", 32)
        for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
            if overrides.get(key) is None:
                overrides[key] = 1
    check_layout(trainer_cfg, int(overrides.tensor_model_parallel_size), int(overrides.pipeline_model_parallel_size))
    compat.apply()
    wanted = (overrides.get("regression") or {}).get("attributes")
    checkpoint_config(path, head_layout, wanted)

    from nemo_aligner.utils.train_script_utils import init_distributed, resolve_and_create_trainer
    from nemo_aligner.utils.utils import load_and_override_model_config

    from nemo_hs2.megatron.build import build_model

    model_cfg = load_and_override_model_config(path, overrides)
    cfg = OmegaConf.create({"trainer": trainer_cfg, "model": model_cfg, "exp_manager": None,
                            "init": {"restore_from_path": path, "mode": "reward_model", "head_layout": head_layout}})
    seed = int(cfg.model.get("seed", 1234))
    launched = "WORLD_SIZE" in os.environ
    env_before = set(os.environ)
    ptl_trainer = resolve_and_create_trainer(cfg, "rm")
    model = build_model(cfg, ptl_trainer)
    init_distributed(ptl_trainer, model, cfg.model.get("transformer_engine", False))
    seed_model_parallel_rng(seed)
    if not launched:
        # Lightning exported a rendezvous (MASTER_PORT, WORLD_SIZE, ...) for its one-process group. The group no
        # longer needs it, but a process started from here later (a training run) would inherit it and try to
        # bind the port this process's TCP store holds.
        for key in _RENDEZVOUS_KEYS:
            if key not in env_before:
                os.environ.pop(key, None)
    model.freeze()
    return model
