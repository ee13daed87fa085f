"""benchmarks/peer_bt.py --smoke: nemo_hs2 and TRL's RewardTrainer on the same Bradley-Terry job give the same loop.

SmolLM2-135M-Instruct cut to 2 layers, 3 steps of 4 pairs; TRL from its own environment (scripts/ecosystem_env.sh). The
script itself stops if TRL's tokenization of a pair differs from nemo_hs2's, or a step's batch differs.
"""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.test_smollm2 import smollm2_gguf

pytestmark = pytest.mark.slow  # an import, an export, two training runs and a side environment: minutes


def trl_python():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "ecosystem_env.sh")], cwd=ROOT, capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode:
        pytest.skip(f"the TRL environment could not be built (no package index?): {proc.stderr[-500:]}")
    return proc.stdout.strip().splitlines()[-1]


def test_smoke_run_gives_the_same_curve_as_trl(tmp_path):
    gguf = smollm2_gguf()
    proc = subprocess.run([sys.executable, "benchmarks/peer_bt.py", "--smoke", "--gguf", gguf,
                           "--trl-python", trl_python(), "--workdir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["data"]["steps"] == 3 and summary["data"]["layers"] == 2
    systems = summary["systems"]
    # no --also-packed: at the smoke's micro-batch of 1 pair the packed run is the unpacked one (a bin is no wider
    # than a micro-batch's longest row); tests/test_packing.py checks packing against the unpacked run
    assert set(systems) == {"nemo_hs2", "trl"}
    for name, d in summary["differences"].items():
        # fp32, same weights, same batches: a semantic difference (loss, pairing, schedule, clipping, order) would
        # be orders of magnitude above this (measured: ~2e-7)
        assert d["loss"] <= 1e-5 and d["lr"] <= 1e-12 and d["grad_norm_rel"] <= 1e-4, (name, d)
    assert summary["steps"]["trl"][0]["loss"] > 0.1  # a real BT loss (log 2 at the start), not a stand-in
    ours = systems["nemo_hs2"]
    assert ours["validation_pairs"] == systems["trl"]["validation_pairs"] > 0
    assert abs(ours["bt_loss"] - systems["trl"]["bt_loss"]) <= 1e-4
    assert ours["accuracy"] == systems["trl"]["accuracy"]
    assert "real tokens/s" in proc.stdout and "nemo_hs2 / trl:" in proc.stdout
