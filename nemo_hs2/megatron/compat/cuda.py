"""Patches for a machine without CUDA: megatron-core / NeMo / NeMo-Aligner allocate on and seed the GPU."""

from __future__ import annotations

import torch

from nemo_hs2.megatron.compat.registry import no_cuda, patch


def _as_cpu(device):
    if isinstance(device, int) and not isinstance(device, bool):
        return torch.device("cpu")
    if isinstance(device, str) and device.startswith("cuda"):
        return torch.device("cpu")
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


class _CudaToCpu(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if "device" in kwargs:
            kwargs = dict(kwargs, device=_as_cpu(kwargs["device"]))
        if func is torch.Tensor.to and len(args) > 1:
            args = (args[0], _as_cpu(args[1]), *args[2:])
        return func(*args, **kwargs)


_MODE: _CudaToCpu | None = None


@patch("cuda-rng", "cuda", "megatron-core's RNG tracker saves/restores CUDA generator state; use the CPU generator",
        no_cuda, dists=("megatron_core",))
def _cuda_rng():
    import megatron.core.tensor_parallel.random as mcore_random

    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    torch.cuda.random.get_rng_state = torch.cuda.get_rng_state
    torch.cuda.manual_seed = lambda seed: torch.manual_seed(seed)
    mcore_random._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)
    if hasattr(mcore_random, "_get_cuda_rng_state"):  # moved there in megatron-core 0.11
        mcore_random._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: torch.get_rng_state()


@patch("cuda-device", "cuda", "mcore/NeMo/Aligner allocate on torch.cuda.current_device() and call .cuda(); keep them on CPU",
        no_cuda, dists=("megatron_core", "nemo_toolkit", "nemo_aligner"))
def _cuda_device():
    global _MODE
    torch.cuda.current_device = lambda: 0  # an int device, which _CudaToCpu maps to CPU
    torch.cuda.synchronize = lambda *a, **k: None
    if _MODE is None:
        _MODE = _CudaToCpu()
        _MODE.__enter__()


@patch("cp-stream", "cuda", "setup_transformer_engine_cp_groups creates a torch.cuda.Stream even without context parallelism",
        no_cuda)
def _cp_stream():
    from nemo.collections.nlp.models.language_modeling.megatron_base_model import MegatronBaseModel

    MegatronBaseModel.setup_transformer_engine_cp_groups = lambda self: None


@patch("clip-grads", "apex", "NeMo's clip_grad_norm_fp32 asserts torch.cuda.FloatTensor and needs apex amp_C; "
        "use a torch norm with the same filters, reduced over the model-parallel group",
        lambda env: not (env.cuda and env.apex), dists=("nemo_toolkit", "nemo_aligner"))
def _clip_grads():
    import nemo.collections.nlp.modules.common.megatron.clip_grads as nemo_clip
    import nemo_aligner.utils.train_utils as aligner_train_utils

    from nemo_hs2.megatron.grad_norm import clip_grad_norm_fp32

    nemo_clip.clip_grad_norm_fp32 = clip_grad_norm_fp32
    aligner_train_utils.clip_grad_norm_fp32 = clip_grad_norm_fp32
