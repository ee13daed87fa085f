"""Hold out validation rows by prompt, and turn held-out rated rows into RewardBench-schema pairs.

HelpSteer-style files rate several responses per prompt. A row-level split would put responses to one prompt on
both sides, and validation would reward memorising prompts; here every prompt's rows go to one side only. Rows are
written back unchanged (every field, original order within each side), so consecutive same-prompt rows still form
the pairs the data module reads.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from pathlib import Path
from typing import Sequence

from nemo_hs2.data.records import MISSING_FIELD, BadRowError, RowProblem, file_records


def read_prompted_rows(path: str | Path) -> list[dict]:
    """Every row of a .jsonl / .jsonl.gz / .parquet file, unchanged; a bad line, or a row without a string
    ``prompt``, stops with ``file:line: field: detail``."""
    rows = []
    for line, record in file_records(Path(path)):
        if isinstance(record, RowProblem):
            raise BadRowError(str(path), line, record.field, record.reason, record.detail)
        if not isinstance(record.get("prompt"), str):
            raise BadRowError(str(path), line, "prompt", MISSING_FIELD, "a string prompt is needed to split by prompt")
        rows.append(record)
    return rows


def _prompt_key(prompt: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}\0{prompt}".encode()).hexdigest()


def split_by_prompt(rows: Sequence[dict], validation_fraction: float, seed: int = 0,
                    source: str = "<rows>") -> tuple[list[dict], list[dict]]:
    """(train, validation) of rows with a ``prompt`` (``read_prompted_rows``): ``ceil(fraction x prompts)``
    prompts, chosen by a seeded hash, with all their rows.

    The choice depends only on the prompt texts and the seed, not on row order or the other rows' contents.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    prompts = sorted({row["prompt"] for row in rows}, key=lambda p: _prompt_key(p, seed))
    if len(prompts) < 2:
        raise ValueError(f"{source}: {len(prompts)} distinct prompt(s); a split by prompt needs at least 2")
    n_val = min(len(prompts) - 1, math.ceil(validation_fraction * len(prompts)))
    held_out = set(prompts[:n_val])
    train = [row for row in rows if row["prompt"] not in held_out]
    validation = [row for row in rows if row["prompt"] in held_out]
    return train, validation


def rewardbench_pairs(rows: Sequence[dict], attribute: str = "helpfulness",
                      subset: str = "helpsteer-heldout") -> list[dict]:
    """RewardBench-schema rows (prompt, chosen, rejected, subset, id) from rated responses to the same prompt.

    Every two responses to one prompt whose ``attribute`` ratings differ give one row, the higher-rated response as
    ``chosen``; ties and responses without the rating give none. ``subset`` is not one of RewardBench's, so the
    evaluation reports it by name and in no RewardBench section.
    """
    by_prompt: dict[str, list[dict]] = {}
    for row in rows:
        if isinstance(row.get(attribute), (int, float)) and not isinstance(row.get(attribute), bool):
            by_prompt.setdefault(row["prompt"], []).append(row)
    out = []
    for p_idx, (prompt, rated) in enumerate(by_prompt.items()):
        for (i, a), (j, b) in itertools.combinations(enumerate(rated), 2):
            if a[attribute] == b[attribute]:
                continue
            chosen, rejected = (a, b) if a[attribute] > b[attribute] else (b, a)
            out.append({"prompt": prompt, "chosen": chosen["response"], "rejected": rejected["response"],
                        "chosen_model": "helpsteer", "rejected_model": "helpsteer", "subset": subset,
                        "id": f"{p_idx}-{i}-{j}", f"chosen_{attribute}": chosen[attribute],
                        f"rejected_{attribute}": rejected[attribute]})
    return out
