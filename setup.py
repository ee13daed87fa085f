from setuptools import find_packages, setup

# Runtime requirements are pinned in requirements/cpu.lock (CPU) or come with the NGC image (GPU); they are
# deliberately not repeated here so `pip install -e .` never re-resolves torch, NeMo or megatron-core.
setup(
    name="nemo_hs2",
    version="0.1.0",
    description="HelpSteer2 attribute-regression reward models on NeMo-Aligner / Megatron",
    packages=find_packages(include=["nemo_hs2", "nemo_hs2.*"]),
    python_requires=">=3.10",
    license="Apache-2.0",
)
