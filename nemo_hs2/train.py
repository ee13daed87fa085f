"""Training flow: NeMo-Aligner's reward-model recipe with our data module, model and trainer plugged in."""

from __future__ import annotations

import os
import time

from omegaconf import DictConfig, OmegaConf, open_dict

from nemo_hs2 import compat
from nemo_hs2.config_checks import parallel_layout


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: DictConfig, trainer):
    from nemo_aligner.utils.utils import load_and_override_model_config, load_from_nemo

    from nemo_hs2.models.reward_model import AttributeRewardModel

    init = cfg.get("init", {}) or {}
    path = init.get("restore_from_path")
    if not path:
        return AttributeRewardModel(cfg.model, trainer)
    if not os.path.exists(path):
        raise FileNotFoundError(f"init.restore_from_path={path} does not exist")
    with open_dict(cfg):
        cfg.model = load_and_override_model_config(path, cfg.model)
    return load_from_nemo(AttributeRewardModel, cfg.model, trainer, strict=True,
                          load_base_model_only=init.get("mode", "base") == "base", restore_path=path)


def run(cfg: DictConfig) -> dict:
    """Train, validate and save; returns the metrics written to ``metrics.json``."""
    layout = parallel_layout(cfg)  # before any process group
    compat.apply()

    import torch
    from nemo.utils import logging
    from nemo.utils.exp_manager import exp_manager
    from nemo_aligner.data.nlp.builders import build_dataloader
    from nemo_aligner.utils.distributed import Timer
    from nemo_aligner.utils.train_script_utils import (
        CustomLoggerWrapper,
        add_custom_checkpoint_callback,
        extract_optimizer_scheduler_from_ptl_model,
        init_distributed,
        init_using_ptl,
        resolve_and_create_trainer,
        retrieve_custom_trainer_state_dict,
    )

    from nemo_hs2.data.build import build_datasets
    from nemo_hs2.data.dataset import Collator
    from nemo_hs2.data.preference import PairCollator, build_pair_datasets
    from nemo_hs2.trainer import MetricsRecorder, RewardModelTrainer

    started = time.time()
    _seed_everything(cfg.model.seed)
    trainer = resolve_and_create_trainer(cfg, "rm")
    exp_manager(trainer, cfg.exp_manager)
    recorder = MetricsRecorder()
    logger = CustomLoggerWrapper([*trainer.loggers, recorder])

    model = build_model(cfg, trainer)
    consumed_samples, trainer_state = 0, None
    if trainer.ckpt_path is not None:
        trainer_state = retrieve_custom_trainer_state_dict(trainer)
        consumed_samples = trainer_state["consumed_samples"]

    init_distributed(trainer, model, cfg.model.get("transformer_engine", False))
    compat.seed_model_parallel_rng(cfg.model.seed)

    if cfg.data.source == "preference":  # samples are whole pairs; batch sizes count pairs
        datasets, stats = build_pair_datasets(cfg.data, model.tokenizer, cfg.data.seq_length)
        collate = PairCollator(model.tokenizer.eos_id, cfg.data.pad_to_multiple)
    else:
        datasets, stats = build_datasets(cfg.data, model.tokenizer, cfg.data.seq_length)
        collate = Collator(model.tokenizer.eos_id, cfg.data.pad_to_multiple)
    for split, st in stats.items():
        logging.info(f"{split}: {st.rows} rows read, {st.used} used, {st.truncated} truncated, "
                     f"skipped {dict(st.skipped)}")
    gbs, mbs = cfg.model.global_batch_size, cfg.model.micro_batch_size
    train_dl = build_dataloader(cfg=cfg, dataset=datasets["train"], consumed_samples=consumed_samples, mbs=mbs,
                                gbs=gbs, collate_fn=collate, load_gbs=True,
                                use_random_sampler=cfg.trainer.rm.train_random_sampler)
    drop_last = cfg.data.get("validation_drop_last", False)
    val_dl = build_dataloader(cfg=cfg, dataset=datasets["validation"], consumed_samples=0, mbs=mbs, gbs=gbs,
                              collate_fn=collate, load_gbs=True, use_random_sampler=False, drop_last=drop_last,
                              pad_samples_to_global_batch_size=not drop_last)

    init_using_ptl(trainer, model, train_dl, datasets["train"])
    optimizer, scheduler = extract_optimizer_scheduler_from_ptl_model(model)
    ckpt_callback = add_custom_checkpoint_callback(trainer, model)
    logger.log_hyperparams(OmegaConf.to_container(cfg))

    rm_trainer = RewardModelTrainer(
        cfg=cfg.trainer.rm, model=model, optimizer=optimizer, scheduler=scheduler, train_dataloader=train_dl,
        val_dataloader=val_dl, test_dataloader=None, logger=logger, ckpt_callback=ckpt_callback,
        run_timer=Timer(cfg.exp_manager.get("max_time_per_run")),
        reward_weights=cfg.model.regression.reward_weights, score_range=cfg.data.score_range,
    )
    if trainer_state is not None:
        rm_trainer.load_state_dict(trainer_state)
    rm_trainer.fit()

    log_dir = str(cfg.exp_manager.explicit_log_dir or trainer.log_dir)
    summary = {
        "attributes": list(model.attributes),
        "layout": layout,
        "steps": rm_trainer.step,
        "consumed_samples": rm_trainer.consumed_samples,
        "wall_time_s": round(time.time() - started, 1),
        "data": {split: {"rows": st.rows, "used": st.used, "truncated": st.truncated, "skipped": dict(st.skipped)}
                 for split, st in stats.items()},
        "compat_patches": compat.applied(),
    }
    if torch.distributed.get_rank() == 0:
        os.makedirs(log_dir, exist_ok=True)
        recorder.write(os.path.join(log_dir, "metrics.json"), summary)
        logging.info(f"wrote {os.path.join(log_dir, 'metrics.json')}")
    torch.distributed.barrier()
    return {**summary, "final_validation": recorder.validation[-1] if recorder.validation else {}}
