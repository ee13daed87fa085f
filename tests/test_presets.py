"""Every model preset builds and runs on CPU at reduced size; LayerNorm1P and Llama 3.1's RoPE against transformers.

transformers is the reference: ``NemotronLayerNorm1P`` for Nemotron-4's norm, ``ROPE_INIT_FUNCTIONS["llama3"]`` for
Llama 3.1's rotary frequencies.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nemo_hs2.megatron import compat
from nemo_hs2.megatron import rotary
from nemo_hs2.megatron.layernorm1p import LayerNorm1P, LayerNorm1PError

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml") if p.stem != "gpu_common")
LLAMA31 = dict(rotary.LLAMA31_ROPE_SCALING)


def hf_inv_freq(head_dim: int, base: float, rope_scaling=None) -> np.ndarray:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, rope_theta=base, rope_scaling=rope_scaling)
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3" if rope_scaling else "default"](config, "cpu")
    return inv_freq.numpy()


# ------------------------------------------------------------------------------------------ fast, no model
def test_layernorm1p_equals_transformers_nemotron_layernorm1p():
    from megatron.core.transformer.transformer_config import TransformerConfig
    from transformers.models.nemotron.modeling_nemotron import NemotronLayerNorm1P

    config = TransformerConfig(num_layers=1, hidden_size=48, num_attention_heads=4, normalization="LayerNorm",
                               layernorm_zero_centered_gamma=True)
    ours = LayerNorm1P(config, 48, eps=1e-5)
    assert float(ours.weight.detach().abs().max()) == 0.0  # zero-centred: a fresh norm scales by 1, as apex's does
    ref = NemotronLayerNorm1P(48, eps=1e-5)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in (ours.weight, ours.bias):
            p.normal_(0, 0.5, generator=g)
        ref.weight.copy_(ours.weight)
        ref.bias.copy_(ours.bias)
    x = torch.randn(3, 5, 48, generator=g) * 3 + 1
    assert torch.allclose(ours(x), ref(x), atol=1e-6, rtol=0)
    assert not torch.allclose(ours(x), torch.nn.functional.layer_norm(x, (48,), ours.weight, ours.bias), atol=1e-2)


def test_layernorm1p_refuses_what_it_cannot_compute():
    from megatron.core.transformer.transformer_config import TransformerConfig

    config = TransformerConfig(num_layers=1, hidden_size=48, num_attention_heads=4, normalization="RMSNorm",
                               layernorm_zero_centered_gamma=True)
    with pytest.raises(LayerNorm1PError, match="normalization=RMSNorm"):
        LayerNorm1P(config, 48)


def test_the_stand_in_is_planned_only_without_apex_and_te():
    planned = lambda **env: "layernorm1p" in {p.name for p in compat.planned(compat.Environment(cuda=True, **env))}
    assert planned(apex=False, te=False)
    assert not planned(apex=True, te=False) and not planned(apex=False, te=True)


def test_hf_rope_scaling_is_accepted_only_where_it_can_be_applied():
    assert rotary.check_hf_rope_scaling(LLAMA31) is True
    assert rotary.check_hf_rope_scaling({"type": "llama3", **{k: v for k, v in LLAMA31.items() if k != "rope_type"}})
    assert rotary.check_hf_rope_scaling(None) is False and rotary.check_hf_rope_scaling({"rope_type": "default"}) is False
    assert rotary.hf_llama3_scaling({**LLAMA31, "factor": 32.0})["factor"] == 32.0  # Llama 3.2's, with its factor
    with pytest.raises(ValueError, match="cannot be applied"):
        rotary.check_hf_rope_scaling({"rope_type": "linear", "factor": 2.0})


def test_scaling_without_rope_is_an_error():
    with pytest.raises(ValueError, match="needs position_embedding_type=rope"):
        rotary.apply_rope_scaling({"scale_positional_embedding": True, "position_embedding_type": "learned_absolute"},
                                  object())


# ------------------------------------------------------------------------------------------ every preset, built
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("presets") / "report.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "workers" / "build_presets.py"), "--out", str(out),
                           "--rope-pair", *PRESETS], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
    return json.loads(out.read_text())


@pytest.mark.slow
def test_every_preset_builds_and_runs_a_forward(built):
    assert set(PRESETS) >= {"tiny", "nemotron4_15b", "nemotron4_340b", "llama3_70b", "llama3_1_70b"}
    assert set(built["presets"]) == set(PRESETS)
    for name, r in built["presets"].items():
        pred = np.array(r["pred"])
        assert pred.shape == (3, 5) and np.isfinite(pred).all(), name
        assert np.abs(pred).max() > 0, name


@pytest.mark.slow
def test_nemotron_presets_build_with_layernorm1p(built):
    assert "layernorm1p" in built["compat"]
    for name in ("nemotron4_15b", "nemotron4_340b"):
        r = built["presets"][name]
        assert r["zero_centered_gamma"] and r["normalization"] == "LayerNorm", name
        assert {r["input_layernorm"], r["pre_mlp_layernorm"], r["final_layernorm"]} == {"LayerNorm1P"}, name
        assert r["norm_weight_init"] == 0.0
        assert r["activation"] == "squared_relu" and not r["gated_linear_unit"] and not r["add_bias_linear"]
        assert len(r["inv_freq"]) * 2 == r["kv_channels"] // 2  # rotary_percentage 0.5
    assert built["presets"]["tiny"]["final_layernorm"] == "LayerNorm"  # untouched without zero-centred gamma


@pytest.mark.slow
def test_llama_presets_rotary_frequencies_equal_transformers(built):
    for name, scaling in (("llama3_1_70b", LLAMA31), ("llama3_70b", None)):
        r = built["presets"][name]
        assert r["normalization"] == "RMSNorm" and r["activation"] == "silu" and r["gated_linear_unit"]
        want = hf_inv_freq(r["kv_channels"], 500000.0, scaling)
        np.testing.assert_allclose(r["inv_freq"], want, rtol=1e-6, atol=0, err_msg=name)


@pytest.mark.slow
def test_llama31_scaling_changes_frequencies_and_the_reward(built):
    pair = built["rope_pair"]
    assert pair["max_abs_diff"] > 1e-2, pair  # the same weights score a 250-token row differently
    scaled, plain = np.array(pair["scaled_inv_freq"]), np.array(pair["unscaled_inv_freq"])
    assert scaled.size == 64  # Llama 3 70B's head size, 128
    np.testing.assert_allclose(scaled, hf_inv_freq(128, 500000.0, LLAMA31), rtol=1e-6, atol=0)
    np.testing.assert_allclose(plain, hf_inv_freq(128, 500000.0), rtol=1e-6, atol=0)
    differ = ~np.isclose(scaled, plain, rtol=1e-6, atol=0)
    assert differ.sum() == 35  # of 64 pairs, the low frequencies (what the real-model probe counted)
    # Position 4096, inside the training context: the largest phase error without the scaling (~3.6 rad)
    assert math.isclose(float(np.max(np.abs(4096 * (scaled - plain)))), 3.6, abs_tol=0.1)
