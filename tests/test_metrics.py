import math

import numpy as np
import pytest

from nemo_hs2.core.metrics import confusion_matrix, pairwise_metrics, pearson, regression_metrics, unpair_incomplete

NAN = float("nan")


def test_regression_metrics_hand_computed():
    pred = np.array([[3.2, 1.0], [1.4, 2.6], [2.0, 0.4], [4.6, 1.0]])
    target = np.array([[3, 1], [2, NAN], [1, 0], [4, 2]], dtype=np.float32)
    m = regression_metrics(pred, target, ("helpfulness", "verbosity"))

    # helpfulness: errors 0.2, -0.6, 1.0, 0.6; rounded clipped preds 3, 1, 2, 4 vs 3, 2, 1, 4; mean target 2.5
    assert m["helpfulness/count"] == 4
    assert m["helpfulness/mse"] == pytest.approx((0.2**2 + 0.6**2 + 1.0**2 + 0.6**2) / 4)
    assert m["helpfulness/mae"] == pytest.approx((0.2 + 0.6 + 1.0 + 0.6) / 4)
    assert m["helpfulness/rounded_acc"] == pytest.approx(2 / 4)
    assert m["helpfulness/baseline_mse"] == pytest.approx((0.5**2 + 0.5**2 + 1.5**2 + 1.5**2) / 4)
    assert m["helpfulness/pearson"] == pytest.approx(np.corrcoef([3.2, 1.4, 2.0, 4.6], [3, 2, 1, 4])[0, 1])

    # verbosity: row 1 missing; errors 0, 0.4, -1.0; rounded 1, 0, 1 vs 1, 0, 2; mean target 1
    assert m["verbosity/count"] == 3
    assert m["verbosity/mse"] == pytest.approx((0 + 0.4**2 + 1.0**2) / 3)
    assert m["verbosity/mae"] == pytest.approx((0 + 0.4 + 1.0) / 3)
    assert m["verbosity/rounded_acc"] == pytest.approx(2 / 3)
    assert m["verbosity/baseline_mse"] == pytest.approx((0 + 1 + 1) / 3)
    assert m["verbosity/pearson"] == pytest.approx(np.corrcoef([1.0, 0.4, 1.0], [1, 0, 2])[0, 1])

    # Pooled over the 7 present entries, not the mean of the two per-attribute values.
    assert m["mse"] == pytest.approx((0.04 + 0.36 + 1.0 + 0.36 + 0 + 0.16 + 1.0) / 7)
    assert m["mse"] != pytest.approx((m["helpfulness/mse"] + m["verbosity/mse"]) / 2)
    assert m["baseline_mse"] == pytest.approx((5.0 + 2.0) / 7)


def test_rounded_acc_clips_and_rounds_half_up():
    pred = np.array([[-0.7], [5.2], [2.5], [1.49], [3.5]])
    target = np.array([[0], [4], [3], [2], [4]])
    # clipped/rounded: 0, 4, 3, 1, 4 -> 4 of 5 right
    assert regression_metrics(pred, target, ("a",))["a/rounded_acc"] == pytest.approx(4 / 5)
    # score_range (1, 5): -0.7 clips to 1
    m = regression_metrics(np.array([[-0.7], [5.2]]), np.array([[1], [5]]), ("a",), score_range=(1, 5))
    assert m["a/rounded_acc"] == 1.0


def test_pearson_undefined_cases():
    assert math.isnan(pearson([1.0], [2.0]))
    assert math.isnan(pearson([0.1, 0.1, 0.1], [1.0, 2.0, 3.0]))
    assert math.isnan(pearson([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]))
    x, y = [0.3, -1.2, 2.5, 0.0, 4.1], [1, 0, 3, 1, 4]
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])


def test_regression_metrics_missing_attribute():
    m = regression_metrics(np.array([[1.0, 2.0], [1.0, 3.0]]), np.array([[NAN, 2], [NAN, 4]]), ("a", "b"))
    assert m["a/count"] == 0
    assert all(math.isnan(m[f"a/{k}"]) for k in ("mse", "mae", "pearson", "rounded_acc", "baseline_mse"))
    assert m["mse"] == pytest.approx((0 + 1) / 2)
    with pytest.raises(ValueError):
        regression_metrics(np.zeros((2, 2)), np.zeros((2, 3)), ("a", "b"))


ATTRS = ("helpfulness", "correctness", "verbosity")
WEIGHTS = {"helpfulness": 1.0, "verbosity": -0.5}
# rows: (pair id, target help/corr/verb, pred help/corr/verb)
ROWS = [
    (10, (3, NAN, 2), (2.5, 0, 1.0)),  # true reward 3 - 1 = 2,  pred 2.5 - 0.5 = 2.0
    (10, (1, 2, 0), (1.0, 0, 0.0)),  # true 1,                    pred 1.0     -> reward right, help right
    (7, (2, 1, 0), (3.0, 0, 0.0)),  # true 2
    (7, (4, 1, 4), (3.0, 0, 0.0)),  # true 2 (reward tie: excluded); help 2 vs 4, predicted tie -> wrong
    (3, (2, 0, 0), (2.0, 0, 0.0)),  # true 2, pred 2.0
    (-1, (NAN, NAN, NAN), (0.0, 0, 0.0)),  # unpaired
    (3, (2, 0, 2), (2.0, 0, 1.0)),  # true 1, pred 1.5 -> reward right; help true tie: excluded
    (5, (3, 3, NAN), (1.0, 0, 0.0)),  # verbosity missing -> excluded from reward
    (5, (NAN, 2, 1), (0.0, 0, 0.0)),  # helpfulness missing -> excluded from help
    (8, (1, 1, 1), (2.0, 0, 0.0)),  # true 0.5, pred 2
    (8, (3, 1, 1), (1.0, 0, 0.0)),  # true 2.5, pred 1 -> reward wrong, help wrong
]


def _arrays():
    ids = np.array([r[0] for r in ROWS])
    target = np.array([r[1] for r in ROWS], dtype=np.float64)
    pred = np.array([r[2] for r in ROWS], dtype=np.float64)
    return pred, target, ids


def test_pairwise_metrics_hand_computed():
    pred, target, ids = _arrays()
    m = pairwise_metrics(pred, target, ids, ATTRS, WEIGHTS)
    assert m["pairs/helpfulness"] == 3  # pairs 10, 7, 8
    assert m["pairwise_acc/helpfulness"] == pytest.approx(1 / 3)
    assert m["pairs/reward"] == 3  # pairs 10, 3, 8
    assert m["pairwise_acc/reward"] == pytest.approx(2 / 3)
    # A weight vector gives the same as the mapping.
    assert pairwise_metrics(pred, target, ids, ATTRS, np.array([1.0, 0.0, -0.5])) == m


def test_pairwise_predicted_reward_tie_is_wrong():
    pred = np.array([[1.0], [1.0], [2.0], [1.0]])
    target = np.array([[3.0], [1.0], [3.0], [1.0]])
    m = pairwise_metrics(pred, target, np.array([0, 0, 1, 1]), ("helpfulness",), "helpfulness_only")
    assert m["pairs/reward"] == 2 and m["pairwise_acc/reward"] == pytest.approx(1 / 2)
    assert m["pairs/helpfulness"] == 2 and m["pairwise_acc/helpfulness"] == pytest.approx(1 / 2)


def test_pairwise_without_helpfulness_and_no_pairs():
    pred = np.array([[1.0, 0.0], [0.0, 0.0]])
    target = np.array([[2.0, 0.0], [2.0, 0.0]])
    m = pairwise_metrics(pred, target, np.array([4, 4]), ("correctness", "verbosity"), {"correctness": 1})
    assert set(m) == {"pairwise_acc/reward", "pairs/reward"}
    assert m["pairs/reward"] == 0 and math.isnan(m["pairwise_acc/reward"])


@pytest.mark.parametrize("ids", [[0, 0, 0, 1], [0, 1, 1, -1]])
def test_pairwise_bad_pair_ids(ids):
    with pytest.raises(ValueError, match="exactly 2"):
        pairwise_metrics(np.zeros((4, 1)), np.zeros((4, 1)), np.array(ids), ("helpfulness",), "helpfulness_only")


def test_unpair_incomplete_drops_pairs_cut_by_a_validation_limit():
    # limit_val_batches scored row 4 but not its partner: pair 2 is cut, the other pairs stay as they were.
    ids = np.array([0, 0, 1, 1, 2, -1])
    kept, cut = unpair_incomplete(ids)
    assert kept.tolist() == [0, 0, 1, 1, -1, -1] and cut == 1
    assert ids.tolist() == [0, 0, 1, 1, 2, -1]  # the input is not modified
    pred = np.array([[3.0], [1.0], [0.0], [2.0], [4.0], [0.0]])
    target = np.array([[4.0], [0.0], [3.0], [1.0], [0.0], [1.0]])
    m = pairwise_metrics(pred, target, kept, ("helpfulness",), "helpfulness_only")
    assert m["pairs/helpfulness"] == 2 and m["pairwise_acc/helpfulness"] == 0.5
    with pytest.raises(ValueError, match="more than 2"):
        unpair_incomplete([0, 0, 0])


def test_confusion_matrix():
    pred = [0.4, 2.5, -1.0, 5.0, 3.6, 1.49, 2.0]
    target = [0, 2, 0, 4, 4, NAN, 3]
    cm = confusion_matrix(pred, target)
    # rounded clipped preds: 0, 3, 0, 4, 4, (ignored), 2
    expected = np.zeros((5, 5), dtype=int)
    expected[0, 0] = 2
    expected[2, 3] = 1
    expected[4, 4] = 2
    expected[3, 2] = 1
    np.testing.assert_array_equal(cm, expected)
    assert np.issubdtype(cm.dtype, np.integer)

    shifted = confusion_matrix([0.0, 4.6], [1, 5], score_range=(1, 5))
    assert shifted[0, 0] == 1 and shifted[4, 4] == 1 and shifted.sum() == 2
    with pytest.raises(ValueError):
        confusion_matrix([1.0], [1.5])
    with pytest.raises(ValueError):
        confusion_matrix([1.0], [7])


def test_strict_json_turns_nan_and_numpy_into_plain_json():
    import json

    from nemo_hs2.core.metrics import strict_json

    doc = strict_json({"a": float("nan"), "b": [np.float32(1.5), np.int64(2), (float("inf"),)], "c": "x"})
    assert doc == {"a": None, "b": [1.5, 2, [None]], "c": "x"}
    json.dumps(doc, allow_nan=False)  # strict readers accept it
