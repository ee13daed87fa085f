"""Export a trained nemo_hs2 reward model (.nemo, any TP / PP layout) as a Hugging Face sequence classifier.

    python examples/export_hf.py checkpoint=RM.nemo output_dir=RM_hf                      # one logit per attribute
    python examples/export_hf.py checkpoint=RM.nemo output_dir=RM_hf_reward export.head=reward export.dtype=bfloat16

The directory loads with transformers.AutoModelForSequenceClassification (Llama / Nemotron) and AutoTokenizer; its
README.md says how to score. See nemo_hs2/models/hf_export.py.
"""

import json
import sys

from omegaconf import OmegaConf

OmegaConf.register_new_resolver("multiply", lambda x, y: x * y, replace=True)
OmegaConf.register_new_resolver("int_div", lambda x, y: x // y, replace=True)


def _main():
    from nemo.core.config import hydra_runner

    from nemo_hs2.models.hf import UnsupportedModel
    from nemo_hs2.models.hf_export import run

    @hydra_runner(config_path="../conf", config_name="export_hf")
    def main(cfg) -> None:
        try:
            report = run(cfg)
        except (UnsupportedModel, FileNotFoundError, FileExistsError, ValueError) as e:
            print(f"export_hf: error: {e}", file=sys.stderr)
            sys.exit(1)
        print(json.dumps(report, indent=1))

    main()


if __name__ == "__main__":
    _main()
