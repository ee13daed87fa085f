"""The real training entry with one injected fault, for tests/test_faults.py.

    python tests/workers/train_with_fault.py FAULT STEP [hydra overrides...]

FAULT is ``nan`` (the regression loss turns NaN at STEP), ``kill_during_save`` (the trainer alone is SIGKILLed
while megatron-core's writer processes write the "-last" checkpoint of STEP, as the OOM killer or ``kill -9`` would)
``kill_rank:R`` (rank R SIGKILLs itself in the forward pass of training step STEP), ``stop_rank:R`` (the same with
SIGSTOP: a hung rank) or ``nan_grad`` (the loss of STEP stays finite, its backward pass turns NaN).

With ``model.optim.name=mcore_distributed_optim`` on a machine without CUDA, CPU tensors report CUDA type names
(test-only): megatron-core's distributed optimizer dispatches on ``param.type()`` and otherwise refuses CPU tensors.
"""

import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def in_training_step(step, fn):
    """Pass the predictions of training step ``step`` (not validation) through ``fn`` before the loss."""
    import torch

    import nemo_hs2.megatron.reward_model as rm
    from nemo_hs2.megatron.rm_trainer import RewardModelTrainer

    state = {"step": 0}
    real_step, real_loss = RewardModelTrainer.train_single_step, rm.losses.masked_mse_sum

    def train_single_step(self, batch):
        state["step"] = self.step + 1
        return real_step(self, batch)

    def loss(pred, target, mask):
        if state["step"] == step and torch.is_grad_enabled():
            pred = fn(pred)
        return real_loss(pred, target, mask)

    RewardModelTrainer.train_single_step, rm.losses.masked_mse_sum = train_single_step, loss


def cuda_type_names():
    import torch

    if torch.cuda.is_available():
        return
    real_type = torch.Tensor.type

    def type_name(self, *args, **kwargs):
        name = real_type(self, *args, **kwargs)
        if args or kwargs or not isinstance(name, str) or name.startswith("torch.cuda."):
            return name
        return name.replace("torch.", "torch.cuda.", 1)

    torch.Tensor.type = type_name


def main():
    fault, step, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    trainer_pid = os.getpid()
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("multiply", lambda x, y: x * y, replace=True)
    OmegaConf.register_new_resolver("int_div", lambda x, y: x // y, replace=True)
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base=None):
        cfg = compose(config_name="train_reward_model", overrides=overrides)

    if cfg.model.optim.name == "mcore_distributed_optim":
        cuda_type_names()

    if fault == "nan":
        import nemo_hs2.megatron.reward_model as rm

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

        real_write = Writer.write_preloaded_data  # runs in a writer process, a grandchild of the trainer

        def write(local_proc_idx, write_bucket, *args, **kwargs):
            name = os.path.basename(os.path.dirname(str(write_bucket[0])))
            if f"step={step}-" in name and name.endswith("-last"):
                os.kill(trainer_pid, signal.SIGKILL)
                time.sleep(2.0)  # still writing when the trainer is gone
            return real_write(local_proc_idx, write_bucket, *args, **kwargs)

        Writer.write_preloaded_data = staticmethod(write)
    elif fault.startswith(("kill_rank:", "stop_rank:")):
        import torch

        rank, how = int(fault.split(":")[1]), signal.SIGKILL if fault.startswith("kill") else signal.SIGSTOP

        def kill(pred):
            if torch.distributed.get_rank() == rank:
                os.kill(os.getpid(), how)
            return pred

        in_training_step(step, kill)
    elif fault == "nan_grad":
        import torch

        class NanBackward(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x.view_as(x)

            @staticmethod
            def backward(ctx, grad):
                return grad * float("nan")

        in_training_step(step, NanBackward.apply)
    else:
        raise SystemExit(f"unknown fault {fault}")

    from nemo_hs2.megatron.train_recipe import run

    run(cfg)


if __name__ == "__main__":
    main()
