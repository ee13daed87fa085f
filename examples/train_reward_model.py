"""Train a HelpSteer2 attribute-regression reward model.

    python examples/train_reward_model.py                                   # the CPU demo
    torchrun --nproc_per_node 2 examples/train_reward_model.py trainer.devices=2 model.tensor_model_parallel_size=2
    python examples/train_reward_model.py data=helpsteer2 data.train_file=train.jsonl.gz data.validation_file=...
    python examples/train_reward_model.py verbose=true      # every third-party message (nemo_hs2/quiet.py)
"""

import os
import sys

from omegaconf import OmegaConf

from nemo_hs2 import quiet

OmegaConf.register_new_resolver("multiply", lambda x, y: x * y, replace=True)
OmegaConf.register_new_resolver("int_div", lambda x, y: x // y, replace=True)


def _main():
    from nemo.core.config import hydra_runner

    @hydra_runner(config_path="../conf", config_name="train_reward_model")
    def main(cfg) -> None:
        from hydra.core.hydra_config import HydraConfig

        quiet.install(verbose=bool(cfg.get("verbose", False)))
        from nemo_hs2.faults import EXIT_PREEMPTED  # after install: importing NeMo-Aligner logs
        from nemo_hs2.train import run

        main_rank = int(os.environ.get("RANK", "0")) == 0
        if main_rank:
            print(quiet.run_header(cfg, dict(HydraConfig.get().runtime.choices)), flush=True)
        result = run(cfg)
        if main_rank:
            print(quiet.run_summary(result), flush=True)
        if result["preempted"]:  # checkpoint saved; the SLURM scripts requeue on this status
            sys.exit(EXIT_PREEMPTED)

    main()


if __name__ == "__main__":
    _main()
