"""HelpSteer3-Preference (``nvidia/HelpSteer3``, config ``preference``) as Bradley-Terry pairs.

A row has ``domain`` (General, STEM, Code, Multilingual), ``language``, ``context`` (``[{role, content}, ...]``
ending with the user turn; a plain string is one user turn), ``response1``, ``response2``, ``overall_preference``
(-3..3, negative = response1 better) and ``individual_preference`` (the annotators' scores and reasoning; not
used for training). ``overall_preference`` has HelpSteer2-Preference's sign convention, which
``nemo_hs2.core.losses.bradley_terry_sum`` reads (negative prefers the first row of the pair), so it is the pair's
strength unchanged. A tie (0) stays a strength-0 pair: the loss decides what a tie means.

The context keeps its turns and becomes a ``Conversation`` with each response; ``nemo_hs2.core.render`` renders it,
the path scoring and serving take, so a trained model scores HelpSteer3 conversations as it saw them. A leading
``system`` turn is the conversation's own system turn; anywhere else it is a bad row.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from pathlib import Path
from typing import Any

from nemo_hs2.core.conversation import Conversation, ConversationError
from nemo_hs2.data.rows import Example
from nemo_hs2.data.records import (
    EMPTY_TEXT,
    LABEL_OUT_OF_RANGE,
    MISSING_FIELD,
    WRONG_TYPE,
    HubUnavailableError,
    RowProblem,
    file_records,
    hub_connection_errors,
    json_type,
    offline_mode_from_env,
)
from nemo_hs2.data.sources import check_policy, convert_rows, hub_unavailable_message, preference_strength, text_field

DOMAINS = ("General", "STEM", "Code", "Multilingual")
HUB_DATASET = "nvidia/HelpSteer3"
HUB_CONFIG = "preference"
BAD_CONTEXT = "bad_context"


@dataclasses.dataclass(frozen=True)
class HS3Pair:
    messages: tuple  # ({"role", "content"}, ...), optional leading system turn, ends with the user turn
    response_1: str
    response_2: str
    strength: int  # overall_preference, -3..3; negative = response_1 better, 0 = tie
    domain: str
    language: str
    source: str
    line: int


def _context(value: Any) -> tuple:
    if isinstance(value, str):
        if not value.strip():
            raise RowProblem("context", EMPTY_TEXT, "empty or whitespace-only text")
        return ({"role": "user", "content": value},)
    if hasattr(value, "tolist"):  # parquet list columns come back as numpy arrays
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value:
        raise RowProblem("context", WRONG_TYPE, f"expected a non-empty list of {{role, content}} turns or a string, "
                                          f"got {json_type(value) if value != [] else 'an empty array'}")
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise RowProblem("context", WRONG_TYPE, f"turn {i}: expected an object, got {json_type(turn)}")
        if not isinstance(turn.get("content"), str):
            raise RowProblem("context", WRONG_TYPE, f"turn {i}: content: expected a string, "
                                                    f"got {json_type(turn.get('content'))}")
    turns = tuple({"role": turn.get("role"), "content": turn["content"]} for turn in value)
    try:  # the one set of conversation rules (nemo_hs2.core.conversation), with a placeholder response
        Conversation.from_context(turns, "")
    except ConversationError as e:
        ends_wrong = e.turn is not None and e.turn >= len(turns)  # the response does not follow a user turn
        raise RowProblem("context", BAD_CONTEXT, "the context must end with a user turn" if ends_wrong
                         else str(e)) from None
    return turns


def _label(record: dict, field: str) -> str:
    value = record.get(field)
    if value is None:
        raise RowProblem(field, MISSING_FIELD, "field is missing")
    if not isinstance(value, str):
        raise RowProblem(field, WRONG_TYPE, f"expected a string, got {json_type(value)}")
    return value


def _convert(source: str):
    def convert(record: dict, number: int) -> HS3Pair:
        domain = _label(record, "domain")
        if domain not in DOMAINS:
            raise RowProblem("domain", LABEL_OUT_OF_RANGE, f"{domain!r} is not one of {DOMAINS}")
        language = _label(record, "language")
        if "context" not in record or record["context"] is None:
            raise RowProblem("context", MISSING_FIELD, "field is missing")
        messages = _context(record["context"])
        response_1, response_2 = text_field(record, "response1"), text_field(record, "response2")
        if record.get("overall_preference") is None:
            raise RowProblem("overall_preference", MISSING_FIELD, "field is missing")
        try:
            strength = preference_strength(record["overall_preference"])
        except RowProblem as bad:  # sources' check names HelpSteer2's field
            raise RowProblem("overall_preference", bad.reason, bad.detail.replace("strength", "preference")) from None
        individual = record.get("individual_preference")
        if individual is not None and not isinstance(individual, (list, tuple)) and not hasattr(individual, "tolist"):
            raise RowProblem("individual_preference", WRONG_TYPE, f"expected an array, got {json_type(individual)}")
        return HS3Pair(messages, response_1, response_2, strength, domain, language, source, number)

    return convert


class HS3Pairs(list):
    """The pairs kept; ``skipped`` counts bad rows by reason, ``filtered`` rows left out by domain / language."""

    def __init__(self, pairs=(), skipped: Counter | None = None, filtered: Counter | None = None):
        super().__init__(pairs)
        self.skipped = skipped if skipped is not None else Counter()
        self.filtered = filtered if filtered is not None else Counter()


def _check_filter(name: str, values, allowed=None) -> set[str] | None:
    if values is None:
        return None
    values = [values] if isinstance(values, str) else list(values)
    if not values:
        raise ValueError(f"data.{name}=[] would keep no rows; use null for all")
    if allowed is not None:
        unknown = [v for v in values if v not in allowed]
        if unknown:
            raise ValueError(f"data.{name}: {unknown} not among HelpSteer3's {list(allowed)} (case matters)")
    return set(values)


def filter_pairs(pairs, domains=None, languages=None) -> HS3Pairs:
    domains = _check_filter("domains", domains, DOMAINS)
    languages = _check_filter("languages", languages)
    kept, filtered = [], Counter()
    for p in pairs:
        if domains is not None and p.domain not in domains:
            filtered["domain"] += 1
        elif languages is not None and p.language not in languages:
            filtered["language"] += 1
        else:
            kept.append(p)
    return HS3Pairs(kept, Counter(getattr(pairs, "skipped", {})), filtered)


def read_helpsteer3(path: str | os.PathLike, domains=None, languages=None, on_bad_row: str = "error") -> HS3Pairs:
    """Pairs of a HelpSteer3-Preference ``.jsonl``, ``.jsonl.gz`` or ``.parquet`` file (``train.jsonl.gz`` /
    ``validation.jsonl.gz``). Every row is checked before the filters apply; a bad row raises ``BadRowError``
    (``file:line: field: reason``) or, with ``on_bad_row="skip"``, is counted in ``result.skipped``."""
    check_policy(on_bad_row)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HelpSteer3 file {path}: no such file")
    skipped = Counter()
    pairs = list(convert_rows(file_records(path), str(path), on_bad_row, skipped, _convert(str(path))))
    out = filter_pairs(pairs, domains, languages)
    out.skipped = skipped
    return out


def read_helpsteer3_hub(split: str, domains=None, languages=None, on_bad_row: str = "error",
                        dataset: str = HUB_DATASET) -> HS3Pairs:
    check_policy(on_bad_row)
    import datasets

    try:
        with offline_mode_from_env():
            table = datasets.load_dataset(dataset, HUB_CONFIG, split=split)
    except hub_connection_errors() as e:
        raise HubUnavailableError(hub_unavailable_message(f"{dataset} ({HUB_CONFIG})", split, e)) from e
    source = f"hf://{dataset}/{HUB_CONFIG}/{split}"
    skipped = Counter()
    pairs = list(convert_rows(enumerate(table, start=1), source, on_bad_row, skipped, _convert(source)))
    out = filter_pairs(pairs, domains, languages)
    out.skipped = skipped
    return out


def load_pairs(data_cfg, split: str) -> HS3Pairs:
    """One split as ``data=helpsteer3_preference`` configures it (local files, or ``data.from_hub=true``)."""
    domains, languages = data_cfg.get("domains"), data_cfg.get("languages")
    if data_cfg.get("from_hub"):
        path = data_cfg.get("hub_dataset") or HUB_DATASET
        pairs = read_helpsteer3_hub(split, domains, languages, data_cfg.on_bad_row, path)
    else:
        path = data_cfg.get(f"{split}_file")
        if not path:
            raise ValueError(f"data=helpsteer3_preference needs data.{split}_file=PATH (HelpSteer3 preference "
                             f"{split}.jsonl.gz) or data.from_hub=true")
        pairs = read_helpsteer3(path, domains, languages, data_cfg.on_bad_row)
    if not pairs:
        raise ValueError(f"{path} ({split}): no pairs left (filtered out: {dict(pairs.filtered)}, "
                         f"skipped: {dict(pairs.skipped)})")
    return pairs


def pair_examples(pairs) -> tuple[list[Example], list[float]]:
    """Two rows per pair (response_1, response_2) and the strengths, as ``nemo_hs2.data.preference`` lays them out."""
    rows, strengths = [], []
    for i, p in enumerate(pairs):
        for response in (p.response_1, p.response_2):
            rows.append(Example(Conversation.from_context(p.messages, response), {}, source=p.source, line=p.line,
                                pair_id=i))
        strengths.append(float(p.strength))
    return rows, strengths


# ------------------------------------------------------------------------------------------------------ demo
def demo_helpsteer3_rows(num_prompts: int, seed: int, split: str) -> list[dict]:
    """HelpSteer3-format rows from the demo generator (NOT HelpSteer3): the demo pairs
    (``nemo_hs2.data.demo.demo_pairs``, strength = helpfulness(response2) - helpfulness(response1), the same
    sign convention) with contexts of one to three turns, every other one led by a system turn, and domains and
    languages in rotation, so that the conversation and filter paths carry real training signal."""
    from nemo_hs2.data.demo import demo_pairs

    rows, strengths = demo_pairs(num_prompts, seed, split)
    out = []
    for i, (a, b, strength) in enumerate(zip(rows[0::2], rows[1::2], strengths)):
        context = [{"role": "user", "content": a.context[0].content}]
        if i % 3 == 1:
            context = [{"role": "user", "content": "I need some help."},
                       {"role": "assistant", "content": "Of course. What with?"}, *context]
        if i % 2:
            context = [{"role": "system", "content": "Answer in short steps."}, *context]
        domain = DOMAINS[i % len(DOMAINS)]
        out.append({"domain": domain, "language": "chinese" if domain == "Multilingual" else "english",
                    "context": context, "response1": a.response, "response2": b.response,
                    "overall_preference": int(strength), "individual_preference": []})
    return out


if __name__ == "__main__":
    import json
    import sys

    # python -m nemo_hs2.data.helpsteer3 OUT_DIR [PROMPTS]: demo train.jsonl and validation.jsonl
    out_dir, prompts = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 256
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", prompts), ("validation", max(8, prompts // 8))):
        with open(out_dir / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in demo_helpsteer3_rows(n, 1234, split))
        print(f"wrote {out_dir / f'{split}.jsonl'} ({n} pairs)")
