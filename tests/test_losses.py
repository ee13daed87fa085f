import math

import numpy as np
import pytest
import torch

from nemo_hs2.core.losses import BT_KINDS, LOSS_NAMES, bradley_terry_sum, masked_mse_sum

NAN = float("nan")


def softplus(x):
    return math.log(1 + math.exp(x))


def test_names():
    assert LOSS_NAMES == ("regression", "regular_bt", "margin_bt", "scaled_bt", "regression+bt")
    assert BT_KINDS == ("regular_bt", "margin_bt", "scaled_bt")


@pytest.mark.parametrize("garbage", [NAN, 1e30, -7.0])
def test_masked_mse_sum_hand_computed(garbage):
    pred = torch.tensor([[1.0, 2.0], [0.5, 3.0], [2.0, -1.0]], requires_grad=True)
    target = torch.tensor([[1.5, garbage], [0.5, 4.0], [garbage, 0.0]])
    mask = torch.tensor([[True, False], [True, True], [False, True]])
    loss = masked_mse_sum(pred, target, mask)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert loss.item() == pytest.approx((1.0 - 1.5) ** 2 + (0.5 - 0.5) ** 2 + (3.0 - 4.0) ** 2 + (-1.0 - 0.0) ** 2)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    expected_grad = [[2 * (1.0 - 1.5), 0.0], [0.0, 2 * (3.0 - 4.0)], [0.0, 2 * (-1.0 - 0.0)]]
    np.testing.assert_allclose(pred.grad.numpy(), expected_grad, rtol=1e-6)
    assert pred.grad[0, 1].item() == 0.0 and pred.grad[2, 0].item() == 0.0


def test_masked_mse_sum_all_masked_and_bf16():
    pred = torch.tensor([[1.0, 2.0]], dtype=torch.bfloat16, requires_grad=True)
    loss = masked_mse_sum(pred, torch.tensor([[NAN, NAN]]), torch.tensor([[False, False]]))
    assert loss.dtype == torch.float32 and loss.item() == 0.0
    loss.backward()
    assert pred.grad.eq(0).all()


def test_masked_mse_sum_rejects_bad_inputs():
    with pytest.raises(ValueError):
        masked_mse_sum(torch.zeros(2, 2), torch.zeros(2, 3), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(TypeError):
        masked_mse_sum(torch.zeros(2, 2), torch.zeros(2, 2), torch.ones(2, 2))


# Four pairs, weights [1, 0.5]:
#   pair 0 rows 0,1 rewards 2.0, 1.0, strength -2 (response_1 better) -> chosen - rejected = 1.0
#   pair 1 rows 2,3 rewards 0.0, 0.5, strength +1 (response_2 better) -> chosen - rejected = 0.5
#   pair 2 rows 4,5 strength 0 (tie, excluded); pair 3 rows 6,7 strength NaN (excluded)
PRED = [[1.0, 2.0], [0.5, 1.0], [0.0, 0.0], [1.0, -1.0], [3.0, 0.0], [0.0, 0.0], [1.0, 1.0], [-1.0, 0.0]]
PREF = [-2.0, -2.0, 1.0, 1.0, 0.0, 0.0, NAN, NAN]
WEIGHTS = [1.0, 0.5]
EXPECTED = {
    "regular_bt": softplus(-1.0) + softplus(-0.5),
    "margin_bt": softplus(-(1.0 - 2)) + softplus(-(0.5 - 1)),
    "scaled_bt": 2 * softplus(-1.0) + 1 * softplus(-0.5),
}
# d loss / d (chosen - rejected) for pair 0
PAIR0_SLOPE = {
    "regular_bt": -1 / (1 + math.exp(1.0)),
    "margin_bt": -1 / (1 + math.exp(1.0 - 2)),
    "scaled_bt": -2 / (1 + math.exp(1.0)),
}


@pytest.mark.parametrize("kind", BT_KINDS)
def test_bradley_terry_hand_computed(kind):
    pred = torch.tensor(PRED, requires_grad=True)
    loss, n = bradley_terry_sum(pred, torch.tensor(PREF), torch.tensor(WEIGHTS), kind)
    assert loss.dtype == torch.float32 and n.dtype == torch.int64
    assert n.item() == 2
    assert loss.item() == pytest.approx(EXPECTED[kind], rel=1e-6)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    # Tie and no-preference pairs get exactly no gradient.
    assert pred.grad[4:].eq(0).all()
    # Row 0 is chosen in pair 0, row 1 rejected.
    slope = PAIR0_SLOPE[kind]
    np.testing.assert_allclose(pred.grad[0].detach().numpy(), [slope * 1.0, slope * 0.5], rtol=1e-6)
    np.testing.assert_allclose(pred.grad[1].detach().numpy(), [-slope * 1.0, -slope * 0.5], rtol=1e-6)


def test_bradley_terry_sign_of_strength_picks_chosen():
    pred = torch.tensor([[2.0], [1.0]])
    first_better, _ = bradley_terry_sum(pred, torch.tensor([-1.0, -1.0]), [1.0], "regular_bt")
    second_better, _ = bradley_terry_sum(pred, torch.tensor([1.0, 1.0]), [1.0], "regular_bt")
    assert first_better.item() == pytest.approx(softplus(-(2.0 - 1.0)))
    assert second_better.item() == pytest.approx(softplus(-(1.0 - 2.0)))


def test_bradley_terry_one_hot_selects_attribute():
    # Only column 1: pair 0 rewards 2.0 vs 1.0 (row 0 chosen, d = 1); pair 1 rewards 0.0 vs -1.0 (row 3 chosen, d = -1).
    loss, n = bradley_terry_sum(torch.tensor(PRED), torch.tensor(PREF), [0.0, 1.0], "regular_bt")
    assert n.item() == 2
    assert loss.item() == pytest.approx(softplus(-1.0) + softplus(1.0), rel=1e-6)


def test_bradley_terry_no_pairs():
    pred = torch.tensor(PRED[4:], requires_grad=True)
    loss, n = bradley_terry_sum(pred, torch.tensor(PREF[4:]), WEIGHTS, "margin_bt")
    assert loss.item() == 0.0 and n.item() == 0
    loss.backward()
    assert pred.grad.eq(0).all()


def test_bradley_terry_errors():
    pred = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="odd"):
        bradley_terry_sum(torch.zeros(3, 2), torch.zeros(3), WEIGHTS, "regular_bt")
    with pytest.raises(ValueError, match="different"):
        bradley_terry_sum(pred, torch.tensor([-2.0, -1.0, 1.0, 1.0]), WEIGHTS, "regular_bt")
    with pytest.raises(ValueError, match="different"):
        bradley_terry_sum(pred, torch.tensor([NAN, 1.0, 1.0, 1.0]), WEIGHTS, "regular_bt")
    with pytest.raises(ValueError, match="kind"):
        bradley_terry_sum(pred, torch.zeros(4), WEIGHTS, "bt")
    with pytest.raises(ValueError):
        bradley_terry_sum(pred, torch.zeros(4), [1.0, 0.0, 0.0], "regular_bt")


# NeMo-Aligner 0.7.0 (MegatronGPTRegressionRewardModel.bt_loss_func): chosen = response_1 if strength < 0 else
# response_2 (a tie included), margin = |strength|; one pair per micro-batch, averaged over micro-batches and DP
# ranks, so the loss is the mean over every pair, ties included. Pair 2 (rewards 3.0 vs 0.0, a tie) therefore adds
# -logsigmoid(0.0 - 3.0) = softplus(3) for regular / margin, 0 for scaled, and counts in the mean.
ALIGNER_TIES = {
    "regular_bt": (EXPECTED["regular_bt"] + softplus(3.0)) / 3,
    "margin_bt": (EXPECTED["margin_bt"] + softplus(3.0)) / 3,
    "scaled_bt": EXPECTED["scaled_bt"] / 3,
}


@pytest.mark.parametrize("kind", BT_KINDS)
def test_bt_ties_aligner_matches_hand_computation_and_aligners_own_function(kind):
    from types import SimpleNamespace

    from nemo_aligner.models.nlp.gpt.megatron_gpt_regression_reward_model import MegatronGPTRegressionRewardModel

    pred = torch.tensor(PRED)
    loss, n = bradley_terry_sum(pred, torch.tensor(PREF), WEIGHTS, kind, ties="aligner")
    assert n.item() == 3  # the NaN pair is sampler padding, not data: excluded in both
    assert loss.item() / n.item() == pytest.approx(ALIGNER_TIES[kind], rel=1e-6)
    # The same through NeMo-Aligner's own function: its reward sits in output column 4, its strength in label[0, 0].
    fake = SimpleNamespace(cfg=SimpleNamespace(loss_func=kind))
    reward = pred @ torch.tensor(WEIGHTS)
    per_pair = []
    for i in range(3):
        out = torch.zeros(2, 9)
        out[:, 4] = reward[2 * i:2 * i + 2]
        label = torch.full((2, 9), -100.0)
        label[:, 0] = PREF[2 * i]
        per_pair.append(float(MegatronGPTRegressionRewardModel.bt_loss_func(fake, out, label)))
    assert loss.item() / n.item() == pytest.approx(np.mean(per_pair), rel=1e-6)
    dropped, n_drop = bradley_terry_sum(pred, torch.tensor(PREF), WEIGHTS, kind, ties="drop")
    assert n_drop.item() == 2 and dropped.item() == pytest.approx(EXPECTED[kind], rel=1e-6)
    with pytest.raises(ValueError, match="bt_ties"):
        bradley_terry_sum(pred, torch.tensor(PREF), WEIGHTS, kind, ties="keep")
