"""benchmarks/gpu_check.py on CPU: the environment stage and the parity stage's weight transfer across processes."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_gpu_check_cpu_mode_reports_env_and_parity():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--stages", "env,parity"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index("{"):proc.stdout.rindex("}") + 1])
    env, parity = report["env"], report["parity"]
    assert env["cuda_available"] is False and "cuda-device" in env["cuda_group_planned"]
    # The CPU side starts from another seed: equal rewards mean the saved weights were loaded there.
    assert parity["compared"] == "cpu vs cpu" and parity["rows"] == 6 and parity["max_abs_diff"] <= 1e-6
    assert "| parity | cpu vs cpu: max abs diff" in proc.stdout
