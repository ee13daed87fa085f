"""The real entry point, end to end on CPU: the default demo, and TP=2 / PP=2 under torchrun."""

import json
import math
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # each test trains through the real entry point (one- and two-process)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "train_reward_model.py")
SHORT = ["trainer.rm.max_steps=6", "trainer.rm.val_check_interval=3", "trainer.rm.save_interval=6",
         "data.demo.train_prompts=64", "data.demo.validation_prompts=12"]


def run(cmd, log_dir, console=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([*cmd, f"exp_manager.explicit_log_dir={log_dir}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    if console is not None:
        console.append(proc.stdout + proc.stderr)
    return json.loads((log_dir / "metrics.json").read_text())


def check(metrics, log_dir, steps):
    assert metrics["steps"] == steps
    assert [r["step"] for r in metrics["loss_curve"]] == list(range(steps))
    assert all(math.isfinite(r["loss"]) for r in metrics["loss_curve"])
    final = metrics["final_validation"]
    assert final["rows"] == 24  # every validation row exactly once (12 prompts x 2), none dropped or padded in
    for a in metrics["attributes"]:
        assert math.isfinite(final[f"{a}/mse"]) and final[f"{a}/count"] > 0
    assert (log_dir / "checkpoints" / "hs2_reward_model.nemo").is_file()
    assert any(p.name.endswith("-last") for p in (log_dir / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("demo")
    console = []
    return run([sys.executable, SCRIPT, *SHORT], log_dir, console), log_dir, console[0]


def test_default_demo_run(demo_run):
    metrics, log_dir, _ = demo_run
    check(metrics, log_dir, 6)
    assert metrics["layout"] == {"world": 1, "tp": 1, "pp": 1, "dp": 1, "num_microbatches": 4}
    assert metrics["data"]["train"]["used"] == 128


def test_demo_console_is_quiet_and_ends_with_the_summary(demo_run):
    metrics, log_dir, console = demo_run
    lines = [ln for ln in console.splitlines() if "steps:" not in ln and "tokenizing" not in ln]  # progress bars
    assert lines[0].startswith("nemo_hs2: training trainer=cpu data=demo model=tiny"), lines[:3]
    assert "does not have field.name" not in console and "data parallel group" not in console
    final = metrics["final_validation"]
    row = next(ln for ln in lines if ln.split()[:1] == ["helpfulness"]).split()
    assert row[1:3] == [f"{final['helpfulness/mse']:.3f}", f"{final['helpfulness/baseline_mse']:.3f}"]
    assert f"metrics      {log_dir / 'metrics.json'}" in lines
    held_back = [ln for ln in lines if ln.startswith("quiet: held back ")]
    assert len(held_back) == 1 and "config-mapping" in held_back[0]
    assert len([ln for ln in lines if ln.strip()]) <= 30, "\n".join(lines)


def test_start_from_a_reward_model_checkpoint_keeps_the_head(demo_run, tmp_path):
    metrics, log_dir, _ = demo_run
    nemo = log_dir / "checkpoints" / "hs2_reward_model.nemo"
    start = ["trainer.rm.max_steps=1", "trainer.rm.run_init_validation=true", f"init.restore_from_path={nemo}",
             "data.demo.train_prompts=64", "data.demo.validation_prompts=12"]
    loaded = run([sys.executable, SCRIPT, *start, "init.mode=reward_model"], tmp_path / "rm")
    before = loaded["validation_history"][0]
    assert before["step"] == 0
    # Validation of the loaded weights reproduces the source run's final validation: backbone and head loaded.
    assert before["mse"] == pytest.approx(metrics["final_validation"]["mse"], abs=1e-6)
    fresh = run([sys.executable, SCRIPT, *start, "init.mode=base"], tmp_path / "base")
    assert abs(fresh["validation_history"][0]["mse"] - before["mse"]) > 1e-3  # a new head predicts differently


def test_attribute_mismatch_with_a_checkpoint_is_an_error(demo_run, tmp_path):
    _, log_dir, _ = demo_run
    nemo = log_dir / "checkpoints" / "hs2_reward_model.nemo"
    proc = subprocess.run([sys.executable, SCRIPT, f"init.restore_from_path={nemo}", "init.mode=reward_model",
                           "data.attributes=[verbosity,helpfulness]", f"exp_manager.explicit_log_dir={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "predicts attributes ['helpfulness', 'correctness', 'coherence', 'complexity', 'verbosity']" in proc.stderr


@pytest.mark.parametrize("parallel, dp", [("model.tensor_model_parallel_size=2", 1),
                                          ("model.pipeline_model_parallel_size=2", 1),
                                          ("model.micro_batch_size=2", 2)])
def test_two_process_runs(tmp_path, parallel, dp):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29100 + len(parallel)), SCRIPT, "trainer.devices=2", parallel, *SHORT]
    metrics = run(cmd, tmp_path)
    check(metrics, tmp_path, 6)  # at DP=2 the validation rows come from both ranks, each exactly once
    assert metrics["layout"]["world"] == 2 and metrics["layout"]["dp"] == dp


def test_bradley_terry_key_is_honoured(tmp_path):
    """model.regression.loss_func selects the loss (NeMo-Aligner 0.7.0 reads another key and silently runs MSE)."""
    metrics = run([sys.executable, SCRIPT, "data=demo_preference", "model.regression.loss_func=scaled_bt", *SHORT],
                  tmp_path)
    first = metrics["train_history"][0]
    assert "bt_loss" in first and "regression_loss" not in first
    assert first["loss"] == first["bt_loss"]
    final = metrics["final_validation"]
    assert final["loss"] == final["bt_loss"] and final["preference_pairs"] > 0
    assert 0.0 <= final["preference_acc"] <= 1.0
