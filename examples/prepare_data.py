"""Validate, tokenize and cache the data a training config names, and report on it, without building a model.

    python examples/prepare_data.py data.train_file=train.jsonl.gz data.validation_file=validation.jsonl.gz \
        output_dir=results/hs2_data

The data group defaults to helpsteer2 (this tool's job is real data; data=demo and the others still work).
Composes conf/train_reward_model.yaml (through conf/prepare_data.yaml), so every data, model.tokenizer and
model.encoder_seq_length override means what it means for training, and a later training run with the same
settings reads the cache instead of tokenizing. Writes OUTPUT_DIR/data_report.json and prints a summary.
"""

from nemo_hs2.cli.entry import hydra_entry


@hydra_entry("prepare_data", name="prepare_data", quiet=False)
def main(cfg):
    from nemo_hs2.data.build import prepare, validate
    from nemo_hs2.data.report import format_report
    from nemo_hs2.megatron.tokenizer import build_tokenizer

    # Rows first: a bad row is reported in a second or two, before NeMo (and its tokenizers) is imported.
    loaded = validate(cfg.data)
    tokenizer = build_tokenizer(cfg.model.tokenizer)
    report = prepare(cfg.data, tokenizer, int(cfg.data.seq_length), cfg.output_dir, progress=True, loaded=loaded)
    print(format_report(report))
    print(f"\nwrote {cfg.output_dir}/data_report.json")


if __name__ == "__main__":
    main()
