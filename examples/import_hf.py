"""Import a Hugging Face causal LM as a base .nemo (architecture and tokenizer from the HF files).

    python examples/import_hf.py input=/models/Meta-Llama-3-70B output=/models/llama-3-70b.nemo
    python examples/import_hf.py input_gguf=SmolLM2-135M-Instruct.Q4_1.gguf output=smollm2.nemo
"""

import json

from omegaconf import OmegaConf

from nemo_hs2.models.hf_import import run

OmegaConf.register_new_resolver("multiply", lambda x, y: x * y, replace=True)
OmegaConf.register_new_resolver("int_div", lambda x, y: x // y, replace=True)


def _main():
    from nemo.core.config import hydra_runner

    @hydra_runner(config_path="../conf", config_name="import_hf")
    def main(cfg) -> None:
        report = run(cfg)
        text = json.dumps(report, indent=1)
        print(text)
        if cfg.get("report"):
            with open(cfg.report, "w") as f:
                f.write(text + "\n")

    main()


if __name__ == "__main__":
    _main()
