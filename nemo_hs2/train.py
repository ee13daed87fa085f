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


INIT_MODES = ("base", "reward_model")


def check_init(cfg: DictConfig) -> None:
    """Reject a start checkpoint that cannot be what the config asks for, before any process group exists."""
    init = cfg.get("init") or {}
    path, mode = init.get("restore_from_path"), init.get("mode", "base")
    if mode not in INIT_MODES:
        raise ValueError(f"init.mode must be one of {INIT_MODES}, got '{mode}'")
    if not path:
        return
    if not os.path.exists(path):
        raise FileNotFoundError(f"init.restore_from_path={path} does not exist")
    layout = init.get("head_layout")
    if layout is not None and mode != "reward_model":
        raise ValueError("init.head_layout names a checkpoint's head outputs, so it needs init.mode=reward_model")
    from nemo_aligner.utils.utils import load_checkpoint_model_config

    from nemo_hs2.models import checkpoint_config

    # the architecture comes from the checkpoint: contradicting overrides fail here, before any process group
    saved = load_checkpoint_model_config(path)
    checkpoint_config.resolve(cfg.model, saved, path, *checkpoint_config.explicit_choices())
    if mode == "reward_model":
        from nemo_hs2.models.head_layout import head_attributes

        head_attributes(saved.get("regression"), path, layout,
                        list(cfg.model.regression.attributes))


RESUME_MODES = ("auto", "required", "never")


def configure_resume(cfg: DictConfig) -> str:
    """Map ``resume`` onto exp_manager and set aside checkpoints a kill left unfinished; returns the checkpoint dir.

    auto: continue from the run directory's last complete checkpoint if there is one (re-running the same command
    after a kill continues the run); required: it is an error if there is none (requeued jobs: a mistyped
    directory must not silently start from scratch); never: it is an error if the run directory has checkpoints.
    """
    from nemo_hs2.faults import set_aside_unfinished_checkpoints

    mode = cfg.get("resume", "auto")
    if mode not in RESUME_MODES:
        raise ValueError(f"resume must be one of {RESUME_MODES}, got '{mode}'")
    explicit = cfg.exp_manager.get("resume_from_checkpoint")
    if explicit and not os.path.exists(explicit):
        raise FileNotFoundError(f"exp_manager.resume_from_checkpoint={explicit} does not exist")
    log_dir = cfg.exp_manager.get("explicit_log_dir")
    ckpt_dir = os.path.join(str(log_dir), "checkpoints") if log_dir else None
    if ckpt_dir:
        set_aside_unfinished_checkpoints(ckpt_dir)
    has_ckpt = bool(ckpt_dir) and os.path.isdir(ckpt_dir) and any(
        p.endswith("-last") or p.endswith("last.ckpt") for p in os.listdir(ckpt_dir))
    if mode == "required" and not has_ckpt and not explicit:
        raise FileNotFoundError(f"resume=required but no checkpoint to resume from in {ckpt_dir}")
    if mode == "never" and has_ckpt:
        raise FileExistsError(f"resume=never but {ckpt_dir} holds checkpoints: use a new exp_manager.explicit_log_dir")
    with open_dict(cfg):
        cfg.exp_manager.resume_if_exists = mode != "never"
        cfg.exp_manager.resume_ignore_no_checkpoint = mode == "auto"
    return ckpt_dir


def build_model(cfg: DictConfig, trainer):
    from nemo_aligner.utils.utils import load_and_override_model_config, load_from_nemo

    from nemo_hs2.models.reward_model import AttributeRewardModel

    path = (cfg.get("init") or {}).get("restore_from_path")
    if not path:
        return AttributeRewardModel(cfg.model, trainer)
    from nemo_aligner.utils.utils import load_checkpoint_model_config

    from nemo_hs2.models import checkpoint_config

    saved = load_checkpoint_model_config(path)
    layout = cfg.init.get("head_layout")
    if layout is not None:  # a positional head: load it whole under its layout's names, then keep ours by name
        from nemo_hs2.models.head_layout import head_attributes, keep_head_outputs

        outputs, keep = head_attributes(saved.get("regression"), path, layout,
                                        (cfg.model.get("regression") or {}).get("attributes"))
    keys, preset_chosen = checkpoint_config.explicit_choices()
    run_model = checkpoint_config.resolve(cfg.model, saved, path, keys, preset_chosen)
    with open_dict(cfg):
        cfg.model = load_and_override_model_config(path, run_model)
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


def run(cfg: DictConfig) -> dict:
    """Train, validate and save; returns the metrics written to ``metrics.json``."""
    layout = parallel_layout(cfg)  # before any process group
    compat.apply()
    check_init(cfg)
    configure_resume(cfg)

    import torch
    from nemo.utils import logging
    from nemo.utils.exp_manager import exp_manager
    from nemo_aligner.data.nlp.builders import build_dataloader
    from nemo_aligner.utils import parallel_state
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
    from nemo_hs2.data.sampler import build_train_sampler
    from nemo_hs2.faults import FiniteStepGuard, PreemptionTimer
    from nemo_hs2.trainer import MetricsRecorder, RewardModelTrainer

    started = time.time()
    _seed_everything(cfg.model.seed)
    trainer = resolve_and_create_trainer(cfg, "rm")
    log_dir = str(exp_manager(trainer, cfg.exp_manager))
    summary = {"layout": layout, "compat_patches": compat.applied()}
    recorder = MetricsRecorder(os.path.join(log_dir, "metrics.json"), summary)
    logger = CustomLoggerWrapper([*trainer.loggers, recorder])

    model = build_model(cfg, trainer)
    consumed_samples, trainer_state = 0, None
    if trainer.ckpt_path is not None:
        trainer_state = retrieve_custom_trainer_state_dict(trainer)
        consumed_samples = trainer_state["consumed_samples"]
        recorder.resume_from(trainer_state["step"])
        logging.info(f"resuming from {trainer.ckpt_path} at step {trainer_state['step']}")

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
    if cfg.trainer.rm.train_random_sampler:  # Megatron's random sampler, or its length-grouped subclass
        sampler = build_train_sampler(cfg.data, datasets["train"], consumed_samples, mbs, gbs,
                                      parallel_state.get_data_parallel_rank(),
                                      parallel_state.get_data_parallel_world_size(), cfg.model.seed)
        train_dl = torch.utils.data.DataLoader(datasets["train"], batch_sampler=sampler, collate_fn=collate,
                                               num_workers=cfg.model.data.num_workers)
    else:
        train_dl = build_dataloader(cfg=cfg, dataset=datasets["train"], consumed_samples=consumed_samples, mbs=mbs,
                                    gbs=gbs, collate_fn=collate, load_gbs=True, use_random_sampler=False)
    drop_last = cfg.data.get("validation_drop_last", False)
    val_dl = build_dataloader(cfg=cfg, dataset=datasets["validation"], consumed_samples=0, mbs=mbs, gbs=gbs,
                              collate_fn=collate, load_gbs=True, use_random_sampler=False, drop_last=drop_last,
                              pad_samples_to_global_batch_size=not drop_last)

    init_using_ptl(trainer, model, train_dl, datasets["train"])
    optimizer, scheduler = extract_optimizer_scheduler_from_ptl_model(model)
    ckpt_callback = add_custom_checkpoint_callback(trainer, model)
    logger.log_hyperparams(OmegaConf.to_container(cfg))

    timer = PreemptionTimer(cfg.exp_manager.get("max_time_per_run"))
    rm_trainer = RewardModelTrainer(
        cfg=cfg.trainer.rm, model=model, optimizer=optimizer, scheduler=scheduler, train_dataloader=train_dl,
        val_dataloader=val_dl, test_dataloader=None, logger=logger, ckpt_callback=ckpt_callback, run_timer=timer,
        run_init_validation=cfg.trainer.rm.get("run_init_validation", False),
        reward_weights=model.reward_weights, score_range=cfg.data.score_range,
    )
    rm_trainer.optimizer = FiniteStepGuard(optimizer, model, rm_trainer)
    if trainer_state is not None:
        rm_trainer.load_state_dict(trainer_state)
    summary.update({"attributes": list(model.attributes), "data": {
        split: {"rows": st.rows, "used": st.used, "truncated": st.truncated, "unpaired": st.unpaired,
                "skipped": dict(st.skipped)}
        for split, st in stats.items()}})
    rm_trainer.fit()

    summary.update({"steps": rm_trainer.step, "consumed_samples": rm_trainer.consumed_samples,
                    "preempted": timer.preempted, "wall_time_s": round(time.time() - started, 1)})
    recorder.write(extra=summary)
    logging.info(f"wrote {recorder.path}" + (f" (stopped by {timer.signal_received})" if timer.preempted else ""))
    torch.distributed.barrier()
    return {**summary, "final_validation": recorder.validation[-1] if recorder.validation else {}}
