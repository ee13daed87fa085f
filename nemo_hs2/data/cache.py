"""On-disk cache of a tokenized split: tokenize once, memory-map on every later start.

A cache entry is a directory ``{cache_dir}/{split}-{key}`` holding

    tokens.npy        int32, every used row's tokens, concatenated
    offsets.npy       int64, rows + 1 entries: row i is tokens[offsets[i]:offsets[i + 1]]
    labels.npy        float32 [rows, attributes], NaN where a label is missing
    pair_ids.npy      int64
    full_lengths.npy  int64, each row's length before truncation
    meta.json         the key, what it was computed from, and the split's TokenizeStats

``key`` hashes everything the tokens depend on (``key_components``), so a change of data, tokenizer, template,
attributes, score range, seq_length, over-length policy or bad-row policy misses instead of serving stale rows.
An entry is written into a temporary sibling directory and renamed into place, so a reader sees either nothing
or a whole entry; ``meta.json`` is written last and an entry without it is never read.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from nemo_hs2.core.render import encode
from nemo_hs2.data.dataset import RewardDataset, TokenizeStats

# Bump when the layout, the tokenization code or anything else a key cannot see changes meaning.
CACHE_VERSION = 1

# Mixed scripts, whitespace runs, digits and the SteerLM markers: two tokenizers that agree on this are very
# unlikely to disagree on HelpSteer2 text, and any vocabulary or normalisation change shows up here.
PROBE_TEXT = ("<extra_id_0>System\nA chat.\n<extra_id_1>User\nWhat's 12 + 30?  Ünïcödé, naïve café, 数学, "
              "Привет, 🙂\t\n\n<extra_id_1>Assistant\nIt is 42.\n<extra_id_2>")

ARRAYS = ("tokens", "offsets", "labels", "pair_ids", "full_lengths")
META = "meta.json"
_TMP_PREFIX = ".tmp-"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tokenizer_identity(tokenizer) -> dict:
    """Class name, vocabulary size and a hash of the probe text's ids."""
    ids = encode(tokenizer, PROBE_TEXT)
    vocab = getattr(tokenizer, "vocab_size", None)
    if vocab is None and hasattr(tokenizer, "__len__"):
        vocab = len(tokenizer)
    return {"class": type(tokenizer).__name__, "vocab_size": None if vocab is None else int(vocab),
            "probe_sha256": hashlib.sha256(json.dumps(ids).encode()).hexdigest()}


def key_components(*, source: dict, tokenizer: dict, template: dict, attributes, score_range, seq_length: int,
                   overlength: str, on_bad_row: str) -> dict:
    return {
        "version": CACHE_VERSION,
        "source": source,
        "tokenizer": tokenizer,
        "template": template,
        "attributes": [str(a) for a in attributes],
        "score_range": [float(x) for x in score_range],
        "seq_length": int(seq_length),
        "overlength": str(overlength),
        "on_bad_row": str(on_bad_row),
    }


def cache_key(components: dict) -> str:
    return hashlib.sha256(json.dumps(components, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def entry_path(cache_dir: str | os.PathLike, split: str, key: str) -> Path:
    return Path(cache_dir) / f"{split}-{key[:24]}"


def open_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = Path(path)
    return {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in ARRAYS}


def load(path: str | os.PathLike, key: str) -> tuple[RewardDataset, TokenizeStats] | None:
    """The entry at ``path`` if it is complete and was written for ``key``; None otherwise."""
    path = Path(path)
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != key or meta.get("version") != CACHE_VERSION:
        return None
    try:
        arrays = open_arrays(path)
    except (OSError, ValueError):
        return None
    rows = int(meta["stats"]["used"])
    if len(arrays["offsets"]) != rows + 1 or int(arrays["offsets"][-1]) != len(arrays["tokens"]):
        return None
    ds = RewardDataset.from_arrays(arrays["tokens"], arrays["offsets"], arrays["labels"], arrays["pair_ids"],
                                   meta["attributes"], full_lengths=arrays["full_lengths"],
                                   reopen=functools.partial(open_arrays, str(path)))
    stats = TokenizeStats.from_dict(meta["stats"])
    stats.cache_path, stats.cache_hit = str(path), True
    return ds, stats


def _mark_ignored(cache_dir: Path) -> None:
    # The default cache lives inside the working tree; keep it out of `git status` without touching .gitignore.
    marker = cache_dir / ".gitignore"
    if not marker.exists():
        try:
            marker.write_text("*\n")
        except OSError:
            pass


def save(path: str | os.PathLike, key: str, components: dict, dataset: RewardDataset,
         stats: TokenizeStats) -> Path:
    """Write an entry atomically; if another process published the same key first, keep theirs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _mark_ignored(path.parent)
    tmp = path.parent / f"{_TMP_PREFIX}{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        full = dataset.full_lengths if dataset.full_lengths is not None else dataset.lengths()
        arrays = {"tokens": dataset.flat_tokens, "offsets": dataset.offsets, "labels": dataset.labels,
                  "pair_ids": dataset.pair_ids, "full_lengths": full}
        for name in ARRAYS:
            with open(tmp / f"{name}.npy", "wb") as f:
                np.save(f, np.ascontiguousarray(arrays[name]))
                f.flush()
                os.fsync(f.fileno())
        meta = {"version": CACHE_VERSION, "key": key, "components": components,
                "attributes": list(dataset.attributes), "stats": stats.to_dict()}
        with open(tmp / META, "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.rename(tmp, path)
        except OSError:
            # The name is taken: another rank won the race (keep its entry) or a broken entry sits there
            # (move it aside, then publish ours).
            if load(path, key) is not None:
                shutil.rmtree(tmp, ignore_errors=True)
                return path
            stale = path.parent / f"{_TMP_PREFIX}stale-{path.name}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(path, stale)
            except OSError:
                pass
            os.rename(tmp, path)
            shutil.rmtree(stale, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
