# GPU image: NeMo-Aligner 0.7.0's own base (pytorch:24.07 brings CUDA 12.5, torch 2.4, NVIDIA apex and
# Transformer Engine), with the same NeMo 2.1.0 / megatron-core 0.10.0 / NeMo-Aligner 0.7.0 pins as the CPU lock.
# On this image nemo_hs2.compat patches nothing for CUDA, apex or TE.
#   docker build -t nemo_hs2:0.1.0 .
FROM nvcr.io/nvidia/pytorch:24.07-py3

WORKDIR /opt/nemo_hs2
COPY requirements/ngc.txt requirements/ngc.txt
# --no-deps: resolving NeMo's requirements would replace the image's torch and pull transformers 5 / numpy 2.
RUN pip install --no-cache-dir --no-deps -r requirements/ngc.txt

COPY setup.py README.md ./
COPY nemo_hs2 nemo_hs2
COPY conf conf
COPY examples examples
COPY tests tests
RUN pip install --no-cache-dir --no-deps -e . \
    && python -m pytest -q tests/test_losses.py tests/test_metrics.py tests/test_reward.py tests/test_data_pipeline.py

CMD ["python", "examples/train_reward_model.py", "--help"]
