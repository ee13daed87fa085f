"""Import a Hugging Face causal LM as a base .nemo (architecture and tokenizer from the HF files).

    python examples/import_hf.py input=/models/Meta-Llama-3-70B output=/models/llama-3-70b.nemo
    python examples/import_hf.py input_gguf=SmolLM2-135M-Instruct.Q4_1.gguf output=smollm2.nemo

Config: conf/import_hf.yaml; see nemo_hs2/hf/importer.py. A model it cannot represent exactly is refused, naming
the field.
"""

import json

from nemo_hs2.cli.entry import hydra_entry


@hydra_entry("import_hf", name="import_hf")
def main(cfg):
    from nemo_hs2.hf.importer import run

    text = json.dumps(run(cfg), indent=1)
    print(text)
    if cfg.get("report"):
        with open(cfg.report, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
