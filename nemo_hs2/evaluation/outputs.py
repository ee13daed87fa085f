"""Writing results: everything goes to the output directory, atomically, and never onto an input file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable


class OutputError(ValueError):
    pass


def _same(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(outputs: Iterable[str], inputs: Iterable[str | None]) -> None:
    """Refuse to run if any output path is one of the inputs (e.g. an output_dir that holds an input file of the
    same name): a result must never replace the data it was computed from."""
    inputs = [os.fspath(i) for i in inputs if i and str(i) != "hub"]
    for out in outputs:
        for inp in inputs:
            if _same(out, inp):
                raise OutputError(f"output {out} would overwrite the input {inp}: choose another output_dir")


def write_text(path: str, text: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)  # a reader (or a kill) never sees half a file
    return path


def write_json(path: str, obj) -> str:
    return write_text(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def write_jsonl(path: str, records: Iterable[dict]) -> str:
    return write_text(path, "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records))
