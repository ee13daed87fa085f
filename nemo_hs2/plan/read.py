"""Reading a composed config without raising: absent or null keys give a default, ``???`` gives ``MISSING``.

The planner must describe any config, including one still waiting for its checkpoint (``???`` keys), so it never
lets OmegaConf raise MissingMandatoryValue."""

from __future__ import annotations

from omegaconf import OmegaConf


class _Missing:
    def __repr__(self):
        return "???"


MISSING = _Missing()


def get(node, key: str, default=None):
    """node[key] resolved; ``default`` when absent or null; MISSING when '???'."""
    if node is None:
        return default
    if OmegaConf.is_config(node):
        if key in node.keys() and OmegaConf.is_missing(node, key):  # `key in node` is False for ???
            return MISSING
        if key not in node:
            return default
        value = node[key]
    else:
        value = node.get(key, default)
    return default if value is None else value


def is_set(value) -> bool:
    return value is not None and value is not MISSING
