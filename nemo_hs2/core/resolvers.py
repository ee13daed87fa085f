"""The OmegaConf resolvers the configs use (``${multiply:...}``, ``${int_div:...}``), registered in one place.

Plain omegaconf: the planner imports it on a login node without torch or NeMo."""

from __future__ import annotations

from omegaconf import OmegaConf


def register_resolvers() -> None:
    """Register ``multiply`` (x * y) and ``int_div`` (x // y). Idempotent: ``replace=True`` lets every entry point
    and test call it again without OmegaConf's 'resolver already registered' error."""
    OmegaConf.register_new_resolver("multiply", lambda x, y: x * y, replace=True)
    OmegaConf.register_new_resolver("int_div", lambda x, y: x // y, replace=True)
