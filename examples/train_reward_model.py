"""Train a HelpSteer2 attribute-regression reward model.

    python examples/train_reward_model.py                                   # the CPU demo
    torchrun --nproc_per_node 2 examples/train_reward_model.py trainer.devices=2 model.tensor_model_parallel_size=2
    python examples/train_reward_model.py data=helpsteer2 data.train_file=train.jsonl.gz data.validation_file=...
    python examples/train_reward_model.py verbose=true      # every third-party message (nemo_hs2/cli/console.py)

Config: conf/train_reward_model.yaml. Exit status 75 when pre-empted (checkpoint saved; the SLURM scripts requeue).
"""

from nemo_hs2.cli.entry import hydra_entry, print_main


@hydra_entry("train_reward_model", name="train_reward_model")
def main(cfg):
    from hydra.core.hydra_config import HydraConfig

    from nemo_hs2.cli.run_summary import run_header, run_summary
    from nemo_hs2.megatron.faults import leave_after_preemption
    from nemo_hs2.megatron.train_recipe import run

    choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    print_main(run_header(cfg, choices))
    result = run(cfg)
    print_main(run_summary(result))
    # pre-empted, checkpoint saved: every rank leaves with 75 (the SLURM scripts requeue), none before all are done
    return leave_after_preemption(cfg.collective_timeout_s) if result["preempted"] else 0


if __name__ == "__main__":
    main()
