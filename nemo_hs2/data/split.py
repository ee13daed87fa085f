"""Hold out validation rows by prompt, and turn held-out rated rows into RewardBench-schema pairs.

HelpSteer-style files rate several responses per prompt. A row-level split would put responses to one prompt on
both sides, and validation would reward memorising prompts; here every prompt's rows go to one side only. Rows are
written back unchanged (every field, original order within each side), so consecutive same-prompt rows still form
the pairs the data module reads.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Iterable, Sequence

from nemo_hs2.data.records import BadRowError


def read_jsonl(path: str | Path) -> list[dict]:
    """Every row of a .jsonl file as a dict; a row that is not a JSON object fails naming file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BadRowError(str(path), line_no, "<row>", "bad_json", str(e)) from None
            if not isinstance(row, dict):
                raise BadRowError(str(path), line_no, "<row>", "bad_json", "not a JSON object")
            rows.append(row)
    return rows


def write_jsonl(rows: Iterable[dict], path: str | Path) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def _prompt_key(prompt: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}\0{prompt}".encode()).hexdigest()


def split_by_prompt(rows: Sequence[dict], validation_fraction: float, seed: int = 0,
                    source: str = "<rows>") -> tuple[list[dict], list[dict]]:
    """(train, validation): ``ceil(fraction x prompts)`` prompts, chosen by a seeded hash, with all their rows.

    The choice depends only on the prompt texts and the seed, not on row order or the other rows' contents.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    for i, row in enumerate(rows, 1):
        if not isinstance(row.get("prompt"), str):
            raise BadRowError(source, i, "prompt", "missing_field", "a string prompt is needed to split by prompt")
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
