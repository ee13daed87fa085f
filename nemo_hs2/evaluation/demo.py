"""A RewardBench-format file from the demo generator, for trying evaluation without the hub (NOT RewardBench).

Each row takes a demo prompt and its two generated responses (``nemo_hs2.data.demo``); ``chosen`` is the one whose
true demo labels give the higher ``nemotron_340b`` reward. Subset names are RewardBench's, so the file exercises the
section weighting, but the rows have nothing to do with those subsets' contents.

    python -m nemo_hs2.evaluation.demo OUT.jsonl [ROWS_PER_SUBSET]
"""

from __future__ import annotations

import json
import sys

from nemo_hs2.data.demo import demo_examples
from nemo_hs2.evaluation.rewardbench import EXAMPLE_COUNTS
from nemo_hs2.core.reward_weights import PRESETS


def _true_reward(labels) -> float | None:
    weights = PRESETS["nemotron_340b"]
    if any(a not in labels for a in weights):
        return None
    return sum(w * labels[a] for a, w in weights.items())


def demo_rewardbench_rows(rows_per_subset: int = 4, subsets=None, seed: int = 0) -> list[dict]:
    rows = []
    for subset in subsets or list(EXAMPLE_COUNTS):
        examples = demo_examples(rows_per_subset * 4, seed=seed, split=f"rewardbench-{subset}")
        made = 0
        for a, b in zip(examples[0::2], examples[1::2]):
            ra, rb = _true_reward(a.labels), _true_reward(b.labels)
            if ra is None or rb is None or ra == rb:
                continue
            chosen, rejected = (a, b) if ra > rb else (b, a)
            rows.append({"prompt": a.prompt, "chosen": chosen.response, "chosen_model": "demo",
                         "rejected": rejected.response, "rejected_model": "demo", "subset": subset,
                         "id": len(rows)})
            made += 1
            if made == rows_per_subset:
                break
    return rows


def write_jsonl(path: str, rows) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


if __name__ == "__main__":
    out = sys.argv[1]
    per_subset = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    rows = demo_rewardbench_rows(per_subset)
    print(f"wrote {len(rows)} rows to {write_jsonl(out, rows)}")
