"""Validation metrics, computed once over the whole gathered validation set.

Averaging per-batch values would weight each batch equally regardless of how many labels it held, and Pearson
correlation does not decompose over batches at all, so everything here takes the full arrays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from nemo_hs2.core.attributes import check_attributes
from nemo_hs2.core.losses import bradley_terry_sum
from nemo_hs2.core.reward_weights import combine, resolve_weights


def _check_range(score_range) -> tuple[int, int]:
    lo, hi = score_range
    if int(lo) != lo or int(hi) != hi or lo >= hi:
        raise ValueError(f"score_range must be two increasing integers, got {score_range}")
    return int(lo), int(hi)


def _round_score(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    # Half-up rather than numpy's half-to-even, so that e.g. 2.5 and 3.5 are not rounded in opposite directions.
    return np.floor(np.clip(x, lo, hi) + 0.5)


def _check_matrices(pred, target, attributes) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.ndim != 2 or pred.shape != target.shape or pred.shape[1] != len(attributes):
        raise ValueError(f"pred {pred.shape} and target {target.shape} must both be [rows, {len(attributes)}]")
    return pred, target


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when undefined (fewer than 2 values, or either side constant)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    # Constant is tested as max == min: the centred values of a constant array need not be exactly 0 in floating
    # point, which would turn an undefined correlation into a spurious +-1.
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    return float(np.sum(dx * dy) / math.sqrt(np.sum(dx * dx) * np.sum(dy * dy)))


def regression_metrics(pred, target, attributes: Sequence[str], score_range=(0, 4)) -> dict[str, float]:
    """Per-attribute ``{a}/mse``, ``/mae``, ``/pearson``, ``/rounded_acc``, ``/baseline_mse``, ``/count``, plus pooled
    ``mse`` and ``baseline_mse``.

    NaN targets are missing and excluded. ``pearson`` is NaN with fewer than 2 values or zero variance in pred or
    target; every per-attribute value except ``count`` is NaN for an attribute with no targets. ``baseline_mse`` is
    the MSE of predicting the attribute's mean target; pooled ``mse`` and ``baseline_mse`` are sums of squared errors
    over all present entries divided by their number, the same normalisation as the training loss.
    """
    attributes = check_attributes(attributes)
    pred, target = _check_matrices(pred, target, attributes)
    lo, hi = _check_range(score_range)
    out: dict[str, float] = {}
    total_sq, total_base_sq, total_count = 0.0, 0.0, 0
    for j, name in enumerate(attributes):
        present = ~np.isnan(target[:, j])
        p, t = pred[present, j], target[present, j]
        n = int(present.sum())
        out[f"{name}/count"] = n
        if n == 0:
            for key in ("mse", "mae", "pearson", "rounded_acc", "baseline_mse"):
                out[f"{name}/{key}"] = math.nan
            continue
        sq = float(np.sum((p - t) ** 2))
        base_sq = float(np.sum((t - t.mean()) ** 2))
        out[f"{name}/mse"] = sq / n
        out[f"{name}/mae"] = float(np.mean(np.abs(p - t)))
        out[f"{name}/pearson"] = pearson(p, t)
        out[f"{name}/rounded_acc"] = float(np.mean(_round_score(p, lo, hi) == t))
        out[f"{name}/baseline_mse"] = base_sq / n
        total_sq += sq
        total_base_sq += base_sq
        total_count += n
    out["mse"] = total_sq / total_count if total_count else math.nan
    out["baseline_mse"] = total_base_sq / total_count if total_count else math.nan
    return out


def _pairs(pair_ids) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (first, second) of each pair, first/second in row order."""
    ids = np.asarray(pair_ids).astype(np.int64).reshape(-1)
    rows = np.flatnonzero(ids >= 0)
    unique, counts = np.unique(ids[rows], return_counts=True)
    bad = unique[counts != 2]
    if bad.size:
        raise ValueError(f"every pair id must have exactly 2 rows; {bad.size} do not, e.g. "
                         f"{dict(zip(bad[:5].tolist(), counts[counts != 2][:5].tolist()))} (id: rows)")
    # A stable sort groups each id's two rows while keeping them in row order.
    grouped = rows[np.argsort(ids[rows], kind="stable")].reshape(-1, 2)
    return grouped[:, 0], grouped[:, 1]


def unpair_incomplete(pair_ids) -> tuple[np.ndarray, int]:
    """Pair ids with every id seen once set to -1, and how many pairs that cut.

    A validation limited to some batches (``limit_val_batches`` < 1, ``drop_last``) can score one row of a pair
    without the other; those rows still count for the per-attribute metrics but not as a pair.
    """
    ids = np.asarray(pair_ids).astype(np.int64).reshape(-1).copy()
    unique, counts = np.unique(ids[ids >= 0], return_counts=True)
    if (counts > 2).any():
        raise ValueError(f"a pair id has more than 2 rows: {unique[counts > 2][:5].tolist()}")
    alone = unique[counts == 1]
    ids[np.isin(ids, alone)] = -1
    return ids, int(alone.size)


def _ordering_accuracy(pred_a, pred_b, true_a, true_b) -> tuple[float, int]:
    # Pairs with equal true scores have no order to get right; np.sign(0) == 0 makes a predicted tie count as
    # wrong for every remaining pair.
    keep = true_a != true_b
    n = int(keep.sum())
    if n == 0:
        return math.nan, 0
    agree = np.sign(pred_a[keep] - pred_b[keep]) == np.sign(true_a[keep] - true_b[keep])
    return float(agree.mean()), n


def pairwise_metrics(pred, target, pair_ids, attributes: Sequence[str], weights) -> dict[str, float]:
    """How often predictions order the two responses of a pair like the labels do.

    Rows sharing a pair id (>= 0; exactly 2 rows each) form a pair. ``pairwise_acc/helpfulness`` covers pairs whose
    true helpfulness is present in both rows and differs; ``pairwise_acc/reward`` does the same for the weighted
    reward over pairs with every nonzero-weight attribute present in both rows. ``weights`` is a vector aligned
    with ``attributes`` or anything ``resolve_weights`` accepts. A predicted tie counts as wrong; an accuracy with
    no eligible pairs is NaN. ``pairs/...`` hold the counts. Helpfulness keys are omitted without that attribute.
    """
    attributes = check_attributes(attributes)
    pred, target = _check_matrices(pred, target, attributes)
    if isinstance(weights, (str, Mapping)):
        weights = resolve_weights(weights, attributes)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(attributes),):
        raise ValueError(f"weights must be [{len(attributes)}], got {weights.shape}")
    if len(pair_ids) != len(pred):
        raise ValueError(f"pair_ids has {len(pair_ids)} entries for {len(pred)} rows")
    first, second = _pairs(pair_ids)
    out: dict[str, float] = {}

    if "helpfulness" in attributes:
        j = attributes.index("helpfulness")
        ta, tb = target[first, j], target[second, j]
        present = ~np.isnan(ta) & ~np.isnan(tb)
        acc, n = _ordering_accuracy(pred[first[present], j], pred[second[present], j], ta[present], tb[present])
        out["pairwise_acc/helpfulness"], out["pairs/helpfulness"] = acc, n

    used = weights != 0
    # Only weighted columns are read from the target: a missing zero-weight label would otherwise make the reward
    # NaN through NaN * 0.
    row_ok = ~np.isnan(target[:, used]).any(axis=1)
    present = row_ok[first] & row_ok[second]
    true_reward = target[:, used] @ weights[used]
    pred_reward = combine(pred, weights)
    a, b = first[present], second[present]
    acc, n = _ordering_accuracy(pred_reward[a], pred_reward[b], true_reward[a], true_reward[b])
    out["pairwise_acc/reward"], out["pairs/reward"] = acc, n
    return out


def preference_metrics(arrays, bt_weights, kind: str, ties: str = "drop") -> dict[str, float]:
    """Bradley-Terry loss and preference accuracy over every pair (``pair_ids``: two rows per pair, in any order;
    ``preference``: the pair's strength on both rows). Training's validation and evaluation both call this."""
    order = np.argsort(arrays["pair_ids"], kind="stable")
    order = order[arrays["pair_ids"][order] >= 0]
    pred = torch.as_tensor(arrays["pred"][order])
    pref = torch.as_tensor(arrays["preference"][order], dtype=torch.float32)
    total, n = bradley_terry_sum(pred, pref, bt_weights, kind, ties)
    metrics = {"bt_loss": float(total) / int(n) if int(n) else math.nan}
    reward = pred.double() @ torch.as_tensor(bt_weights, dtype=torch.float64)
    strength = pref[0::2].double()
    valid = torch.isfinite(strength) & (strength != 0)
    margin = (reward[1::2] - reward[0::2]) * torch.sign(strength)
    metrics["preference_acc"] = float((margin[valid] > 0).double().mean()) if valid.any() else math.nan
    metrics["preference_pairs"] = int(valid.sum())
    return metrics


def confusion_matrix(pred_col, target_col, score_range=(0, 4)) -> np.ndarray:
    """Counts of (true score, rounded clipped prediction): rows are true scores, columns predictions, both from
    ``score_range[0]``. NaN targets are ignored."""
    lo, hi = _check_range(score_range)
    pred_col = np.asarray(pred_col, dtype=np.float64).reshape(-1)
    target_col = np.asarray(target_col, dtype=np.float64).reshape(-1)
    if pred_col.shape != target_col.shape:
        raise ValueError(f"pred_col {pred_col.shape} and target_col {target_col.shape} differ in length")
    present = ~np.isnan(target_col)
    p, t = pred_col[present], target_col[present]
    if not np.all(np.isfinite(p)):
        raise ValueError("predictions for labelled rows must be finite")
    if np.any((t != np.round(t)) | (t < lo) | (t > hi)):
        raise ValueError(f"targets must be integers in [{lo}, {hi}]")
    k = hi - lo + 1
    true_idx = (t - lo).astype(np.int64)
    pred_idx = (_round_score(p, lo, hi) - lo).astype(np.int64)
    return np.bincount(true_idx * k + pred_idx, minlength=k * k).reshape(k, k)


def strict_json(obj):
    """``obj`` with NaN/inf as None and numpy scalars as Python ones: strict JSON readers reject NaN."""
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj
