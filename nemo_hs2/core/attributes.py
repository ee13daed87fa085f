"""HelpSteer2's rated attributes, always addressed by name."""

from collections.abc import Sequence

HELPSTEER2_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def check_attributes(names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(str(n) for n in names)
    if not names:
        raise ValueError("at least one attribute is required")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"attributes listed twice: {duplicates}")
    return names
