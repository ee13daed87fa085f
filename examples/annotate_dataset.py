"""Label a dataset of conversations with a trained reward model's attributes (SteerLM-style: clamped to 0-4,
rounded unless annotate.round=false).

    python examples/annotate_dataset.py checkpoint=results/hs2_reward_model/checkpoints/hs2_reward_model.nemo \
        input=conversations.jsonl output_dir=results/annotated

Resumable: run the same command again after a kill and it continues after the last completed batch. The input is
never modified. Config: conf/annotate_dataset.yaml; details: nemo_hs2/evaluation/annotate.py.
"""

import json

from nemo_hs2.cli.entry import hydra_entry, print_main


@hydra_entry("annotate_dataset", name="annotate_dataset")
def main(cfg):
    from omegaconf import OmegaConf

    from nemo_hs2.core.rank import is_main_rank
    from nemo_hs2.evaluation.annotate import AnnotateOptions, annotate, count_rows
    from nemo_hs2.evaluation.run import load_model, make_scorer

    options = AnnotateOptions(**OmegaConf.to_container(cfg.annotate, resolve=True))
    options.score_range = tuple(options.score_range)
    if count_rows(str(cfg.input)) is None:  # unreadable before the model is built, not after
        raise ValueError(f"{cfg.input}: not a readable .jsonl, .jsonl.gz or .parquet file")
    summary = annotate(make_scorer(load_model(cfg), cfg), str(cfg.input), str(cfg.output_dir), options,
                       progress=bool(cfg.progress), main=is_main_rank())
    print_main(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
