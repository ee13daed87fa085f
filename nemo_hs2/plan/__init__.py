"""Fail-fast planner: layout, rules, parameter count, per-GPU memory and step time of a training config.

Pure Python on the composed Hydra config (omegaconf only: no torch, NeMo or Megatron import), so it runs on a
login node in well under a second. ``examples/plan.py`` prints it; ``nemo_hs2.plan.checks`` runs the same rules at
the start of training, before any process group exists.

  options   PlanOptions: the ``plan.KEY=VALUE`` options, their defaults and validation
  layout    Layout (sizes, batch, settings; derived sizes as properties), Vocab (padding)
  rules     one function per group of rules; check_rules runs them all
  arch      the model's shape and parameter counts
  memory    per-GPU memory of the first and last pipeline stage (weights, gradients, optimizer, activations)
  compute   FLOPs, step time (at seq_length and at the data's widths), the run's length
  plan      Plan and make_plan (all of the above, in order)
  table     format_table
  checks    what training calls: check, parallel_layout, ConfigError
"""

from nemo_hs2.plan.layout import Layout, Vocab, layout_of
from nemo_hs2.plan.options import PlanOptions, split_plan_overrides
from nemo_hs2.plan.plan import Plan, make_plan
from nemo_hs2.plan.rules import RULES, check_rules
from nemo_hs2.plan.table import format_table

__all__ = ["Layout", "Plan", "PlanOptions", "RULES", "Vocab", "check_rules", "format_table", "layout_of",
           "make_plan", "split_plan_overrides"]
