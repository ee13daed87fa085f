"""Reward-model losses for the Megatron forward step.

Each returns a float32 SUM plus what it was summed over, never a mean: micro-batches and data-parallel ranks hold
different numbers of valid entries, so only the caller, after reducing the counts globally, can divide correctly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Values of ``model.regression.loss_func``:
#   regression     masked MSE of every labelled attribute (masked_mse_sum)
#   regular_bt     Bradley-Terry on preference pairs (bradley_terry_sum, kind="regular_bt")
#   margin_bt      Bradley-Terry with the preference strength as a margin (kind="margin_bt")
#   scaled_bt      Bradley-Terry weighted by the preference strength (kind="scaled_bt")
#   regression+bt  regression plus a caller-weighted Bradley-Terry term
LOSS_NAMES = ("regression", "regular_bt", "margin_bt", "scaled_bt", "regression+bt")
BT_KINDS = ("regular_bt", "margin_bt", "scaled_bt")
# Values of ``model.regression.bt_ties`` (pairs with preference strength 0):
#   drop     left out of the loss and of its mean (a tie orders nothing)
#   aligner  NeMo-Aligner 0.7.0: a tie counts as response_2 preferred with margin / scale 0, and in the mean
BT_TIES = ("drop", "aligner")


def bt_pair_included(strength: torch.Tensor, ties: str = "drop") -> torch.Tensor:
    """Which pairs the Bradley-Terry loss is a mean over (NaN strength = no pair, e.g. sampler padding)."""
    if ties not in BT_TIES:
        raise ValueError(f"model.regression.bt_ties must be one of {BT_TIES}, got '{ties}'")
    included = ~torch.isnan(strength)
    return included & (strength != 0) if ties == "drop" else included


def masked_mse_sum(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of ``(pred - target) ** 2`` over entries where ``mask`` is True (float32 scalar)."""
    if pred.shape != target.shape or pred.shape != mask.shape:
        raise ValueError(f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and mask {tuple(mask.shape)} "
                         f"must have the same shape")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool, got {mask.dtype}")
    # torch.where rather than multiplying by the mask: a masked target may be NaN, and NaN * 0 is NaN in both the
    # value and the gradient. where() routes a zero gradient to the unselected branch instead.
    diff = torch.where(mask, pred.float() - target.float(), torch.zeros((), dtype=torch.float32, device=pred.device))
    return (diff * diff).sum()


def bradley_terry_sum(pred: torch.Tensor, preference: torch.Tensor, weights, kind: str, ties: str = "drop"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bradley-Terry loss summed over preference pairs; returns ``(loss_sum float32, num_pairs int64)``.

    Rows ``2i`` and ``2i+1`` are response_1 and response_2 of pair ``i``. ``preference`` is HelpSteer2-Preference's
    ``preference_strength`` on both rows of the pair: negative prefers response_1, positive response_2, NaN means
    no preference. The compared reward is ``pred @ weights``. ``ties``: see ``BT_TIES``.
    """
    if kind not in BT_KINDS:
        raise ValueError(f"unknown Bradley-Terry kind '{kind}'; expected one of {BT_KINDS}")
    if pred.ndim != 2:
        raise ValueError(f"pred must be [rows, attributes], got {tuple(pred.shape)}")
    rows = pred.shape[0]
    if rows % 2:
        raise ValueError(f"Bradley-Terry needs rows in consecutive pairs; got an odd number of rows ({rows})")
    preference = torch.as_tensor(preference, dtype=torch.float32, device=pred.device)
    if preference.shape != (rows,):
        raise ValueError(f"preference must be [{rows}], got {tuple(preference.shape)}")
    w = torch.as_tensor(weights, dtype=torch.float32, device=pred.device)
    if w.shape != (pred.shape[1],):
        raise ValueError(f"weights must be [{pred.shape[1]}], got {tuple(w.shape)}")

    strength, strength_2 = preference[0::2], preference[1::2]
    both_nan = torch.isnan(strength) & torch.isnan(strength_2)
    if not bool(torch.all((strength == strength_2) | both_nan)):
        # Differing values mean the rows were not laid out as pairs (e.g. a sampler reordered them).
        raise ValueError("the two rows of a pair carry different preference strengths; rows are not paired")

    included = bt_pair_included(strength, ties)
    # Zero the magnitude of excluded pairs before it enters any op: a NaN there would come back as a NaN gradient
    # through logsigmoid's backward (0 * NaN) even though where() drops its value.
    magnitude = torch.where(included, strength.abs(), torch.zeros_like(strength))

    reward = pred.float() @ w
    r1, r2 = reward[0::2], reward[1::2]
    # strength >= 0 rather than > 0: with ties="aligner" a tie is "response_2 preferred", as NeMo-Aligner's `else`.
    chosen_minus_rejected = torch.where(strength >= 0, r2 - r1, r1 - r2)
    if kind == "regular_bt":
        per_pair = -F.logsigmoid(chosen_minus_rejected)
    elif kind == "margin_bt":
        per_pair = -F.logsigmoid(chosen_minus_rejected - magnitude)
    else:
        per_pair = magnitude * -F.logsigmoid(chosen_minus_rejected)
    loss_sum = torch.where(included, per_pair, torch.zeros_like(per_pair)).sum()
    return loss_sum, included.sum(dtype=torch.int64)
