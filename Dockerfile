# GPU image for nemo_hs2 (multi-node training under SLURM with pyxis / enroot):
#   docker build -t nemo_hs2:0.1.0 .  &&  enroot import -o nemo_hs2.sqsh dockerd://nemo_hs2:0.1.0
#
# Base image, pinned by tag: NeMo Framework 24.12, the NGC release built from NeMo 2.1 with megatron-core 0.10
# (core_r0.10.0) and with NVIDIA apex (including the distributed_adam extension that the recipes' optimizer,
# distributed_fused_adam, needs) and Transformer Engine built for that pair. NeMo-Aligner 0.7.0, its last release,
# was made against exactly NeMo 2.1.0 + megatron-core 0.10.0; newer NeMo images carry NeMo 2.2+ (and from 2.5 no
# MegatronGPTModel at all), which nemo_hs2.megatron.compat refuses. For a bit-reproducible image pin the digest too
# (FROM nvcr.io/nvidia/nemo:24.12@sha256:...). Needs NGC access: docker login nvcr.io.
FROM nvcr.io/nvidia/nemo:24.12

ENV CUDA_DEVICE_MAX_CONNECTIONS=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/nemo_hs2

# requirements/cpu.lock's pins of what nemo_hs2 needs exactly (NeMo, megatron-core, NeMo-Aligner 0.7.0, Hydra),
# with --no-deps: torch, apex, TE and NeMo's other dependencies stay the image's. The build fails if they differ.
COPY requirements/ngc.txt requirements/ngc.txt
RUN pip install --no-cache-dir --no-deps -r requirements/ngc.txt \
    && python -c "import importlib.metadata as m; want = {'nemo_toolkit': '2.1.0', 'megatron_core': '0.10.0', 'nemo_aligner': '0.7.0'}; got = {k: m.version(k) for k in want}; assert got == want, got; print('pinned:', got)"

COPY setup.py README.md ./
COPY nemo_hs2 nemo_hs2
COPY conf conf
COPY examples examples
COPY tests tests
# The fast, GPU-free subset of the tests (no Megatron model is built during docker build).
RUN pip install --no-cache-dir --no-deps -e . \
    && python -m pytest -q -p no:cacheprovider tests/test_losses.py tests/test_metrics.py tests/test_reward.py \
       tests/test_data_pipeline.py tests/test_planner.py tests/test_slurm.py

# NeMo's HF -> .nemo converters are in the image under /opt/NeMo/scripts/checkpoint_converters (README).
CMD ["python", "examples/plan.py", "--help"]
