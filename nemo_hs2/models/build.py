"""The reward model a config asks for: fresh, or started from a ``.nemo`` (``init.mode``: backbone or whole)."""

from __future__ import annotations

from omegaconf import DictConfig, open_dict


def build_model(cfg: DictConfig, trainer):
    from nemo_aligner.utils.utils import load_and_override_model_config, load_from_nemo

    from nemo_hs2.models.reward_model import AttributeRewardModel

    path = (cfg.get("init") or {}).get("restore_from_path")
    if not path:
        return AttributeRewardModel(cfg.model, trainer)
    with open_dict(cfg):
        cfg.model = load_and_override_model_config(path, cfg.model)
    # base: the GPT backbone only, a freshly initialised head; reward_model: the head too.
    return load_from_nemo(AttributeRewardModel, cfg.model, trainer, strict=True,
                          load_base_model_only=cfg.init.mode == "base", restore_path=path)
