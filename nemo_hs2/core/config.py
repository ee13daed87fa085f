"""Typed schemas of the config sections nemo_hs2 reads itself, with their defaults written once, here.

``RegressionConfig`` is ``model.regression`` (the head, the loss and the reward; it travels in every checkpoint),
``DataConfig`` is ``data``. Each is read with ``from_cfg``, which refuses an unknown key (naming the close ones) and a
value outside its choices before anything is built; code then reads the typed object, never ``.get(key, default)``.
The server (``nemo_hs2.serving.config.ServerConfig``) and the planner (``nemo_hs2.plan.options.PlanOptions``) have
their own, beside the code that reads them.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

from nemo_hs2.core.attributes import HELPSTEER2_ATTRIBUTES, check_attributes
from nemo_hs2.core.losses import BT_TIES, LOSS_NAMES
from nemo_hs2.core.render import TEMPLATES
from nemo_hs2.core.reward_weights import DEFAULT_PRESET


class ConfigValueError(ValueError):
    """A config key or value nemo_hs2 cannot use; the message names the key."""


def _plain(value):
    """OmegaConf containers as plain Python (resolved), anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is in the lock
        return value
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def _check_keys(section: str, given: Mapping, fields: set[str], tolerated: frozenset = frozenset()) -> None:
    unknown = sorted(set(given) - fields - tolerated)
    if unknown:
        hints = {k: difflib.get_close_matches(k, sorted(fields), n=1) for k in unknown}
        said = ", ".join(f"{k}" + (f" (did you mean {hints[k][0]}?)" if hints[k] else "") for k in unknown)
        raise ConfigValueError(f"{section}: unknown key(s) {said}; the keys are {sorted(fields)}")


def _choice(section: str, key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigValueError(f"{section}.{key} must be one of {list(choices)}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class RegressionConfig:
    """``model.regression``: what the head predicts, how it is trained, and how its outputs become one reward."""

    attributes: tuple[str, ...] = HELPSTEER2_ATTRIBUTES  # by name; they travel with the checkpoint
    loss_func: str = "regression"  # regression | regular_bt | margin_bt | scaled_bt | regression+bt
    bt_reward: Any = "helpfulness"  # what BT compares: an attribute, a weight preset, or {attribute: weight}
    bt_loss_weight: float = 1.0  # regression+bt: the weight of the BT term
    bt_ties: str = "drop"  # drop | aligner (README, "Losses, rewards and scoring")
    reward_weights: Any = DEFAULT_PRESET  # preset or {attribute: weight}: validation, scoring, serving

    SECTION = "model.regression"
    # Written into the section by the model when it is built (and by NeMo-Aligner's own configs), never by a user.
    DERIVED = frozenset({"num_attributes", "merge_attributes", "attribute_weights", "load_rm_head_weights",
                         "loss_mask_val"})

    @classmethod
    def from_cfg(cls, node) -> RegressionConfig:
        given = {k: _plain(v) for k, v in dict(node or {}).items()}
        _check_keys(cls.SECTION, given, {f.name for f in dataclasses.fields(cls)}, cls.DERIVED)
        values = {k: v for k, v in given.items() if k not in cls.DERIVED and v is not None}
        if "attributes" in values:
            values["attributes"] = check_attributes(values["attributes"])
        out = cls(**values)
        _choice(cls.SECTION, "loss_func", out.loss_func, LOSS_NAMES)
        _choice(cls.SECTION, "bt_ties", out.bt_ties, BT_TIES)
        return dataclasses.replace(out, bt_loss_weight=float(out.bt_loss_weight))

    @property
    def uses_bt(self) -> bool:
        return self.loss_func != "regression"

    @property
    def uses_regression(self) -> bool:
        return self.loss_func in ("regression", "regression+bt")


DATA_SOURCES = ("demo", "files", "hub", "preference")
OVERLENGTH_POLICIES = ("truncate", "drop")
BAD_ROW_POLICIES = ("error", "skip")


def check_data(node) -> None:
    """The choices of ``data`` (its keys and types are fixed by the YAML group files and Hydra)."""
    data = {k: _plain(v) for k, v in dict(node).items()}
    _choice("data", "source", data.get("source"), DATA_SOURCES)
    _choice("data", "template", data.get("template") or "steerlm", TEMPLATES)
    _choice("data", "overlength", data.get("overlength", "truncate"), OVERLENGTH_POLICIES)
    _choice("data", "on_bad_row", data.get("on_bad_row", "error"), BAD_ROW_POLICIES)
    check_attributes(data.get("attributes") or ())
    score_range = data.get("score_range")
    if not (isinstance(score_range, list) and len(score_range) == 2 and score_range[0] <= score_range[1]):
        raise ConfigValueError(f"data.score_range must be [low, high] with low <= high, got {score_range!r}")
