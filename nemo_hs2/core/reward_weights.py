"""Turning per-attribute predictions into one scalar reward."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from nemo_hs2.core.attributes import check_attributes

log = logging.getLogger(__name__)

# Published linear heads over the five HelpSteer2 attributes. Verbosity is negative in both: raters rewarded
# length, and the published combinations subtract it back out.
PRESETS: dict[str, dict[str, float]] = {
    # HelpSteer2 paper, Nemotron-4-340B-Reward.
    "nemotron_340b": {"helpfulness": 0.3, "correctness": 0.74, "coherence": 0.46, "complexity": 0.47,
                      "verbosity": -0.33},
    # Llama-3-70B reward model card.
    "llama3_70b": {"helpfulness": 0.65, "correctness": 0.8, "coherence": 0.45, "complexity": 0.55,
                   "verbosity": -0.4},
    "helpfulness_only": {"helpfulness": 1.0},
}
# What a model config without reward_weights validates, scores and serves with.
DEFAULT_PRESET = "nemotron_340b"


def resolve_weights(spec: str | Mapping[str, float], attributes: Sequence[str]) -> np.ndarray:
    """Weight vector (float64, one entry per attribute, in ``attributes`` order) from a preset name or a mapping.

    Attributes the spec does not name get weight 0.
    """
    attributes = check_attributes(attributes)
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"unknown reward preset '{spec}'; presets are {sorted(PRESETS)}")
        mapping = PRESETS[spec]
        source = f"preset '{spec}'"
    elif isinstance(spec, Mapping):
        mapping = spec
        source = "reward weights"
    else:
        raise TypeError(f"reward weights must be a preset name or a mapping attribute -> weight, "
                        f"got {type(spec).__name__}")

    weights = np.zeros(len(attributes), dtype=np.float64)
    for name, value in mapping.items():
        name = str(name)
        if name not in attributes:
            raise ValueError(f"{source} weights attribute '{name}', which this model does not predict; "
                             f"the model's attributes are {list(attributes)}")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{source}: weight for '{name}' is not a number: {value!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{source}: weight for '{name}' is not finite: {value}")
        weights[attributes.index(name)] = value
    if not np.any(weights):
        # An all-zero reward is constant, so every comparison would be a tie; that is always a config mistake.
        raise ValueError(f"{source} gives every attribute weight 0")
    return weights


def weights_for(spec: str | Mapping[str, float], attributes: Sequence[str]) -> dict[str, float]:
    """The ``{attribute: weight}`` a model with ``attributes`` uses for ``spec``, checked by ``resolve_weights``.

    A preset is restricted to the attributes present, with a warning naming the ones dropped (a model trained on
    a subset still gets a reward); a model predicting helpfulness alone gets ``helpfulness_only``. A mapping is
    taken as written: naming an attribute the model does not predict is an error, since the user asked for it.
    """
    attributes = check_attributes(attributes)
    if isinstance(spec, str) and spec in PRESETS:
        if tuple(attributes) == ("helpfulness",):
            mapping = dict(PRESETS["helpfulness_only"])
        else:
            mapping = {a: w for a, w in PRESETS[spec].items() if a in attributes}
        dropped = [a for a in PRESETS[spec] if a not in mapping]
        if dropped:
            log.warning(f"reward preset '{spec}': this model does not predict {dropped}; using "
                        f"{mapping} over its attributes {list(attributes)}")
        if not mapping:
            raise ValueError(f"preset '{spec}' weights none of this model's attributes {list(attributes)}: "
                             "set model.regression.reward_weights to a mapping {attribute: weight}")
        spec = mapping
    weights = resolve_weights(spec, attributes)
    return {a: float(w) for a, w in zip(attributes, weights) if w != 0}


def combine(predictions, weights):
    """``predictions[..., A] @ weights[A]``, returned in the library (numpy or torch) of ``predictions``."""
    if isinstance(predictions, torch.Tensor):
        w = torch.as_tensor(weights, dtype=predictions.dtype, device=predictions.device)
        if w.ndim != 1 or predictions.shape[-1] != w.shape[0]:
            raise ValueError(f"predictions {tuple(predictions.shape)} do not match weights {tuple(w.shape)}")
        return predictions @ w
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().cpu().numpy()
    predictions = np.asarray(predictions, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or predictions.shape[-1:] != w.shape:
        raise ValueError(f"predictions {predictions.shape} do not match weights {w.shape}")
    return predictions @ w
