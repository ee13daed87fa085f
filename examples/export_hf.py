"""Export a trained nemo_hs2 reward model (.nemo, any TP / PP layout) as a Hugging Face sequence classifier.

    python examples/export_hf.py checkpoint=RM.nemo output_dir=RM_hf                      # one logit per attribute
    python examples/export_hf.py checkpoint=RM.nemo output_dir=RM_hf_reward export.head=reward export.dtype=bfloat16
    python examples/export_hf.py checkpoint=Nemotron-4-340B-Reward output_dir=N340_hf head_layout=aligner_9slot

The directory loads with transformers.AutoModelForSequenceClassification (Llama / Nemotron / GPT-NeoX) and
AutoTokenizer (a Hugging Face fast tokenizer; NeMo's byte-level and SentencePiece tokenizers are converted and
checked id for id); its README.md says how to score. See nemo_hs2/hf/exporter.py.
"""

import json

from nemo_hs2.cli.entry import hydra_entry


@hydra_entry("export_hf", name="export_hf")
def main(cfg):
    from nemo_hs2.hf.exporter import run

    print(json.dumps(run(cfg), indent=1))


if __name__ == "__main__":
    main()
