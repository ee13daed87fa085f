"""The real training entry with one injected fault, for tests/test_faults.py.

    python tests/workers/train_with_fault.py FAULT STEP [hydra overrides...]

FAULT is ``nan`` (the regression loss turns NaN at STEP), ``kill_during_save`` (the trainer alone is SIGKILLed
while megatron-core's writer processes write the "-last" checkpoint of STEP, as the OOM killer or ``kill -9`` would)
or ``kill_rank:R`` (rank R SIGKILLs itself in the forward pass of training step STEP).
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
        import time

        from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync as Writer

        real_write = Writer.write_preloaded_data  # runs in a writer process forked by the trainer

        def write(local_proc_idx, write_bucket, *args, **kwargs):
            name = os.path.basename(os.path.dirname(str(write_bucket[0])))
            if f"step={step}-" in name and name.endswith("-last"):
                os.kill(os.getppid(), signal.SIGKILL)
                time.sleep(2.0)  # still writing when the trainer is gone
            return real_write(local_proc_idx, write_bucket, *args, **kwargs)

        Writer.write_preloaded_data = staticmethod(write)
    elif fault.startswith("kill_rank:"):
        import torch

        import nemo_hs2.models.reward_model as rm
        from nemo_hs2.trainer import RewardModelTrainer

        rank, state = int(fault.split(":")[1]), {"step": 0}
        real_step, real_loss = RewardModelTrainer.train_single_step, rm.losses.masked_mse_sum

        def train_single_step(self, batch):
            state["step"] = self.step + 1
            return real_step(self, batch)

        def loss(pred, target, mask):
            if state["step"] == step and torch.is_grad_enabled() and torch.distributed.get_rank() == rank:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_loss(pred, target, mask)

        RewardModelTrainer.train_single_step, rm.losses.masked_mse_sum = train_single_step, loss
    else:
        raise SystemExit(f"unknown fault {fault}")

    from nemo_hs2.train import run

    run(cfg)


if __name__ == "__main__":
    main()
