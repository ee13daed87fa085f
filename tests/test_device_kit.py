"""The GPU device kit (scripts/device_kit.py): complete for the training path, under its size limit, and honest."""

import importlib.util
import json
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("device_kit", ROOT / "scripts" / "device_kit.py")
kit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kit)

# What the training path imports, mapped to the distributions that provide it (run in a fresh interpreter).
CLOSURE = r"""
import json, sys, importlib.metadata as md
from nemo_hs2.megatron import compat
compat.apply()
import nemo_hs2.megatron.train_recipe, nemo_hs2.megatron.reward_model, nemo_hs2.megatron.scorer
import nemo_aligner.algorithms.supervised, nemo_aligner.utils.train_script_utils
import nemo.collections.nlp.parts.megatron_trainer_builder, nemo.utils.exp_manager
pd = md.packages_distributions()
tops = {m.split(".")[0] for m in list(sys.modules)}
print(json.dumps(sorted({d for t in tops for d in pd.get(t, [])})))
"""


def test_training_path_imports_only_what_the_kit_or_the_image_provides():
    out = subprocess.run([sys.executable, "-c", CLOSURE], cwd=ROOT, capture_output=True, text=True, check=True)
    dists = {kit.norm(d) for d in json.loads(out.stdout.strip().splitlines()[-1])}
    assert {"nemo-toolkit", "megatron-core", "nemo-aligner", "numpy"} <= dists  # the probe saw the stack
    provided = set(kit.kit_entries()) | kit.IMAGE | kit.STOOD_IN | {"nemo-hs2"}
    assert sorted(dists - provided) == []


def _fake_wheel(path, name, version, requires):
    with zipfile.ZipFile(path / f"{name}-{version}-py3-none-any.whl", "w") as z:
        meta = "".join(f"Requires-Dist: {r}\n" for r in requires)
        z.writestr(f"{name}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{meta}")


def test_requirement_check_names_what_is_missing_or_mismatched(tmp_path, monkeypatch):
    monkeypatch.setattr(kit, "CARRY", {"numpy": ("1.26.4", ""), "demo": ("1.0", "")})
    monkeypatch.setattr(kit, "BUILD", {})
    monkeypatch.setattr(kit, "CP311", {"megatron-core": ("0.10.0", "")})
    _fake_wheel(tmp_path, "numpy", "1.26.4", [])
    _fake_wheel(tmp_path, "demo", "1.0", ["numpy>=2", "torch", "jieba", "nowhere-pkg>=1", 'winonly; sys_platform == "win32"',
                                          'docs-only; extra == "docs"'])
    problems = kit.requirement_problems(tmp_path)
    assert any("needs numpy>=2, the kit has numpy 1.26.4" in p for p in problems)
    assert any("nowhere-pkg" in p and "neither the kit nor the image" in p for p in problems)
    assert any(p.startswith("megatron-core==0.10.0: not in the kit") for p in problems)
    assert not any("torch" in p or "jieba" in p or "winonly" in p or "docs-only" in p for p in problems)
    assert len(problems) == 3


def test_repack_drops_test_suites_and_their_record_lines(tmp_path):
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/__init__.py", "x = 1\n")
        z.writestr("pkg/tests/test_x.py", "assert True\n")
        z.writestr("pkg-1.0.dist-info/RECORD", "pkg/__init__.py,,\npkg/tests/test_x.py,,\n")
    kit.repack_without_tests(wheel)
    with zipfile.ZipFile(wheel) as z:
        assert sorted(z.namelist()) == ["pkg-1.0.dist-info/RECORD", "pkg/__init__.py"]
        assert z.read("pkg-1.0.dist-info/RECORD") == b"pkg/__init__.py,,\n"


def test_chinese_text_libs_are_stood_in_for_only_where_absent():
    code = r"""
import sys
sys.modules["jieba"] = None; sys.modules["opencc"] = None   # as on the GPU image: not installed
from nemo_hs2.megatron import compat
assert "chinese-text-libs" in compat.apply()
import nemo.collections.common.tokenizers.chinese_tokenizers as zh   # imports jieba / opencc eagerly
try:
    zh.jieba.cut("x")
except ModuleNotFoundError as e:
    print("refused:", e)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "refused: jieba is not installed" in out.stdout
    from nemo_hs2.megatron import compat

    assert "chinese-text-libs" not in {p.name for p in compat.planned()}  # installed here: nothing to stand in for


def _pypi_reachable() -> bool:
    probe = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "-d", "/tmp/nemo_hs2_pypi_probe", "six==1.17.0"], capture_output=True, timeout=120)
    return probe.returncode == 0


@pytest.mark.slow
def test_kit_builds_under_the_limit_and_is_complete(tmp_path, capsys):
    if not _pypi_reachable():
        pytest.skip("PyPI is not reachable from this machine: the kit cannot be downloaded")
    kit.build(tmp_path / "whl")
    status = kit.check(tmp_path / "whl")
    out = capsys.readouterr()
    assert status == 0, out.out + out.err
    total, _ = kit.sizes(tmp_path / "whl")
    assert total <= kit.LIMIT_MIB
    assert "every wheel installs" in out.out
