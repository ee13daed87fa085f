"""The device kit: the wheels a lent GPU machine lacks for nemo_hs2's training path, and the checks that it is complete.

    python scripts/device_kit.py build [--out .whl]     # download / build / repack, then check size and needs
    python scripts/device_kit.py check [--out .whl]     # the checks alone, on an existing kit

The lent machine (``/work/.library/device/KINDS.md``, read 2026-11-17) has Python 3.12, torch 2.11 + CUDA 13, numpy 2,
transformers 5 and no network. Our stack is the CPU lock (NeMo 2.1, megatron-core 0.10, NeMo-Aligner 0.7.0) which
needs numpy < 2 and transformers 4.48; everything the image lacks, or has in a version that breaks the lock, travels
as cp312 wheels in ``.whl/`` (git-ignored; the device tool's ``carry`` limit is 64 MiB per call, the kit's 60 MiB).
``scripts/device_install.sh`` is the device side: it installs the kit into ``/tmp/site`` and puts it first on
PYTHONPATH, so the kit shadows the image's numpy / transformers while torch, CUDA and the rest come from the image.

Three kinds of entry:
* CARRY: cp312 (or pure-Python) wheels from PyPI, pinned to the lock's versions;
* BUILD: pure-Python packages PyPI serves only as sdists, built into wheels here;
* CP311: megatron-core 0.10.0 is served only for cp310/cp311; its Python part is unzipped on the device (its one
  compiled module is the GPT-dataset index helper, which nemo_hs2 never imports).
jieba and opencc (NeMo's Chinese tokenizer imports them eagerly; 21 MiB together) are not carried:
``nemo_hs2.megatron.compat`` stands in for them where they are absent, and a call into them fails with a clear error.
"""

from __future__ import annotations

import argparse
import email.parser
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MIB = 60.0
PYTHON = "3.12"
PLATFORMS = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_24_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_28_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux1_x86_64"]

# name: (version, why it travels). Versions are requirements/cpu.lock's.
CARRY = {
    "numpy": ("1.26.4", "NeMo 2.1 / megatron-core 0.10 need numpy < 2; the image has 2.x"),
    "transformers": ("4.48.3", "NeMo 2.1 breaks on transformers 5 (the image's)"),
    "tokenizers": ("0.21.4", "transformers 4.48 needs tokenizers < 0.22"),
    "huggingface_hub": ("0.36.2", "transformers 4.48 needs huggingface_hub < 1.0; the image has 1.x"),
    "pandas": ("2.3.3", "the lock's pandas; pandas 3 breaks NeMo 2.1 and the image's pandas needs no pytz (so is 3.x)"),
    "pytz": ("2026.6", "pandas 2.x needs it; not in the image"),
    "tzdata": ("2026.6", "pandas 2.x needs it; not in the image"),
    "lightning": ("2.4.0", "NeMo 2.1 was tested with lightning 2.4 (the image's version is not recorded)"),
    "nemo_toolkit": ("2.1.0", "the host"),
    "nemo_aligner": ("0.7.0", "the host"),
    "hydra-core": ("1.3.2", "configs"),
    "omegaconf": ("2.3.0", "configs"),
    "zarr": ("2.18.7", "imported by megatron-core's dist-ckpt strategies when NeMo starts; zarr 3 breaks it"),
    "numcodecs": ("0.15.2", "zarr 2's codecs"),
    "asciitree": ("1.0.0", "zarr 2"),
    "fasteners": ("0.20", "zarr 2"),
    "datasets": ("3.6.0", "imported by NeMo's SFT datasets at start-up"),
    "dill": ("0.3.8", "datasets 3.6"),
    "multiprocess": ("0.70.16", "datasets 3.6"),
    "Deprecated": ("1.3.1", "NeMo"),
    "braceexpand": ("0.1.7", "NeMo / webdataset"),
    "webdataset": ("1.0.2", "NeMo"),
    "defusedxml": ("0.7.1", "NeMo"),
    "ijson": ("3.6.0", "NeMo"),
    "jsonlines": ("4.0.0", "NeMo-Aligner"),
    "nltk": ("3.10.4", "imported by NeMo's tokenizer utilities at start-up"),
    "pangu": ("4.0.6.1", "imported by NeMo's Chinese tokenizer at start-up (7 kB; jieba/opencc are stood in for)"),
    "text-unidecode": ("1.3", "NeMo"),
    "ruamel.yaml": ("0.19.1", "NeMo"),
}
BUILD = {
    "antlr4-python3-runtime": ("4.9.3", "omegaconf's grammar runtime (sdist only)"),
    "rouge_score": ("0.1.2", "imported by NeMo's prompt-learning dataset at start-up (sdist only)"),
    "wget": ("3.2", "NeMo (sdist only)"),
}
CP311 = {"megatron-core": ("0.10.0", "served for cp310/cp311 only; its Python part runs on 3.12")}
STOOD_IN = {"jieba", "opencc"}  # nemo_hs2.megatron.compat's "chinese-text-libs" patch
# Declared by megatron-core 0.10's metadata but never imported on our path; requirements/cpu.lock leaves them out too
# (nvidia-modelopt[torch] pulls a torchvision that breaks every NeMo import, see README "Pinned stack").
NOT_NEEDED = {"flask-restful", "pytest-random-order", "wandb", "nvidia-modelopt"}
REPACK = {"numpy", "pandas"}  # shipped test suites (~4 MiB) are dropped to fit the limit

# The image's Python packages (KINDS.md, 2026-11-17), and the versions its recorded pip list gave.
IMAGE = set("""absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp""".split())
IMAGE_VERSIONS = {"accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "onnx": "1.23.1",
                  "pytorch-lightning": "2.6.6", "safetensors": "0.8.0", "sentencepiece": "0.2.2",
                  "tiktoken": "0.14.0", "tokenizers": "0.23.2", "torch": "2.11.0", "torchmetrics": "1.9.0",
                  "transformers": "5.17.0"}
DEVICE_ENV = {"python_version": PYTHON, "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def kit_entries() -> dict[str, str]:
    return {norm(n): v for table in (CARRY, BUILD, CP311) for n, (v, _) in table.items()}


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], check=True)


def _platform_args() -> list[str]:
    args = ["--only-binary=:all:", "--python-version", PYTHON, "--implementation", "cp", "--abi", "cp312"]
    for p in PLATFORMS:
        args += ["--platform", p]
    return args


def _wheel_name(path: Path) -> str:
    return norm(path.name.split("-")[0])


def repack_without_tests(wheel: Path) -> None:
    """Rewrite a wheel without its ``tests/`` folders; RECORD loses their lines so pip's install stays consistent."""
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if "/tests/" in info.filename:
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(line for line in data.splitlines(keepends=True) if b"/tests/" not in line)
            dst.writestr(info, data)
    tmp.replace(wheel)


def build(out: Path) -> None:
    out.mkdir(exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()
    _pip("download", "-q", "--no-deps", *_platform_args(), "-d", str(out),
         *[f"{n}=={v}" for n, (v, _) in CARRY.items()])
    _pip("wheel", "-q", "--no-deps", "-w", str(out), *[f"{n}=={v}" for n, (v, _) in BUILD.items()])
    cp311 = [a.replace("cp312", "cp311").replace(PYTHON, "3.11") for a in _platform_args()]
    _pip("download", "-q", "--no-deps", *cp311, "-d", str(out), *[f"{n}=={v}" for n, (v, _) in CP311.items()])
    for wheel in out.glob("*.whl"):
        if _wheel_name(wheel) in REPACK:
            repack_without_tests(wheel)
    data = ROOT.parent / "shared" / "data" / "helpsteer_sample_300.jsonl"
    if data.is_file():  # the benchmark's rows; ../shared does not travel to the device, the kit does
        (out / "data").mkdir(exist_ok=True)
        shutil.copy2(data, out / "data" / data.name)


def sizes(out: Path) -> tuple[float, list[tuple[str, float]]]:
    files = [p for p in out.rglob("*") if p.is_file()]
    rows = sorted(((str(p.relative_to(out)), p.stat().st_size / 2**20) for p in files), key=lambda r: -r[1])
    return sum(s for _, s in rows), rows


def requirement_problems(out: Path) -> list[str]:
    """Every dependency of every kit wheel, evaluated for the device's Python 3.12 / Linux x86_64, must come from
    the kit (at a version its specifier admits), the image, or compat's stand-ins."""
    from packaging.requirements import Requirement

    kit = {_wheel_name(w): w.name.split("-")[1] for w in out.glob("*.whl")}
    problems = []
    for name, version in sorted(kit_entries().items()):
        if kit.get(name) != version:
            problems.append(f"{name}=={version}: not in the kit (found {kit.get(name, 'nothing')})")
    for wheel in sorted(out.glob("*.whl")):
        with zipfile.ZipFile(wheel) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            msg = email.parser.Parser().parsestr(z.read(meta).decode())
        for line in msg.get_all("Requires-Dist") or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(DEVICE_ENV):
                continue
            dep = norm(req.name)
            if dep in kit:
                if not req.specifier.contains(kit[dep], prereleases=True):
                    problems.append(f"{wheel.name}: needs {req}, the kit has {dep} {kit[dep]}")
            elif dep in IMAGE:
                have = IMAGE_VERSIONS.get(dep)
                if have and not req.specifier.contains(have, prereleases=True):
                    problems.append(f"{wheel.name}: needs {req}, the image has {dep} {have}")
            elif dep not in STOOD_IN | NOT_NEEDED:
                problems.append(f"{wheel.name}: needs {req}, which neither the kit nor the image has")
    return problems


def pip_dry_run(out: Path) -> None:
    """pip's own resolver, for Python 3.12 manylinux, over the kit alone (no index): every cp312 wheel installs."""
    wheels = [w for w in out.glob("*.whl") if "cp311" not in w.name]
    with tempfile.TemporaryDirectory() as tmp:
        _pip("install", "-q", "--dry-run", "--ignore-installed", "--no-index", "--no-deps", "--target", tmp,
             "--report", str(Path(tmp) / "report.json"), *_platform_args(), *map(str, wheels))


def check(out: Path) -> int:
    total, rows = sizes(out)
    print(f"device kit {out}: {total:.1f} MiB in {len(rows)} files (limit {LIMIT_MIB:g} MiB)")
    for name, size in rows[:12]:
        print(f"  {size:7.2f} MiB  {name}")
    status = 0
    if total > LIMIT_MIB:
        print(f"device kit: {total:.1f} MiB is over the {LIMIT_MIB:g} MiB limit", file=sys.stderr)
        status = 1
    problems = requirement_problems(out)
    for p in problems:
        print(f"device kit: {p}", file=sys.stderr)
    pip_dry_run(out)
    print("device kit: pip dry run for Python 3.12 manylinux: every wheel installs")
    return 1 if problems else status


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["build", "check"])
    p.add_argument("--out", default=str(ROOT / ".whl"))
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.action == "build":
        build(out)
    return check(out)


if __name__ == "__main__":
    sys.exit(main())
