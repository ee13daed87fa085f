"""examples/prepare_data.py and the data report (nemo_hs2/data/report.py), checked against hand-computed numbers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_hs2.data.build import prepare, validate
from nemo_hs2.data.report import format_report, length_summary, score_histogram
from nemo_hs2.data.sources import BadRowError
from tests.conftest import data_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "prepare_data.py"
SAMPLE = ROOT.parent / "shared" / "data" / "helpsteer_sample_300.jsonl"


class Bytes:
    eos_id = 258
    vocab_size = 259

    def text_to_ids(self, text):
        return list(text.encode("utf-8"))


def labels(h, c, o, x, v):
    row = dict(helpfulness=h, correctness=c, coherence=o, complexity=x, verbosity=v)
    return {k: val for k, val in row.items() if val is not None}


# With system prompt "S" the SteerLM template adds 74 bytes to prompt + response:
# "<extra_id_0>System\n" 19, "S\n" 2, "<extra_id_1>User\n" 17, "\n" 1, "<extra_id_1>Assistant\n" 22, "\n" 1,
# "<extra_id_2>" 12.
LINES = [
    json.dumps({"prompt": "a" * 10, "response": "b" * 16, **labels(3, 4, 4, 2, 1)}),   # 100 tokens
    json.dumps({"prompt": "a" * 10, "response": "c" * 6, **labels(2, 3, 4, 1, 0)}),    # 90
    json.dumps({"prompt": "q", "response": "r", **labels("high", 3, 3, 3, 3)}),         # line 3: wrong type
    json.dumps({"prompt": "d" * 20, "response": "e" * 106, **labels(4, None, 3, 2, 4)}),  # 200 -> 150
    '{"prompt": "cut off',                                                              # line 5: malformed
    json.dumps({"prompt": "f" * 6, "response": "gg", **labels(0, 0, 0, 0, 0)}),        # 82
]


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    return path


def data_cfg(path, tmp_path, **over):
    cfg = data_config("helpsteer2")
    cfg.seq_length = 150
    cfg.train_file = cfg.validation_file = str(path)
    cfg.system_prompt = "S"
    cfg.cache_dir = str(tmp_path / "cache")
    for k, v in over.items():
        cfg[k] = v
    return cfg


def test_report_matches_hand_computation(tiny, tmp_path):
    report = prepare(data_cfg(tiny, tmp_path, on_bad_row="skip"), Bytes(), 150, tmp_path / "out", progress=False)
    assert json.loads((tmp_path / "out" / "data_report.json").read_text()) == report
    for split in ("train", "validation"):
        r = report["splits"][split]
        assert (r["rows_read"], r["used"], r["truncated"]) == (6, 4, 1)
        assert r["skipped"] == {"malformed_json": 1, "wrong_type": 1}
        # used lengths 100, 90, 150 (truncated from 200), 82
        assert r["tokens"] == {"mean": 105.5, "p50": 90, "p90": 150, "max": 150}
        assert r["tokens_before_truncation"] == {"mean": 118.0, "p50": 90, "p90": 200, "max": 200}
        # rows per padded length (multiple of data.pad_to_multiple = 8): 82 -> 88, 90 -> 96, 100 -> 104, 150 -> 152
        assert r["length_histogram"] == {"bin_width": 8, "counts": {"88": 1, "96": 1, "104": 1, "152": 1}}
        assert r["attributes"] == {
            "helpfulness": {"0": 1, "1": 0, "2": 1, "3": 1, "4": 1, "missing": 0},
            "correctness": {"0": 1, "1": 0, "2": 0, "3": 1, "4": 1, "missing": 1},
            "coherence": {"0": 1, "1": 0, "2": 0, "3": 1, "4": 2, "missing": 0},
            "complexity": {"0": 1, "1": 1, "2": 2, "3": 0, "4": 0, "missing": 0},
            "verbosity": {"0": 2, "1": 1, "2": 0, "3": 0, "4": 1, "missing": 0},
        }
        assert r["cache"]["path"].startswith(str(tmp_path / "cache"))
    assert report["settings"]["tokenizer"]["class"] == "Bytes"
    text = format_report(report)
    assert "malformed_json: 1, wrong_type: 1" in text and "helpfulness" in text


def test_error_mode_names_file_line_and_field(tiny, tmp_path):
    with pytest.raises(BadRowError) as err:
        validate(data_cfg(tiny, tmp_path))
    assert str(err.value).startswith(f"{tiny}:3: helpfulness: ")
    assert not (tmp_path / "cache").exists()


def test_report_helpers_edge_cases():
    assert length_summary([7]) == {"mean": 7.0, "p50": 7, "p90": 7, "max": 7}
    assert length_summary(range(1, 11)) == {"mean": 5.5, "p50": 5, "p90": 9, "max": 10}  # nearest rank
    nan = float("nan")
    assert score_histogram([0.0, 2.5, nan, 4.0], (0, 4)) == {"0": 1, "1": 0, "2": 0, "2.5": 1, "3": 0, "4": 1,
                                                            "missing": 1}


def _run(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_script_fails_fast_on_a_bad_row(tiny, tmp_path):
    proc = _run(["data=helpsteer2", f"data.train_file={tiny}", f"data.validation_file={tiny}",
                 f"output_dir={tmp_path / 'out'}"], tmp_path)
    assert proc.returncode == 1
    assert f"{tiny}:3: helpfulness: expected a number" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_defaults_to_helpsteer2_and_names_the_file_override(tiny, tmp_path):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="prepare_data")  # the form users type, minus the files
    assert cfg.data.source == "files"
    with pytest.raises(ValueError, match=r"data.source=files needs data.train_file=PATH"):
        validate(cfg.data)
    proc = _run([f"data.train_file={tiny}", f"data.validation_file={tmp_path / 'nope.jsonl'}",
                 f"output_dir={tmp_path / 'out'}", "data.on_bad_row=skip"], tmp_path)
    assert proc.returncode == 1 and f"data.validation_file={tmp_path / 'nope.jsonl'}: no such file (set " \
        "data.validation_file=PATH)" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "Could not override" not in proc.stderr


def test_script_writes_report_and_cache_in_skip_mode(tiny, tmp_path):
    out = tmp_path / "out"
    proc = _run(["data=helpsteer2", f"data.train_file={tiny}", f"data.validation_file={tiny}", f"output_dir={out}",
                 "data.on_bad_row=skip", "data.system_prompt=S", "model.encoder_seq_length=150",
                 f"data.cache_dir={tmp_path / 'cache'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "data_report.json").read_text())
    train = report["splits"]["train"]
    assert (train["rows_read"], train["used"], train["truncated"]) == (6, 4, 1)
    assert train["tokens"]["max"] == 150 and report["settings"]["tokenizer"]["class"] == "ByteLevelTokenizer"
    assert "wrong_type: 1" in proc.stdout and "label histogram" in proc.stdout
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")) == [
        "train", "validation"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "out", "tiny.jsonl"]  # no Hydra outputs/, logs


def test_prepare_on_the_shared_sample(tmp_path):
    if not SAMPLE.is_file():
        pytest.skip(f"shared sample not found at {SAMPLE} (../shared/data beside the repository)")
    cfg = data_cfg(SAMPLE, tmp_path, system_prompt=None)
    report = prepare(cfg, Bytes(), 4096, progress=False)
    train = report["splits"]["train"]
    assert train["rows_read"] == train["used"] == 300 and train["skipped"] == {}
    assert sum(train["attributes"]["helpfulness"].values()) == 300
