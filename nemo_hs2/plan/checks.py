"""Config checks that must fail on the login node, before any process group or model exists.

The rules live in ``nemo_hs2.plan.rules`` (also printed by ``examples/plan.py``); this module is what training calls.
"""

from __future__ import annotations

import logging

from nemo_hs2.plan.options import PlanOptions
from nemo_hs2.plan.plan import Plan, make_plan

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    pass


def check(cfg, options: dict | None = None) -> Plan:
    """Every planner rule, as training applies them: run-readiness rules are errors (a recipe's ``???``
    checkpoint must be set), and the per-GPU memory fit is enforced only when ``trainer.accelerator`` is gpu.
    Planner options come from ``++plan.KEY=VALUE`` overrides (e.g. ``++plan.gpu_memory_gb=141`` on H200)."""
    try:
        opts = PlanOptions.from_config(cfg, options)
    except ValueError as e:
        raise ConfigError(f"invalid planner options: {e}") from None
    plan = make_plan(cfg, opts, strict=True)
    if plan.errors:
        raise ConfigError("invalid training config:\n  - " + "\n  - ".join(plan.errors))
    for w in plan.warnings:
        log.warning(w)
    return plan


def parallel_layout(cfg) -> dict[str, int]:
    """World size and TP/PP/DP of a training config; raises ConfigError naming the rule a config breaks."""
    layout = check(cfg).layout
    return {"world": layout.world, "tp": layout.tp, "pp": layout.pp, "dp": layout.dp,
            "num_microbatches": layout.num_microbatches}
