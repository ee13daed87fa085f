"""The session's Hugging Face exports, made by the parity worker (tests/parallel/hf_export_parity.py) for the first
module that asks and re-used by the rest: tests/test_hf_export.py checks them against the .nemo under the pinned
transformers, tests/test_ecosystem.py loads the same directories under today's transformers and TRL. Each is cached
under the session's base temp directory; its JSON is written last, so a failed run is redone, never half re-used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "parallel" / "hf_export_parity.py"
SP_WRITER = ROOT / "tests" / "hf" / "aligner_sentencepiece.py"
FAMILIES = ("llama3", "llama31", "llama32", "nemotron")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT))


def run(cmd, timeout=1200, env=ENV):
    proc = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def worker(tmp: Path, out: Path, args) -> dict:
    run([sys.executable, WORKER, "--out", out, "--tmp", tmp, *args])
    return json.loads(out.read_text())


def _once(tmp: Path, name: str, args, prepare=lambda: None) -> dict:
    """The worker's results for ``args`` in ``tmp``, run the first time only (written as .part, then renamed)."""
    out = tmp / f"{name}.json"
    if not out.is_file():
        tmp.mkdir(exist_ok=True)
        prepare()
        worker(tmp, tmp / f"{name}.json.part", args)
        (tmp / f"{name}.json.part").rename(out)
    return json.loads(out.read_text())


def families(tmp_path_factory) -> tuple[Path, dict]:
    """Tiny random Llama 3 / 3.1 / 3.2 / Nemotron-4 RMs exported in both head modes (DIR/<family>/hf_<head>), with
    the .nemo's RewardBench / HelpSteer2 evaluation of Llama 3.1 and each attributes export imported back."""
    from tests.test_rewardbench import demo_helpsteer2_file, rewardbench_test_rows

    tmp = tmp_path_factory.getbasetemp() / "hf_exports"

    def inputs():
        (tmp / "rb.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rewardbench_test_rows()))
        demo_helpsteer2_file(tmp / "hs2.jsonl")

    args = [*[a for f in FAMILIES for a in ("--family", f)], "--hf-chat", "llama31", "--hf-chat", "llama32",
            "--evaluate", "llama31", "--round-trip"]
    return tmp, _once(tmp, "parity", args, inputs)


def demo(tmp_path_factory) -> tuple[Path, dict]:
    """The default job's checkpoint exported (DIR/demo/hf_<head>) and imported back."""
    from tests.test_rewardbench import demo_checkpoint

    tmp = tmp_path_factory.getbasetemp() / "hf_exports"
    return tmp, _once(tmp, "demo", ["--nemo", f"demo={demo_checkpoint(tmp_path_factory)}", "--round-trip"])["demo"]


def aligner_sentencepiece(tmp_path_factory) -> tuple[Path, dict]:
    """NeMo-Aligner's own 9-slot SentencePiece Nemotron RM (DIR/aligner_sp.nemo, its own scores in
    DIR/reference.json) exported with head_layout=aligner_9slot (DIR/sp/hf_<head>) and imported back."""
    tmp = tmp_path_factory.getbasetemp() / "hf_sentencepiece"
    args = ["--nemo", f"sp={tmp / 'aligner_sp.nemo'}", "--head-layout", "sp=aligner_9slot",
            "--reference", f"sp={tmp / 'reference.json'}", "--round-trip"]
    return tmp, _once(tmp, "sp", args, lambda: run([sys.executable, SP_WRITER, tmp]))["sp"]
