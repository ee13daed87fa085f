"""``make_plan``: everything the planner knows about a training config, in order: the rules (``rules.check_rules``:
layout, vocabulary, broken rules), parameter counts (whatever the layout: a model's size does not depend on how
it is split), per-GPU memory (``memory``), FLOPs and time (``compute``). Never raises for a bad config: the rules
it breaks are in ``Plan.errors``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from nemo_hs2.core.resolvers import register_resolvers
from nemo_hs2.plan.arch import arch_of, parameter_counts
from nemo_hs2.plan.compute import run_compute
from nemo_hs2.plan.layout import Layout, Vocab
from nemo_hs2.plan.memory import does_not_fit, memory_estimate
from nemo_hs2.plan.options import PlanOptions
from nemo_hs2.plan.read import get
from nemo_hs2.plan.rules import check_rules


@dataclass
class Plan:
    layout: Layout
    options: PlanOptions
    vocab: Vocab | None = None
    params: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    compute: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)      # rules a config breaks (training refuses it)
    warnings: list[str] = field(default_factory=list)    # worth knowing, not fatal
    notes: list[str] = field(default_factory=list)       # run-readiness rules, errors only when strict
    choices: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """The JSON plan (examples/plan.py plan.format=json; examples/slurm/submit.sh reads its layout)."""
        return {"layout": self.layout.to_dict(), "vocab": self.vocab.to_dict() if self.vocab else {},
                "params": self.params, "memory": self.memory, "compute": self.compute, "errors": self.errors,
                "warnings": self.warnings, "notes": self.notes, "options": self.options.to_dict(),
                "choices": self.choices, "run": self.run, "ok": self.ok}


def _run_info(cfg) -> dict[str, Any]:
    em = get(cfg, "exp_manager")
    return {"name": get(cfg, "name"), "explicit_log_dir": get(em, "explicit_log_dir"),
            "max_time_per_run": get(em, "max_time_per_run")}


def make_plan(cfg: DictConfig, options: PlanOptions | None = None, *, strict: bool | None = None,
              check_memory: bool | None = None, choices: dict | None = None) -> Plan:
    """Everything the planner knows about ``cfg``. ``strict`` (default ``options.strict``): run-readiness findings
    are errors; ``check_memory`` (default: on GPU): a plan that does not fit is an error."""
    register_resolvers()
    opts = options if options is not None else PlanOptions.from_config(cfg)
    checks = check_rules(cfg, strict=opts.strict if strict is None else strict)
    p = Plan(layout=checks.layout, options=opts, vocab=checks.vocab, errors=checks.errors, warnings=checks.warnings,
             notes=checks.notes, choices=dict(choices or {}), run=_run_info(cfg))
    arch = arch_of(cfg.model, p.layout, p.vocab)
    if arch is None:
        return p
    p.params = parameter_counts(arch)
    memory = memory_estimate(arch, p.layout, opts)
    if memory is None:
        return p
    p.memory = {**memory, "checked": p.layout.on_gpu if check_memory is None else check_memory}
    if p.memory["checked"] and not memory["fits"]:
        p.errors.append(does_not_fit(memory, p.layout))
    p.compute, warnings, errors = run_compute(cfg, arch, p.layout, opts)
    p.warnings += warnings
    p.errors += errors
    return p
