"""examples/slurm: syntax and shellcheck, and the commands they generate, recorded by fake sbatch / srun / scontrol."""

import os
import shutil
import stat
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SLURM = ROOT / "examples" / "slurm"
SCRIPTS = [SLURM / "submit.sh", SLURM / "train_rm.sbatch", *sorted((ROOT / "scripts" / "slurm").glob("*.sh"))]
CKPT = "init.restore_from_path=/models/base.nemo"

# Each fake appends one record per call: its name, (srun: MASTER_ADDR / MASTER_PORT,) one argument per line, "--".
FAKE = """#!/usr/bin/env bash
{{ echo {name}; {extra} printf '%s\\n' "$@"; echo --; }} >> "$FAKE_LOG"
{body}
"""
FAKES = {
    "sbatch": ("", 'echo "Submitted batch job 4242"'),
    # FAKE_TASK_STATUS: what each task's wrapper records as its own exit status (task 0 first)
    "srun": ('echo "MASTER_ADDR=$MASTER_ADDR"; echo "MASTER_PORT=$MASTER_PORT";',
             'i=0; for s in ${FAKE_TASK_STATUS:-}; do echo "$s" > "$NEMO_HS2_STATUS_DIR/task-$i"; i=$((i + 1)); done\n'
             'exit "${FAKE_SRUN_RC:-0}"'),
    "scontrol": ("", 'if [ "$1" = show ]; then printf "gpu001\\ngpu002\\n"; fi'),
}


@pytest.fixture
def fake_slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, (extra, body) in FAKES.items():
        path = bin_dir / name
        path.write_text(FAKE.format(name=name, extra=extra, body=body))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log), "PYTHON": sys.executable}
    for key in [k for k in env if k.startswith(("SLURM_", "NEMO_HS2_"))]:
        del env[key]

    def calls():
        if not log.exists():
            return []
        out, cur = [], None
        for line in log.read_text().splitlines():
            if cur is None:
                cur = [line]
            elif line == "--":
                out.append(cur)
                cur = None
            else:
                cur.append(line)
        return out

    return env, calls, tmp_path


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert os.access(script, os.X_OK)


# Under CI the lint is required: a missing tool fails the run instead of skipping it (and CI stays green).
@pytest.mark.skipif(shutil.which("shellcheck") is None and os.environ.get("CI", "").lower() not in ("1", "true"),
                    reason="shellcheck not installed (apt-get install shellcheck)")
def test_shellcheck_clean():
    assert shutil.which("shellcheck"), "CI is set but shellcheck is not installed: the lint cannot be skipped there"
    out = subprocess.run(["shellcheck", "--severity=style", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("recipe, nodes, tp, pp", [("hs2_llama3_70b", 8, 8, 2), ("hs2_nemotron4_340b", 24, 8, 24),
                                                  ("hs3_llama3_3_70b_scaled_bt", 4, 8, 4)])
def test_submit_plans_then_sbatches_the_planned_layout(fake_slurm, recipe, nodes, tp, pp):
    env, calls, tmp = fake_slurm
    results = tmp / "results"
    out = subprocess.run([str(SLURM / "submit.sh"), "--image", "/img/nemo_hs2.sqsh", "--results", str(results),
                          "--account", "acct", f"+recipe={recipe}", CKPT, "plan.gpu_memory_gb=80"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "checks: OK" in out.stdout and "Submitted batch job 4242" in out.stdout
    [(name, *args)] = calls()
    assert name == "sbatch"
    for flag in (f"--nodes={nodes}", "--ntasks-per-node=8", "--gpus-per-node=8", "--requeue", "--account=acct",
                 f"--job-name={recipe}", "--signal=USR1@1200", f"--output={results}/{recipe}/slurm/slurm-%j.out"):
        assert flag in args, flag
    script = args.index(str(SLURM / "train_rm.sbatch"))
    overrides = args[script + 1:]
    for o in (f"+recipe={recipe}", CKPT, f"trainer.num_nodes={nodes}", "trainer.devices=8",
              f"model.tensor_model_parallel_size={tp}", f"model.pipeline_model_parallel_size={pp}",
              f"exp_manager.explicit_log_dir=/results/{recipe}", "++plan.gpu_memory_gb=80"):
        assert o in overrides, o
    assert (results / recipe / "slurm" / "plan.json").exists()


def test_submit_refuses_what_does_not_fit(fake_slurm):
    env, calls, tmp = fake_slurm
    out = subprocess.run([str(SLURM / "submit.sh"), "--image", "img", "--results", str(tmp / "r"),
                          "+recipe=hs2_nemotron4_340b", CKPT, "trainer.num_nodes=12",
                          "model.pipeline_model_parallel_size=12"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "does not fit" in out.stdout and "nothing was submitted" in out.stderr
    assert calls() == []


def run_batch(fake_slurm, *overrides, srun_rc=0, restart=0, task_status="", host=False):
    env, calls, tmp = fake_slurm
    env = {**env, "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[001-002]", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_NTASKS_PER_NODE": "8", "SLURM_RESTART_COUNT": str(restart), "FAKE_SRUN_RC": str(srun_rc),
           "NEMO_HS2_IMAGE": "/img/nemo_hs2.sqsh", "NEMO_HS2_RESULTS": str(tmp / "results"),
           "NEMO_HS2_RUN": "run1", "NEMO_HS2_MOUNTS": "/models:/models", "FAKE_TASK_STATUS": task_status}
    if host:  # the tasks' status directory is then the host's own path
        env.update(NEMO_HS2_MODE="host", NEMO_HS2_REPO=str(ROOT))
    out = subprocess.run(["bash", str(SLURM / "train_rm.sbatch"), *overrides], env=env, capture_output=True,
                         text=True, timeout=30)
    return out, calls()


def test_batch_script_launches_one_task_per_gpu_in_the_container(fake_slurm):
    overrides = ["+recipe=hs2_llama3_70b", "trainer.num_nodes=2", "model.tensor_model_parallel_size=8",
                 "model.pipeline_model_parallel_size=2"]
    out, calls = run_batch(fake_slurm, *overrides)
    srun = [c for c in calls if c[0] == "srun"]
    assert len(srun) == 1, out.stdout + out.stderr
    args = srun[0][1:]
    for flag in ("--nodes=2", "--ntasks-per-node=8", "--container-image=/img/nemo_hs2.sqsh",
                 f"--container-mounts={fake_slurm[2] / 'results'}:/results,/models:/models"):
        assert flag in args, flag
    cmd = args[args.index("python"):]
    assert cmd[:2] == ["python", "examples/train_reward_model.py"] and cmd[2:] == overrides
    assert "MASTER_ADDR=gpu001" in args and f"MASTER_PORT={20000 + 4242}" in args
    # status 0 without the final .nemo: stopped by the timer, so requeued
    assert ["scontrol", "requeue", "4242"] in calls and out.returncode == 0


def test_batch_script_requeues_on_preemption_and_stops_when_done(fake_slurm):
    out, calls = run_batch(fake_slurm, "x=1", srun_rc=75)  # nemo_hs2.megatron.faults.EXIT_PREEMPTED: checkpoint saved
    assert ["scontrol", "requeue", "4242"] in calls and out.returncode == 0

    ckpt = fake_slurm[2] / "results" / "run1" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "run1.nemo").write_text("")
    fake_slurm[2].joinpath("calls.log").unlink()
    out, calls = run_batch(fake_slurm, "x=1", restart=1)
    assert not [c for c in calls if c[:2] == ["scontrol", "requeue"]] and out.returncode == 0
    srun = [c for c in calls if c[0] == "srun"][0]
    assert srun[-2:] == ["x=1", "resume=required"]  # a requeued run must find its checkpoints
    fake_slurm[2].joinpath("calls.log").unlink()
    out, calls = run_batch(fake_slurm, "x=1", restart=2, srun_rc=143)  # a late SIGTERM in teardown: still done
    assert not [c for c in calls if c[:2] == ["scontrol", "requeue"]] and out.returncode == 0

    fake_slurm[2].joinpath("calls.log").unlink()
    (ckpt / "run1.nemo").unlink()
    out, calls = run_batch(fake_slurm, "x=1", srun_rc=1)  # a crash is not requeued by default
    assert out.returncode == 1 and not [c for c in calls if c[:2] == ["scontrol", "requeue"]]

    fake_slurm[2].joinpath("calls.log").unlink()
    out, calls = run_batch(fake_slurm, "x=1", srun_rc=137)  # a rank SIGKILLed: srun ended the step; rerun
    assert ["scontrol", "requeue", "4242"] in calls


def test_batch_script_judges_by_each_task_s_own_status(fake_slurm):
    """One task's Python error, then srun --kill-on-bad-exit's SIGTERM (143) or a peer's exit 75 for the lost rank:
    srun reports 143 or 75, but the job failed and a rerun would fail the same way."""
    def requeued(calls):
        return ["scontrol", "requeue", "4242"] in calls

    log = fake_slurm[2] / "calls.log"
    for srun_rc, statuses in ((143, "1 143"), (75, "75 1")):
        out, calls = run_batch(fake_slurm, "x=1", srun_rc=srun_rc, task_status=statuses, host=True)
        assert out.returncode == 1 and not requeued(calls), out.stdout + out.stderr
        assert "a task failed (exit 1)" in out.stdout
        log.unlink()
    out, calls = run_batch(fake_slurm, "x=1", srun_rc=75, task_status="75 75", host=True)  # every rank pre-empted
    assert requeued(calls) and out.returncode == 0 and "task-0:75 task-1:75" in out.stdout
    log.unlink()
    out, calls = run_batch(fake_slurm, "x=1", srun_rc=143, task_status="75", host=True)  # task 1 killed mid-exit
    assert requeued(calls) and "killed by signal 15" in out.stdout


def test_requeued_run_requires_only_a_complete_checkpoint(fake_slurm):
    """A job that died while writing its first checkpoint: the rerun must not demand resume=required."""
    ckpt = fake_slurm[2] / "results" / "run1" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "rm--step=4").mkdir()
    (ckpt / "rm--step=4-unfinished").write_text("")
    out, calls = run_batch(fake_slurm, "x=1", restart=1)
    srun = [c for c in calls if c[0] == "srun"][0]
    assert srun[-1] == "x=1", srun[-3:]
    (ckpt / "rm--step=4-unfinished").unlink()
    fake_slurm[2].joinpath("calls.log").unlink()
    out, calls = run_batch(fake_slurm, "x=1", restart=1)
    assert [c for c in calls if c[0] == "srun"][0][-2:] == ["x=1", "resume=required"]
