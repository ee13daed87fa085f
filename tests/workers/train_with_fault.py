"""The real training entry with one injected fault, for tests/test_faults.py.

    python tests/workers/train_with_fault.py FAULT STEP [hydra overrides...]

FAULT is ``nan`` (the regression loss turns NaN at STEP) or ``kill_during_save`` (SIGKILL after the checkpoint
files of STEP are written but before NeMo clears its unfinished marker).
"""

import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    fault, step, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("multiply", lambda x, y: x * y, replace=True)
    OmegaConf.register_new_resolver("int_div", lambda x, y: x // y, replace=True)
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base=None):
        cfg = compose(config_name="train_reward_model", overrides=overrides)

    if fault == "nan":
        import nemo_hs2.models.reward_model as rm

        calls = {"n": 0}
        real = rm.losses.masked_mse_sum
        micro_batches = cfg.model.global_batch_size // cfg.model.micro_batch_size

        def poisoned(pred, target, mask):
            calls["n"] += 1
            out = real(pred, target, mask)
            in_step = (calls["n"] - 1) // micro_batches + 1  # training only: validation is off in this run
            return out * float("nan") if in_step == step else out

        rm.losses.masked_mse_sum = poisoned
    elif fault == "kill_during_save":
        from nemo.utils.callbacks.nemo_model_checkpoint import NeMoModelCheckpoint

        real_remove = NeMoModelCheckpoint.remove_checkpoint_unfinished_marker

        def remove(checkpoint_path, barrier_before=False):
            name = os.path.basename(str(checkpoint_path))
            if f"step={step}-" in name and "-last" in name:
                os.killpg(os.getpgrp(), signal.SIGKILL)  # the whole job, as a scheduler would
            return real_remove(checkpoint_path, barrier_before)

        NeMoModelCheckpoint.remove_checkpoint_unfinished_marker = staticmethod(remove)
    else:
        raise SystemExit(f"unknown fault {fault}")

    from nemo_hs2.train import run

    run(cfg)


if __name__ == "__main__":
    main()
