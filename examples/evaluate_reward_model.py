"""Evaluate a trained reward model on RewardBench 1 / 2, HelpSteer2 rated rows and the preference sets.

    python examples/evaluate_reward_model.py checkpoint=results/hs2_reward_model/checkpoints/hs2_reward_model.nemo \
        rewardbench.file=reward_bench_filtered.parquet helpsteer2.file=validation.jsonl.gz output_dir=results/eval
    python examples/evaluate_reward_model.py checkpoint=X.nemo helpsteer3.file=validation.jsonl.gz output_dir=D
    torchrun --nproc_per_node 8 examples/evaluate_reward_model.py trainer=gpu trainer.devices=8 \
        model.tensor_model_parallel_size=8 checkpoint=... rewardbench.file=hub output_dir=...

Config: conf/evaluate_reward_model.yaml; rows are scored with the checkpoint's own template and system prompt (see
nemo_hs2/evaluation/).
"""

import json

from nemo_hs2.cli.entry import hydra_entry, print_main


@hydra_entry("evaluate_reward_model", name="evaluate_reward_model")
def main(cfg):
    from nemo_hs2.evaluation.run import run

    summary = run(cfg)
    print_main(json.dumps({k: v for k, v in summary.items() if k != "files"}, indent=1))
    print_main("wrote:\n  " + "\n  ".join(summary["files"]))


if __name__ == "__main__":
    main()
