"""The reward model a config asks for: fresh, or started from a ``.nemo`` (``init.mode``: backbone or whole)."""

from __future__ import annotations

from omegaconf import DictConfig, open_dict


def build_model(cfg: DictConfig, trainer):
    from nemo_aligner.utils.utils import load_and_override_model_config, load_checkpoint_model_config, load_from_nemo

    from nemo_hs2.megatron import checkpoint_config
    from nemo_hs2.megatron.reward_model import AttributeRewardModel

    path = (cfg.get("init") or {}).get("restore_from_path")
    if not path:
        return AttributeRewardModel(cfg.model, trainer)
    saved = load_checkpoint_model_config(path)
    layout = cfg.init.get("head_layout")
    if layout is not None:  # a positional head: load it whole under its layout's names, then keep ours by name
        from nemo_hs2.megatron.head_layout import head_attributes, keep_head_outputs

        outputs, keep = head_attributes(saved.get("regression"), path, layout,
                                        (cfg.model.get("regression") or {}).get("attributes"))
    # The checkpoint carries its resolved weight mappings; a merge would union them with this run's keys.
    asked = {k: cfg.model.regression.get(k) for k in ("reward_weights", "bt_reward")}
    # The checkpoint decides the architecture; an explicit override that contradicts it is an error.
    keys, preset_chosen = checkpoint_config.explicit_choices()
    run_model = checkpoint_config.resolve(cfg.model, saved, path, keys, preset_chosen)
    with open_dict(cfg):
        cfg.model = load_and_override_model_config(path, run_model)
        for key, value in asked.items():
            if value is not None:
                cfg.model.regression[key] = value
        if layout is not None:
            cfg.model.regression.attributes = list(outputs)
    base = cfg.init.mode == "base"
    # base: the GPT backbone only, a freshly initialised head; reward_model: the head too.
    model = load_from_nemo(AttributeRewardModel, cfg.model, trainer, strict=True, load_base_model_only=base,
                           restore_path=path)
    if layout is not None:
        keep_head_outputs(model, keep)
        with open_dict(cfg):
            cfg.model.regression.attributes = list(keep)
    return model


def seed_model_parallel_rng(seed: int) -> None:
    """NeMo only seeds megatron-core's model-parallel RNG tracker when a GPU is visible; dropout under TP needs it."""
    import torch

    if torch.cuda.device_count() == 0:
        from megatron.core import tensor_parallel

        tensor_parallel.model_parallel_cuda_manual_seed(seed)


def standalone_model(run_cfg: DictConfig):
    """A fresh ``AttributeRewardModel`` from ``run_cfg.model`` in this one process (no training flow): the Hugging Face
    importer fills it with converted weights."""
    from nemo_aligner.utils.train_script_utils import init_distributed, resolve_and_create_trainer

    from nemo_hs2.megatron import compat
    from nemo_hs2.megatron.reward_model import AttributeRewardModel

    compat.apply()
    trainer = resolve_and_create_trainer(run_cfg, "rm")
    model = AttributeRewardModel(run_cfg.model, trainer)
    init_distributed(trainer, model, False)
    return model
