"""Dataset annotation: SteerLM-style labels (clamped, rounded), resuming after a kill without relabelling or skipping
rows, refusing to touch the input, and the script on the CPU demo checkpoint against the offline inference API."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from nemo_hs2.data.sources import BadRowError
from nemo_hs2.evaluation import annotate as ann
from nemo_hs2.evaluation.outputs import OutputError
from tests.fake_scorers import TextScorer
from tests.test_rewardbench import demo_checkpoint, demo_scorer, run_example

ATTRS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


class FakeScorer(TextScorer):
    """Predictions are a fixed function of the rated response's length (may leave 0..4)."""

    attributes = ATTRS
    weights = np.ones(5)
    batch_size = 2
    max_length = 400

    def __init__(self, fail_on_call: int | None = None):
        super().__init__()
        self.fail_on_call = fail_on_call

    def predict_tokens(self, rows):
        if self.calls + 1 == self.fail_on_call:
            raise RuntimeError("killed")
        return super().predict_tokens(rows)

    def predict_response(self, response):
        n = len(response)
        return [n / 3 - 1, n / 4, 2.5, -0.7, n / 10]


def conv(text):
    return [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": text}]


def write_rows(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_labels_are_clamped_and_rounded_half_up():
    pred = np.array([[-0.3, 4.7, 2.5, 1.49, 3.5]])
    assert ann.labels(pred, ATTRS, ann.AnnotateOptions()) == [
        {"helpfulness": 0, "correctness": 4, "coherence": 3, "complexity": 1, "verbosity": 4}]
    assert ann.labels(pred, ATTRS, ann.AnnotateOptions(round=False))[0]["correctness"] == 4.0
    assert ann.labels(pred, ATTRS, ann.AnnotateOptions(round=False))[0]["complexity"] == 1.49


def test_formats_and_output_fields(tmp_path):
    src = write_rows(tmp_path / "in.jsonl", [
        {"conversation": conv("abcdef"), "meta": 1},
        {"prompt": "Q1\n<extra_id_1>Assistant\nA1\n<extra_id_1>User\nQ2", "response": "abc"}])
    opts = ann.AnnotateOptions(output_field=None, label_field="label")
    summary = ann.annotate(FakeScorer(), src, str(tmp_path / "out"), opts, progress=False)
    rows = [json.loads(x) for x in open(summary["output"])]
    assert summary["output"] == str(tmp_path / "out" / "in.annotated.jsonl") and summary["rows_written"] == 2
    assert rows[0]["meta"] == 1 and rows[0]["conversation"] == conv("abcdef")
    assert {a: rows[0][a] for a in ATTRS} == {"helpfulness": 1, "correctness": 2, "coherence": 3, "complexity": 0,
                                              "verbosity": 1}
    assert rows[0]["label"] == "helpfulness:1,correctness:2,coherence:3,complexity:0,verbosity:1"
    assert rows[1]["helpfulness"] == 0 and rows[1]["prompt"].startswith("Q1")  # 3 / 3 - 1 = 0


def test_resume_after_a_kill_gives_the_uninterrupted_output(tmp_path):
    rows = [{"conversation": conv("x" * (i + 1))} for i in range(9)]
    rows.insert(4, "{not json")
    rows.insert(7, {"conversation": [{"role": "user", "content": "no answer"}]})
    src = write_rows(tmp_path / "data.jsonl", rows)
    before = sha(src)
    opts = ann.AnnotateOptions(batch_rows=2, on_bad_row="skip")
    full = ann.annotate(FakeScorer(), src, str(tmp_path / "a"), opts, progress=False)

    with pytest.raises(RuntimeError, match="killed"):
        ann.annotate(FakeScorer(fail_on_call=3), src, str(tmp_path / "b"), opts, progress=False)
    out_b = tmp_path / "b" / "data.annotated.jsonl"
    assert len(out_b.read_text().splitlines()) == 4  # two batches were complete
    with open(out_b, "a") as f:
        f.write('{"conversation": [{"role": "us')  # a kill in the middle of the next write
    resumed = FakeScorer()
    summary = ann.annotate(resumed, src, str(tmp_path / "b"), opts, progress=False)
    assert resumed.rows == 9 - 4  # nothing scored twice
    assert summary["resumed_after_rows"] == 4  # the rows of the two complete batches
    assert out_b.read_bytes() == (tmp_path / "a" / "data.annotated.jsonl").read_bytes()
    assert summary["rows_written"] == full["rows_written"] == 9
    assert summary["skipped"] == full["skipped"] == {"malformed_json": 1, "bad_conversation": 1}
    again = FakeScorer()
    assert ann.annotate(again, src, str(tmp_path / "b"), opts, progress=False)["rows_written"] == 9
    assert again.rows == 0  # a finished run resumes to nothing
    assert sha(src) == before


def test_refuses_other_inputs_and_unknown_outputs(tmp_path):
    src = write_rows(tmp_path / "d.jsonl", [{"conversation": conv("abc")}])
    out = tmp_path / "out"
    ann.annotate(FakeScorer(), src, str(out), progress=False)
    write_rows(tmp_path / "d.jsonl", [{"conversation": conv("abcd")}, {"conversation": conv("e")}])
    with pytest.raises(OutputError, match="different input"):
        ann.annotate(FakeScorer(), src, str(out), progress=False)
    (out / "d.annotated.jsonl.progress.json").unlink()
    with pytest.raises(OutputError, match="cannot be resumed safely"):
        ann.annotate(FakeScorer(), src, str(out), progress=False)


def test_never_writes_onto_the_input(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    src = write_rows(data / "d.jsonl", [{"conversation": conv("abc")}])
    before = sha(src)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "d.annotated.jsonl").symlink_to(src)  # the output path is the input, under another name
    with pytest.raises(OutputError, match="would overwrite the input"):
        ann.annotate(FakeScorer(), src, str(tmp_path / "out"), progress=False)
    assert sha(src) == before and sorted(p.name for p in data.iterdir()) == ["d.jsonl"]


def test_bad_row_stops_with_its_line(tmp_path):
    src = write_rows(tmp_path / "d.jsonl", [{"conversation": conv("abc")}, {"conversation": "hi"}])
    with pytest.raises(BadRowError, match=r"d.jsonl:2: conversation: expected a list of turns"):
        ann.annotate(FakeScorer(), src, str(tmp_path / "out"), progress=False)


# ------------------------------------------------------------------------------------------ with the demo model
@pytest.mark.slow  # the script loads the checkpoint in its own process: ~30 s CPU
def test_script_labels_like_the_offline_api(tmp_path_factory, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rows = [{"conversation": conv("First, read the guide twice. Use a torque of 5 Nm per bolt.")},
            {"conversation": [{"role": "system", "content": "Be brief."}, *conv("Two plus two is seven.")]},
            {"prompt": "How do I brew coffee?", "response": "Start by gathering everything you need."}]
    src = write_rows(inputs / "convs.jsonl", rows)
    before = sha(src)
    out = tmp_path / "out"
    proc = run_example("annotate_dataset.py", [f"checkpoint={demo_checkpoint(tmp_path_factory)}", f"input={src}",
                                               f"output_dir={out}", "annotate.label_field=label"])
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert sha(src) == before and sorted(p.name for p in inputs.iterdir()) == ["convs.jsonl"]
    written = [json.loads(x) for x in (out / "convs.annotated.jsonl").read_text().splitlines()]
    summary = json.loads((out / "annotate_summary.json").read_text())
    assert summary["rows_written"] == 3 and summary["skipped"] == {}

    scorer = demo_scorer(tmp_path_factory)
    convs = [ann.row_conversation(r, "conversation") for r in rows]
    want = ann.labels(np.array([[o["attributes"][a] for a in ATTRS] for o in scorer.score(convs)]), ATTRS,
                      ann.AnnotateOptions())
    for row, w, labels in zip(written, rows, want):
        assert row["attributes"] == labels and all(0 <= v <= 4 and isinstance(v, int) for v in labels.values())
        assert {k: v for k, v in row.items() if k not in ("attributes", "label")} == w
        assert row["label"] == ",".join(f"{a}:{v}" for a, v in labels.items())
    # Running again resumes to nothing: the output is complete.
    output_before = (out / "convs.annotated.jsonl").read_bytes()
    again = ann.annotate(scorer, src, str(out), ann.AnnotateOptions(label_field="label"), progress=False)
    assert again["resumed_after_rows"] == 3 and (out / "convs.annotated.jsonl").read_bytes() == output_before
