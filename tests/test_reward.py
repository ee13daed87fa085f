import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from nemo_hs2.core.attributes import HELPSTEER2_ATTRIBUTES
from nemo_hs2.core.reward_weights import PRESETS, combine, resolve_weights


def test_preset_values_exact():
    assert PRESETS == {
        "nemotron_340b": {"helpfulness": 0.3, "correctness": 0.74, "coherence": 0.46, "complexity": 0.47,
                          "verbosity": -0.33},
        "llama3_70b": {"helpfulness": 0.65, "correctness": 0.8, "coherence": 0.45, "complexity": 0.55,
                       "verbosity": -0.4},
        "helpfulness_only": {"helpfulness": 1.0},
    }


def test_preset_aligned_with_attribute_order():
    w = resolve_weights("nemotron_340b", HELPSTEER2_ATTRIBUTES)
    assert w.dtype == np.float64
    np.testing.assert_array_equal(w, [0.3, 0.74, 0.46, 0.47, -0.33])
    shuffled = ("verbosity", "helpfulness", "complexity", "correctness", "coherence")
    np.testing.assert_array_equal(resolve_weights("llama3_70b", shuffled), [-0.4, 0.65, 0.55, 0.8, 0.45])


def test_unnamed_attributes_get_zero():
    np.testing.assert_array_equal(resolve_weights("helpfulness_only", ("correctness", "helpfulness")), [0.0, 1.0])
    np.testing.assert_array_equal(resolve_weights({"coherence": 2}, ("helpfulness", "coherence", "verbosity")),
                                  [0.0, 2.0, 0.0])


def test_dictconfig_accepted():
    spec = OmegaConf.create({"verbosity": -1, "helpfulness": 0.5})
    np.testing.assert_array_equal(resolve_weights(spec, ("helpfulness", "verbosity")), [0.5, -1.0])


def test_unknown_attribute_names_it_and_lists_model_attributes():
    with pytest.raises(ValueError, match="helpfulnes'") as err:
        resolve_weights({"helpfulnes": 1.0}, ("helpfulness", "correctness"))
    assert "correctness" in str(err.value)
    # A preset over five attributes does not fit a two-attribute model.
    with pytest.raises(ValueError, match="coherence"):
        resolve_weights("nemotron_340b", ("helpfulness", "correctness"))


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError, match="llama3_70b") as err:
        resolve_weights("nemotron", HELPSTEER2_ATTRIBUTES)
    assert "nemotron_340b" in str(err.value) and "helpfulness_only" in str(err.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "heavy"])
def test_bad_weight_values(bad):
    with pytest.raises(ValueError, match="helpfulness"):
        resolve_weights({"helpfulness": bad}, ("helpfulness",))


def test_all_zero_and_wrong_type():
    with pytest.raises(ValueError, match="weight 0"):
        resolve_weights({"helpfulness": 0.0}, ("helpfulness", "verbosity"))
    with pytest.raises(TypeError):
        resolve_weights([1.0, 0.0], ("helpfulness", "verbosity"))


def test_combine_numpy():
    pred = np.array([[1.0, 2.0], [3.0, 4.0], [0.0, -2.0]])
    out = combine(pred, np.array([0.5, -1.0]))
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, [1 * 0.5 - 2, 3 * 0.5 - 4, 0 * 0.5 + 2])


def test_combine_torch_keeps_library_dtype_and_grad():
    pred = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]]], requires_grad=True)  # [2, 1, A]: leading dims kept
    out = combine(pred, np.array([0.5, -1.0]))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (2, 1)
    np.testing.assert_allclose(out.detach().numpy(), [[1 * 0.5 - 2], [3 * 0.5 - 4]], rtol=1e-6)
    out.sum().backward()
    np.testing.assert_allclose(pred.grad.detach().numpy(), [[[0.5, -1.0]], [[0.5, -1.0]]], rtol=1e-6)


def test_combine_shape_mismatch():
    with pytest.raises(ValueError):
        combine(np.zeros((3, 2)), np.ones(3))
    with pytest.raises(ValueError):
        combine(torch.zeros(3, 2), np.ones(3))


def test_weights_for_restricts_a_preset_and_names_what_it_dropped(caplog):
    from nemo_hs2.core.reward_weights import weights_for

    with caplog.at_level("WARNING", logger="nemo_hs2.core.reward_weights"):
        got = weights_for("llama3_70b", ("verbosity", "helpfulness"))
    assert got == {"verbosity": -0.4, "helpfulness": 0.65}  # the model card's values, by name
    assert "['correctness', 'coherence', 'complexity']" in caplog.text
    assert weights_for("nemotron_340b", ("helpfulness",)) == {"helpfulness": 1.0}  # helpfulness_only
    assert weights_for("nemotron_340b", HELPSTEER2_ATTRIBUTES) == PRESETS["nemotron_340b"]
    # A mapping is what the user asked for: an attribute the model lacks stays an error.
    with pytest.raises(ValueError, match="coherence"):
        weights_for({"coherence": 1.0}, ("helpfulness",))


def test_scorer_defaults_to_the_checkpoints_own_weights():
    """RewardScorer (behind evaluation, annotation and the server) uses the weights saved with the model."""
    from nemo_hs2.evaluation.run import reward_weights
    from nemo_hs2.megatron.scorer import RewardScorer

    class Model:  # what RewardScorer reads of a loaded checkpoint
        attributes = ("helpfulness",)
        cfg = OmegaConf.create({"encoder_seq_length": 64, "regression": {"reward_weights": {"helpfulness": 1.0}}})
        tokenizer = type("T", (), {"eos_id": 0, "text_to_ids": staticmethod(lambda t: [1])})()

    assert RewardScorer(Model()).weights.tolist() == [1.0]  # was: nemotron_340b, an error for this model
    assert reward_weights(Model(), None) is None  # evaluation / serving: null means the checkpoint's own
    Model.attributes = ("helpfulness", "verbosity")
    Model.cfg.regression.reward_weights = "llama3_70b"  # an older checkpoint with a preset name: restricted
    assert RewardScorer(Model()).weights.tolist() == [0.65, -0.4]
    assert RewardScorer(Model(), weights={"verbosity": 1.0}).weights.tolist() == [0.0, 1.0]


def test_model_presets_write_the_regression_schemas_defaults():
    """The YAML presets show users the regression keys; their values are RegressionConfig's defaults, not a second
    set (conf/model/*.yaml, except what a preset sets on purpose: attributes come from data)."""
    import dataclasses
    from pathlib import Path

    from omegaconf import OmegaConf

    from nemo_hs2.core.config import RegressionConfig

    defaults = {f.name: f.default for f in dataclasses.fields(RegressionConfig)}
    for name in ("tiny", "gpu_common"):
        section = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "model" / f"{name}.yaml").regression
        for key in section:
            if key != "attributes":
                assert section[key] == defaults[key], (name, key)


def test_regression_config_refuses_unknown_keys_and_choices():
    from nemo_hs2.core.config import ConfigValueError, RegressionConfig

    with pytest.raises(ConfigValueError, match=r"unknown key\(s\) loss_fn \(did you mean loss_func\?\)"):
        RegressionConfig.from_cfg({"loss_fn": "scaled_bt"})
    with pytest.raises(ConfigValueError, match="loss_func must be one of"):
        RegressionConfig.from_cfg({"loss_func": "mse"})
    with pytest.raises(ConfigValueError, match="bt_ties must be one of"):
        RegressionConfig.from_cfg({"bt_ties": "half"})
    aligner = {"num_attributes": 9, "merge_attributes": False, "attribute_weights": None}  # NeMo-Aligner's own keys
    assert RegressionConfig.from_cfg(aligner).loss_func == "regression"
