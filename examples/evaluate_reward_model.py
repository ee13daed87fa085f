"""Evaluate a trained reward model on RewardBench and/or HelpSteer2-style rated rows.

    python examples/evaluate_reward_model.py checkpoint=results/hs2_reward_model/checkpoints/hs2_reward_model.nemo \
        rewardbench.file=reward_bench_filtered.parquet helpsteer2.file=validation.jsonl.gz output_dir=results/eval
    torchrun --nproc_per_node 8 examples/evaluate_reward_model.py trainer=gpu trainer.devices=8 \
        model.tensor_model_parallel_size=8 checkpoint=... rewardbench.file=hub output_dir=...

Config: conf/evaluate_reward_model.yaml. RewardBench rows are scored with the checkpoint's own template (prompt as
the user turn, chosen / rejected as the assistant turn) and the weighted reward; see nemo_hs2/evaluation/.
"""

import json
import sys

import hydra


@hydra.main(config_path="../conf", config_name="evaluate_reward_model", version_base="1.3")
def main(cfg) -> None:
    from nemo_hs2.data.sources import BadRowError, HubUnavailableError
    from nemo_hs2.evaluation.run import run
    from nemo_hs2.models.loading import is_main_rank

    try:
        summary = run(cfg)
    except (BadRowError, HubUnavailableError, FileNotFoundError, ValueError) as e:
        print(f"evaluate_reward_model: error: {e}", file=sys.stderr)
        sys.exit(1)
    if is_main_rank():
        print(json.dumps({k: v for k, v in summary.items() if k != "files"}, indent=1))
        print("wrote:\n  " + "\n  ".join(summary["files"]))


if __name__ == "__main__":
    main()
