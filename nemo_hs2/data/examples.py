"""A rated prompt/response row, independent of where it was read from."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Example:
    prompt: str
    response: str
    labels: dict[str, float]  # attribute name -> score; an absent name is a missing (masked) label
    source: str = "<memory>"  # file the row came from, for error messages
    line: int = 0  # 1-based line (or row) number in ``source``
    pair_id: int = -1  # rows rating two responses to the same prompt share it; -1 when unpaired
