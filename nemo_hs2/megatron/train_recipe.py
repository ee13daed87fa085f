"""Training flow: NeMo-Aligner's reward-model recipe with our data module, model and trainer plugged in."""

from __future__ import annotations

import logging
import os
import time

from omegaconf import DictConfig, OmegaConf, open_dict

from nemo_hs2.core.config import RegressionConfig, check_data
from nemo_hs2.data.build import RunData
from nemo_hs2.megatron import compat
from nemo_hs2.megatron.build import build_model, seed_model_parallel_rng
from nemo_hs2.megatron.tokenizer import build_tokenizer, checkpoint_tokenizer
from nemo_hs2.plan.checks import parallel_layout

log = logging.getLogger(__name__)  # nemo_hs2's own: shown by the quiet console


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

    from nemo_hs2.megatron import checkpoint_config

    # the architecture comes from the checkpoint: contradicting overrides fail here, before any process group
    saved = load_checkpoint_model_config(path)
    checkpoint_config.resolve(cfg.model, saved, path, *checkpoint_config.explicit_choices())
    if mode == "reward_model":
        from nemo_hs2.megatron.head_layout import head_attributes

        head_attributes(saved.get("regression"), path, layout,
                        list(cfg.model.regression.attributes))


RESUME_MODES = ("auto", "required", "never")


def configure_resume(cfg: DictConfig) -> str:
    """Map ``resume`` onto exp_manager and set aside checkpoints a kill left unfinished; returns the checkpoint dir.

    auto: continue from the run directory's last complete checkpoint if there is one (re-running the same command
    after a kill continues the run); required: it is an error if there is none (requeued jobs: a mistyped
    directory must not silently start from scratch); never: it is an error if the run directory has checkpoints.
    """
    from nemo_hs2.megatron.faults import set_aside_unfinished_checkpoints

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


def run(cfg: DictConfig) -> dict:
    """Train, validate and save; returns the metrics written to ``metrics.json``.

    Before any process group or model: the layout rules, the start checkpoint, and the data (read, rendered,
    tokenized and checked to fill a global batch). If another rank dies or hangs, this rank exits with status 75
    (requeue) within ``collective_timeout_s``.
    """
    layout = parallel_layout(cfg)
    check_data(cfg.data)
    RegressionConfig.from_cfg(cfg.model.regression)
    compat.apply()
    check_init(cfg)
    data = run_data(cfg)
    from nemo_hs2.megatron.faults import requeue_if_a_rank_is_lost

    with requeue_if_a_rank_is_lost(cfg.collective_timeout_s):
        return _train(cfg, layout, data)


def run_data(cfg: DictConfig) -> RunData:
    """The run's datasets, built with the tokenizer the model will have (the start checkpoint's, else the config's)."""
    from nemo_hs2.data.build import build_run_data

    path = (cfg.get("init") or {}).get("restore_from_path")
    tokenizer = checkpoint_tokenizer(path) if path else build_tokenizer(cfg.model.tokenizer)
    return build_run_data(cfg.data, tokenizer, int(cfg.model.global_batch_size),
                          RegressionConfig.from_cfg(cfg.model.regression).loss_func)


def _train(cfg: DictConfig, layout: dict, data: RunData) -> dict:
    configure_resume(cfg)

    import torch
    from nemo.utils.exp_manager import exp_manager
    from nemo_aligner.utils.train_script_utils import (
        CustomLoggerWrapper,
        add_custom_checkpoint_callback,
        extract_optimizer_scheduler_from_ptl_model,
        init_distributed,
        init_using_ptl,
        resolve_and_create_trainer,
        retrieve_custom_trainer_state_dict,
    )

    from nemo_hs2.data.cache import tokenizer_identity
    from nemo_hs2.megatron.faults import FiniteStepGuard, PreemptionTimer, RngStateCheckpoint, set_collective_timeout
    from nemo_hs2.megatron.rm_trainer import MetricsRecorder, RewardModelTrainer

    started = time.time()
    _seed_everything(cfg.model.seed)
    trainer = resolve_and_create_trainer(cfg, "rm")
    set_collective_timeout(trainer, cfg.collective_timeout_s)
    trainer.callbacks.append(RngStateCheckpoint())
    log_dir = str(exp_manager(trainer, cfg.exp_manager))
    summary = {"layout": layout, "compat_patches": compat.applied()}
    recorder = MetricsRecorder(os.path.join(log_dir, "metrics.json"), summary)
    logger = CustomLoggerWrapper([*trainer.loggers, recorder])

    model = build_model(cfg, trainer)
    if tokenizer_identity(model.tokenizer) != tokenizer_identity(data.tokenizer):
        raise RuntimeError("the model built a different tokenizer from the one the data was tokenized with "
                           f"({tokenizer_identity(model.tokenizer)} vs {tokenizer_identity(data.tokenizer)})")
    consumed_samples, trainer_state = 0, None
    if trainer.ckpt_path is not None:
        trainer_state = retrieve_custom_trainer_state_dict(trainer)
        consumed_samples = trainer_state["consumed_samples"]
        recorder.resume_from(trainer_state["step"])
        log.info(f"resuming from {trainer.ckpt_path} at step {trainer_state['step']}")

    init_distributed(trainer, model, cfg.model.get("transformer_engine", False))
    seed_model_parallel_rng(cfg.model.seed)

    for split, st in data.stats.items():
        log.info(f"{split}: {st.rows} rows read, {st.used} used, {st.truncated} truncated, "
                     f"skipped {dict(st.skipped)}")
    train_dl, val_dl = dataloaders(cfg, data, consumed_samples)
    init_using_ptl(trainer, model, train_dl, data.datasets["train"])
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
        for split, st in data.stats.items()}})
    rm_trainer.fit()

    summary.update({"steps": rm_trainer.step, "consumed_samples": rm_trainer.consumed_samples,
                    "skipped_steps": model.skipped_steps, "preempted": timer.preempted,
                    "wall_time_s": round(time.time() - started, 1)})
    recorder.write(extra=summary)
    log.info(f"wrote {recorder.path}" + (f" (stopped by {timer.signal_received})" if timer.preempted else ""))
    torch.distributed.barrier()
    return {**summary, "final_validation": recorder.validation[-1] if recorder.validation else {},
            "metrics_path": recorder.path}


def dataloaders(cfg: DictConfig, data: RunData, consumed_samples: int):
    """The training loader (Megatron's random sampler, or its length-grouped subclass; sequential with
    ``trainer.rm.train_random_sampler=false``) and the validation loader (every row once, padded to whole batches)."""
    import torch
    from nemo_aligner.data.nlp.builders import build_dataloader
    from nemo_aligner.utils import parallel_state

    from nemo_hs2.megatron.sampler import build_train_sampler

    train, collate = data.datasets["train"], data.collate
    gbs, mbs = cfg.model.global_batch_size, cfg.model.micro_batch_size
    if cfg.trainer.rm.train_random_sampler:
        sampler = build_train_sampler(cfg.data, train, consumed_samples, mbs, gbs,
                                      parallel_state.get_data_parallel_rank(),
                                      parallel_state.get_data_parallel_world_size(), cfg.model.seed)
        # Its own generator: starting an epoch must not draw from the global stream (dropout masks; exact resume).
        train_dl = torch.utils.data.DataLoader(train, batch_sampler=sampler, collate_fn=collate,
                                               num_workers=cfg.model.data.num_workers,
                                               generator=torch.Generator().manual_seed(cfg.model.seed))
    else:
        train_dl = build_dataloader(cfg=cfg, dataset=train, consumed_samples=consumed_samples, mbs=mbs, gbs=gbs,
                                    collate_fn=collate, load_gbs=True, use_random_sampler=False)
    drop_last = cfg.data.get("validation_drop_last", False)
    val_dl = build_dataloader(cfg=cfg, dataset=data.datasets["validation"], consumed_samples=0, mbs=mbs, gbs=gbs,
                              collate_fn=collate, load_gbs=True, use_random_sampler=False, drop_last=drop_last,
                              pad_samples_to_global_batch_size=not drop_last)
    return train_dl, val_dl
