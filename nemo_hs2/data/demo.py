"""The built-in CPU demo set: generated, deterministic, HelpSteer2-shaped, and learnable by a tiny model.

This is NOT HelpSteer2 and says nothing about real reward-model quality. Each response is a few sentences drawn
from four banks, and every score is a fixed function of which banks the sentences came from:

    verbosity   = number of sentences - 2                    (responses have 2..6 sentences)
    correctness = 4 - 2 * number of false statements           (clipped at 0)
    coherence   = 4 - 2 * number of scrambled sentences        (clipped at 0)
    complexity  = number of technical sentences                (clipped at 4; missing on ~10% of rows)
    helpfulness = instructions - false statements + 1          (clipped to 0..4)

So the labels are exactly recoverable from the text, and a model that reads it beats a constant predictor.
Rows come in pairs (two responses to one prompt) like HelpSteer2, so pairwise accuracy is defined.
"""

from __future__ import annotations

import random

from nemo_hs2.data.rows import Example

TASKS = ["bake bread", "repair a bike tyre", "plant tomatoes", "write a cover letter", "learn to swim",
         "brew coffee", "paint a wall", "back up a laptop", "train a puppy", "start running",
         "fold a shirt", "clean a keyboard", "save money", "tune a guitar", "pack a suitcase", "boil an egg"]
INSTRUCTIONS = ["Start by gathering everything you need.", "Next, follow each step slowly.",
                "Then check the result carefully.", "Finally, clean up and review.",
                "First, read the guide twice.", "After that, ask for feedback."]
FALSE = ["The sun orbits the moon every day.", "Water boils at ten degrees.",
         "Cats have six legs and wings.", "Two plus two is seven."]
SCRAMBLED = ["Blue quickly the under of seven.", "Table jumps if purple never sleeps.",
             "Sand over loud because window.", "Ran eleven so hat the green."]
TECHNICAL = ["Use a torque of 5 Nm per bolt.", "Keep the ratio at 3:1 by mass.",
             "Set the pH between 6.0 and 6.8.", "Apply a 40 ms debounce interval."]


def _clip(x: int) -> float:
    return float(max(0, min(4, x)))


def _response(rng: random.Random) -> tuple[str, dict[str, float]]:
    n = rng.randint(2, 6)
    banks = rng.choices(["instruction", "false", "scrambled", "technical"], weights=[4, 1, 1, 2], k=n)
    pools = {"instruction": INSTRUCTIONS, "false": FALSE, "scrambled": SCRAMBLED, "technical": TECHNICAL}
    text = " ".join(rng.choice(pools[b]) for b in banks)
    count = {b: banks.count(b) for b in pools}
    labels = {
        "helpfulness": _clip(count["instruction"] - count["false"] + 1),
        "correctness": _clip(4 - 2 * count["false"]),
        "coherence": _clip(4 - 2 * count["scrambled"]),
        "complexity": _clip(count["technical"]),
        "verbosity": _clip(n - 2),
    }
    if rng.random() < 0.1:
        del labels["complexity"]  # exercise masked (missing) labels
    return text, labels


def demo_examples(num_prompts: int, seed: int, split: str) -> list[Example]:
    """``2 * num_prompts`` rows; the same (num_prompts, seed, split) always gives the same rows."""
    rng = random.Random(f"nemo_hs2-demo-{split}-{seed}")
    rows = []
    for p in range(num_prompts):
        prompt = f"How do I {rng.choice(TASKS)}?"
        for _ in range(2):
            text, labels = _response(rng)
            rows.append(Example.rated(prompt, text, labels, source=f"<demo:{split}>", line=len(rows) + 1, pair_id=p))
    return rows


def demo_pairs(num_prompts: int, seed: int, split: str) -> tuple[list[Example], list[float]]:
    """Demo preference pairs: strength = helpfulness(response_2) - helpfulness(response_1), clipped to -3..3."""
    rows = demo_examples(num_prompts, seed, split)
    strengths = [float(max(-3.0, min(3.0, b.labels["helpfulness"] - a.labels["helpfulness"])))
                 for a, b in zip(rows[0::2], rows[1::2])]
    return rows, strengths
