"""The planner's options (the ``plan`` group): one typed schema holding every default, validated before use.

They come from ``plan.KEY=VALUE`` arguments of ``examples/plan.py`` (strings) and, in training, from a ``plan:``
node of the composed config (``++plan.KEY=VALUE``: typed by Hydra); both go through ``PlanOptions.parse``, which
names the key, the value and what it accepts when a value is wrong, and lists the known keys for an unknown one."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Mapping

from omegaconf import OmegaConf

from nemo_hs2.plan.read import MISSING, get

NULLS = ("null", "none", "~")


def _null(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in NULLS)


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value):
        if value not in choices:
            raise ValueError(f"expected one of {' | '.join(choices)}")
        return value
    return parse


def _number(low: float, *, low_inclusive: bool = False, high: float | None = None) -> Callable[[Any], float]:
    bound = f"{'>=' if low_inclusive else '>'} {low:g}" + (f" and <= {high:g}" if high is not None else "")

    def parse(value):
        try:
            if isinstance(value, bool) or _null(value):
                raise ValueError
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number {bound}") from None
        if not math.isfinite(number) or number < low or (number == low and not low_inclusive) \
                or (high is not None and number > high):
            raise ValueError(f"expected a number {bound}")
        return number
    return parse


def _count(value) -> int | None:
    if _null(value):
        return None
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise ValueError("expected a whole number >= 1, or null")
    return count


def _flag(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError("expected true or false")


def _path(value) -> str | None:
    if _null(value):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise ValueError("expected a path, or null")
    return str(value)


def _option(default, parse: Callable[[Any], Any], meaning: str):
    return field(default=default, metadata={"parse": parse, "help": meaning})


@dataclass(frozen=True)
class PlanOptions:
    format: str = _option("table", _choice("table", "json"), "what examples/plan.py prints: table | json")
    gpu_memory_gb: float = _option(80.0, _number(0), "GiB per GPU (H100 / A100 80GB); 141 for H200")
    peak_tflops: float = _option(989.0, _number(0), "dense BF16 TFLOP/s per GPU (H100 SXM)")
    mfu: float = _option(0.30, _number(0, high=1), "assumed model-FLOPs utilisation for the time estimate")
    overhead_gb: float = _option(5.0, _number(0, low_inclusive=True),
                                 "fixed per-GPU overhead, GiB (CUDA context, NCCL buffers, workspaces)")
    fragmentation: float = _option(0.10, _number(0, low_inclusive=True),
                                   "allocator slack, fraction of weights + grads + optimizer + activations")
    train_rows: int | None = _option(None, _count, "training samples per epoch; null: plan.data_report's count, "
                                                   "else 20,324 (HelpSteer2) for regression data from files / hub")
    strict: bool = _option(False, _flag, "also fail on run-readiness rules (checkpoint / tokenizer still ???)")
    json_out: str | None = _option(None, _path, "also write the JSON plan to this path")
    data_report: str | None = _option(None, _path, "examples/prepare_data.py's data_report.json: time per step "
                                                   "at the data's widths")

    @classmethod
    def parse(cls, values: Mapping[str, Any]) -> PlanOptions:
        """Options from ``{key: value}`` (strings or typed values); ValueError naming the key for a bad one."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown planner option(s) {', '.join('plan.' + k for k in unknown)}; known: "
                             f"{', '.join('plan.' + k for k in known)}")
        parsed = {}
        for key, value in values.items():
            try:
                parsed[key] = known[key].metadata["parse"](value)
            except ValueError as e:
                raise ValueError(f"plan.{key}={value!r}: {e} (default {known[key].default!r})") from None
        return cls(**parsed)

    @classmethod
    def from_config(cls, cfg=None, overrides: Mapping[str, Any] | None = None) -> PlanOptions:
        """A config's ``plan:`` node (absent: defaults), then ``overrides`` on top."""
        values: dict[str, Any] = {}
        node = get(cfg, "plan") if cfg is not None else None
        if node is not None and node is not MISSING:
            if not OmegaConf.is_dict(node):
                raise ValueError(f"plan must be a mapping of planner options (plan.KEY=VALUE), got {node!r}")
            values.update(OmegaConf.to_container(node, resolve=True))
        values.update(overrides or {})
        return cls.parse(values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def describe(cls) -> str:
        """One line per option: key, default, meaning (examples/plan.py --help)."""
        shown = lambda v: "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)  # noqa: E731
        return "\n".join(f"  plan.{f.name:<15} {shown(f.default):<7} {f.metadata['help']}" for f in fields(cls))


def split_plan_overrides(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split CLI overrides into planner options (``plan.KEY=V``, ``+plan.KEY=V``, ``++plan.KEY=V``; values left as
    strings for ``PlanOptions.parse``) and the rest."""
    opts, rest = {}, []
    for arg in args:
        bare = arg.lstrip("+")
        if bare.startswith("plan.") and "=" in bare:
            key, value = bare[len("plan."):].split("=", 1)
            opts[key] = value
        else:
            rest.append(arg)
    return opts, rest
