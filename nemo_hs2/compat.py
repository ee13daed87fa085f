"""Every patch nemo_hs2 applies to NeMo, megatron-core, NeMo-Aligner and torch lives here.

The pinned stack (NeMo 2.1, megatron-core 0.10, NeMo-Aligner 0.7.0) assumes an NGC container: CUDA, NVIDIA
apex and Transformer Engine.  Our CPU machines have none of them, so each patch below fixes one assumption and
is applied only when the thing it stands in for is missing.  On a GPU node with CUDA, apex and TE nothing from the
CUDA/apex/TE groups is touched.  The "torch" patches track the torch version rather than the hardware (checkpoint
writer signature, ``weights_only`` default, load-time size checks); they are keyed on the torch API they adapt.
The rest apply on any hardware: "nemo" fixes NeMo behaviour (an HF tokenizer inside a ``.nemo``), "process" ties
mcore's checkpoint helper processes to the trainer, and "env" covers the environment (NGC variables; jieba/opencc,
absent from the GPU device kit).

Each patch names the package versions it was written against: a different version fails loudly instead of
silently patching code that may have moved.  ``apply()`` is idempotent and must run before any NeMo model is built.

On a machine without CUDA, the device mapping (``cuda-device``) is a torch function mode, which torch keeps per
thread: run the model in the thread that called ``apply()`` (the reward server does).
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import importlib.metadata
import importlib.util
import inspect
import os
import sys
import types
from typing import Callable

import torch

# Versions each group of patches was read against (NOTES.md: 2.1.0 + 0.10.0 is the pin, 2.2.1 + 0.11.0 the fallback).
SUPPORTED = {
    "nemo_toolkit": ("2.1.0", "2.2.1"),
    "megatron_core": ("0.10.0", "0.11.0"),
    "nemo_aligner": ("0.7.0",),
}


class CompatError(RuntimeError):
    """The installed stack is not the one a patch was written for."""


def installed_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def require_version(dist: str, patch: str, supported: tuple[str, ...] | None = None) -> None:
    supported = supported or SUPPORTED[dist]
    found = installed_version(dist)
    if found not in supported:
        raise CompatError(
            f"nemo_hs2.compat: patch '{patch}' was written for {dist} {' or '.join(supported)}, but {found} is "
            f"installed. Install the pinned stack (requirements/cpu.lock, or the Dockerfile's image), or re-check "
            f"this patch against {dist} {found} and add the version to nemo_hs2.compat.SUPPORTED."
        )


@dataclasses.dataclass(frozen=True)
class Environment:
    cuda: bool
    apex: bool
    te: bool

    @classmethod
    def detect(cls) -> "Environment":
        # NVIDIA apex ships amp_C; PyPI's unrelated "apex" package does not, so it cannot fool this check.
        apex = importlib.util.find_spec("amp_C") is not None and importlib.util.find_spec("apex") is not None
        te = importlib.util.find_spec("transformer_engine") is not None
        return cls(cuda=torch.cuda.is_available(), apex=apex, te=te)


@dataclasses.dataclass(frozen=True)
class Patch:
    name: str
    kind: str  # what is missing: "cuda", "apex", "te"; or "env", "torch", "nemo", "process" (see the module docstring)
    why: str
    needed: Callable[[Environment], bool]
    dists: tuple[str, ...]
    apply: Callable[[], None]


_PATCHES: list[Patch] = []
_APPLIED: list[str] = []


def _patch(name: str, kind: str, why: str, needed: Callable[[Environment], bool], dists=("nemo_toolkit",)):
    def register(fn):
        _PATCHES.append(Patch(name, kind, why, needed, tuple(dists), fn))
        return fn

    return register


def _no_cuda(env):
    return not env.cuda


def _no_apex(env):
    return not env.apex


def _no_te(env):
    return not env.te


# ----------------------------------------------------------------------------------------------------------- env
_CHINESE_TEXT_LIBS = ("jieba", "opencc")


class _StandIn(types.ModuleType):
    def __getattr__(self, attr):
        if attr.startswith("__"):  # introspection (inspect, pickle, hasattr) must see a plain missing attribute
            raise AttributeError(attr)
        raise ModuleNotFoundError(
            f"{self.__name__} is not installed: nemo_hs2.compat stood in for it so that NeMo can start (only NeMo's "
            f"Chinese tokenizer uses it); install {self.__name__} to use that tokenizer")


def _chinese_text_libs_missing(env):
    return any(importlib.util.find_spec(m) is None for m in _CHINESE_TEXT_LIBS)


@_patch("chinese-text-libs", "env", "NeMo's tokenizer registry imports jieba/opencc eagerly; the GPU device kit has "
        "no room for them (21 MiB) and reward models never use them", _chinese_text_libs_missing)
def _chinese_text_libs():
    for name in _CHINESE_TEXT_LIBS:
        if importlib.util.find_spec(name) is None:
            stand_in = _StandIn(name)
            stand_in.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec() callers expect one
            sys.modules[name] = stand_in


# ---------------------------------------------------------------------------------------------------------- CUDA
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


@_patch("cuda-rng", "cuda", "megatron-core's RNG tracker saves/restores CUDA generator state; use the CPU generator",
        _no_cuda, dists=("megatron_core",))
def _cuda_rng():
    import megatron.core.tensor_parallel.random as mcore_random

    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    torch.cuda.random.get_rng_state = torch.cuda.get_rng_state
    torch.cuda.manual_seed = lambda seed: torch.manual_seed(seed)
    mcore_random._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)
    if hasattr(mcore_random, "_get_cuda_rng_state"):  # moved there in megatron-core 0.11
        mcore_random._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: torch.get_rng_state()


@_patch("cuda-device", "cuda", "mcore/NeMo/Aligner allocate on torch.cuda.current_device() and call .cuda(); keep them on CPU",
        _no_cuda, dists=("megatron_core", "nemo_toolkit", "nemo_aligner"))
def _cuda_device():
    global _MODE
    torch.cuda.current_device = lambda: 0  # an int device, which _CudaToCpu maps to CPU
    torch.cuda.synchronize = lambda *a, **k: None
    if _MODE is None:
        _MODE = _CudaToCpu()
        _MODE.__enter__()


@_patch("cp-stream", "cuda", "setup_transformer_engine_cp_groups creates a torch.cuda.Stream even without context parallelism",
        _no_cuda)
def _cp_stream():
    from nemo.collections.nlp.models.language_modeling.megatron_base_model import MegatronBaseModel

    MegatronBaseModel.setup_transformer_engine_cp_groups = lambda self: None


@_patch("clip-grads", "apex", "NeMo's clip_grad_norm_fp32 asserts torch.cuda.FloatTensor and needs apex amp_C; "
        "use a torch norm with the same filters, reduced over the model-parallel group",
        lambda env: not (env.cuda and env.apex), dists=("nemo_toolkit", "nemo_aligner"))
def _clip_grads():
    import nemo.collections.nlp.modules.common.megatron.clip_grads as nemo_clip
    import nemo_aligner.utils.train_utils as aligner_train_utils

    from nemo_hs2.models.grad_norm import clip_grad_norm_fp32

    nemo_clip.clip_grad_norm_fp32 = clip_grad_norm_fp32
    aligner_train_utils.clip_grad_norm_fp32 = clip_grad_norm_fp32


# ---------------------------------------------------------------------------------------------------------- apex
@_patch("ddp-strategy", "apex", "NLPDDPStrategy refuses to start without apex, which only its distributed_fused_adam needs",
        _no_apex)
def _ddp_strategy():
    import nemo.collections.nlp.parts.nlp_overrides as nlpo
    from nemo.core.optim.mcore_optim import McoreDistributedOptimizer

    nlpo.HAVE_APEX = True
    # Both names are imported inside nlp_overrides' apex try-block; without apex dist-ckpt save/load hits NameError.
    nlpo.McoreDistributedOptimizer = McoreDistributedOptimizer
    nlpo.MegatronDistributedFusedAdam = type("MegatronDistributedFusedAdamUnavailable", (), {})


@_patch("bert-models", "apex", "NLPModel.__init__ lists BERT checkpoints through an apex/TE-only import with a broken fallback",
        lambda env: not (env.apex and env.te))
def _bert_models():
    import nemo.collections.nlp.models.nlp_model as nlp_model

    nlp_model.get_megatron_pretrained_bert_models = lambda: []


@_patch("build-model-defaults", "apex", "build_model imports an apex helper that megatron-core also provides", _no_apex)
def _build_model_defaults():
    import nemo.collections.nlp.modules.common.megatron.build_model as build_model
    from megatron.core.tensor_parallel.layers import set_defaults_if_not_set_tensor_model_parallel_attributes

    build_model.set_defaults_if_not_set_tensor_model_parallel_attributes = (
        set_defaults_if_not_set_tensor_model_parallel_attributes
    )


@_patch("optimizer-param-groups", "apex", "optimizer param grouping uses apex's listify_model and fused LayerNorm classes",
        _no_apex)
def _optimizer_param_groups():
    import nemo.collections.nlp.modules.common.megatron.utils as megatron_utils

    megatron_utils.listify_model = lambda model: model if isinstance(model, list) else [model]
    megatron_utils.FusedLayerNorm = megatron_utils.FastLayerNorm = torch.nn.LayerNorm
    megatron_utils.MixedFusedRMSNorm = torch.nn.LayerNorm


@_patch("adam-step-sharding", "apex", "torch AdamW keeps a 0-dim per-parameter 'step' that mcore's optimizer sharding rejects; "
        "store it once per param group, as apex FusedAdam does", _no_apex)
def _adam_step_sharding():
    import nemo.collections.nlp.parts.nlp_overrides as nlpo

    to_sharding = nlpo.optim_state_to_sharding_state

    def optim_state_to_sharding_state(optim_state_dict, id_to_sharded_param_map, exclude_keys=()):
        steps = [float(s["step"]) for s in optim_state_dict["state"].values() if torch.is_tensor(s.get("step"))]
        to_sharding(optim_state_dict, id_to_sharded_param_map, exclude_keys=tuple(exclude_keys) + ("step",))
        if steps:
            for group in optim_state_dict["param_groups"]:
                group["step"] = max(steps)

    nlpo.optim_state_to_sharding_state = optim_state_to_sharding_state
    load_checkpoint = nlpo.NLPDDPStrategy.load_checkpoint

    def load_with_group_steps(self, *args, **kwargs):
        checkpoint = load_checkpoint(self, *args, **kwargs)
        for osd in checkpoint.get("optimizer_states") or []:
            if not (isinstance(osd, dict) and "state" in osd):
                continue
            for group in osd["param_groups"]:
                if "step" not in group:
                    continue
                for pid in group["params"]:
                    if pid in osd["state"] and "step" not in osd["state"][pid]:
                        osd["state"][pid]["step"] = torch.tensor(float(group["step"]))
        return checkpoint

    nlpo.NLPDDPStrategy.load_checkpoint = load_with_group_steps


# ------------------------------------------------------------------------------------------------- Transformer Engine
@_patch("local-spec", "te", "NeMo-Aligner's reward model builds every layer spec eagerly, TE ones included; "
        "without TE only the local (megatron-core) spec can be built", _no_te, dists=("nemo_aligner", "nemo_toolkit"))
def _local_spec():
    import nemo_aligner.models.nlp.gpt.megatron_gpt_reward_model as aligner_rm
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    def get_specs(spec_name="", transformer_config=None, *args, **kwargs):
        if spec_name not in ("", None):
            raise CompatError(f"layer spec '{spec_name}' needs Transformer Engine, which is not installed")
        return get_gpt_layer_local_spec()

    aligner_rm.get_specs = get_specs


class LayerNorm1P(torch.nn.LayerNorm):
    """Zero-centred-gamma LayerNorm (NeMo's ``layernorm1p``, Nemotron-4): ``LN(x) * (1 + w) + b``.

    What apex's FusedLayerNorm and TE's norm compute with ``layernorm_zero_centered_gamma``; the weight starts at 0
    (a unit scale), and weight decay pulls the scale towards 1 rather than 0. A ``torch.nn.LayerNorm`` subclass, so
    NeMo's optimizer grouping exempts it from weight decay like every other norm.
    """

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **unused):
        if config.normalization != "LayerNorm":
            raise CompatError(f"zero-centred gamma with normalization={config.normalization}: only LayerNorm has it")
        if config.sequence_parallel or config.persist_layer_norm or config.memory_efficient_layer_norm:
            raise CompatError("sequence_parallel / persist_layer_norm / memory_efficient_layer_norm need apex or "
                              "Transformer Engine; set them false on this machine")
        super().__init__(hidden_size, eps=eps)
        torch.nn.init.zeros_(self.weight)

    def forward(self, x):
        return torch.nn.functional.layer_norm(x, self.normalized_shape, self.weight + 1, self.bias, self.eps)


def layernorm1p_spec(spec, config):
    """``spec`` (a GPT layer spec) as a block spec whose torch norms are LayerNorm1P; apex/TE norms are kept."""
    import dataclasses

    import megatron.core.transformer.transformer_block as block
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    swap = {k: LayerNorm1P for k in ("input_layernorm", "pre_mlp_layernorm")
            if getattr(spec.submodules, k) is WrappedTorchNorm}
    layer = dataclasses.replace(spec, submodules=dataclasses.replace(spec.submodules, **swap))
    final = LayerNorm1P if block.LayerNormImpl is WrappedTorchNorm else block.LayerNormImpl
    return ModuleSpec(module=block.TransformerBlock, submodules=block.TransformerBlockSubmodules(
        layer_specs=[layer] * block.get_num_layers_to_build(config), layer_norm=final))


@_patch("layernorm1p", "apex", "without apex or TE megatron-core's torch norm refuses zero-centred gamma (layernorm1p, "
        "Nemotron-4); build those norms as LayerNorm1P", lambda env: not (env.apex or env.te),
        dists=("megatron_core", "nemo_aligner"))
def _layernorm1p():
    import nemo_aligner.models.nlp.gpt.megatron_gpt_reward_model as aligner_rm

    specs = aligner_rm.get_specs  # after local-spec, which is registered (so applied) first

    def get_specs(spec_name="", transformer_config=None, *args, **kwargs):
        spec = specs(spec_name, transformer_config, *args, **kwargs)
        if transformer_config is not None and transformer_config.layernorm_zero_centered_gamma:
            spec = layernorm1p_spec(spec, transformer_config)
        return spec

    aligner_rm.get_specs = get_specs


# ---------------------------------------------------------------------------------------------------------- NeMo
@_patch("hf-tokenizer-in-nemo", "nemo", "NeMo 2.1 saves a Hugging Face tokenizer as an absolute directory path, so a .nemo "
        "does not carry it; pack model.tokenizer.hf_files as artifacts (nemo_hs2.models.hf_tokenizer)",
        lambda env: True)
def _hf_tokenizer_in_nemo():
    from nemo.collections.nlp.models.language_modeling.megatron_base_model import MegatronBaseModel

    from nemo_hs2.models.hf_tokenizer import materialize

    build_tokenizer = MegatronBaseModel._build_tokenizer

    def _build_tokenizer(self):
        materialize(self)
        return build_tokenizer(self)

    MegatronBaseModel._build_tokenizer = _build_tokenizer


# ---------------------------------------------------------------------------------------- environment / torch API
@_patch("nvidia-pytorch-version", "env", "MegatronBaseModel parses NVIDIA_PYTORCH_VERSION, set only inside NGC containers",
        lambda env: "NVIDIA_PYTORCH_VERSION" not in os.environ)
def _nvidia_pytorch_version():
    os.environ["NVIDIA_PYTORCH_VERSION"] = "none"


def _torch_write_item_changed(env):
    import torch.distributed.checkpoint.filesystem as torch_fs

    return "transforms" in inspect.signature(torch_fs._write_item).parameters


@_patch("dist-ckpt-write-item", "torch", "mcore's async checkpoint writer calls torch's private _write_item with its pre-2.6 "
        "signature", _torch_write_item_changed, dists=("megatron_core",))
def _dist_ckpt_write_item():
    import megatron.core.dist_checkpointing.strategies.filesystem_async as mcore_fs
    import torch.distributed.checkpoint.filesystem as torch_fs

    def write_item(stream, data, write_item, storage_key):
        return torch_fs._write_item(torch_fs._StorageWriterTransforms(), stream, data, write_item, storage_key,
                                    torch_fs.SerializationFormat.TORCH_SAVE)

    mcore_fs._write_item = write_item


def _torch_checks_load_sizes(env):
    import torch.distributed.checkpoint.default_planner as dp

    return "Size mismatch between saved" in inspect.getsource(dp.create_default_local_load_plan)


@_patch("dist-ckpt-vocab-padding", "torch", "torch >= 2.6 refuses any saved/current size difference on load, which defeats "
        "mcore's allow_shape_mismatch (the padded vocabulary depends on TP and make_vocab_size_divisible_by); "
        "read the overlap for those tensors, as older torch did", _torch_checks_load_sizes, dists=("megatron_core",))
def _dist_ckpt_vocab_padding():
    import torch.distributed.checkpoint.default_planner as dp
    from megatron.core.dist_checkpointing.strategies.torch import MCoreLoadPlanner

    plan_from = dp.create_default_local_load_plan
    local_plan = MCoreLoadPlanner.create_local_plan

    def create_default_local_load_plan(state_dict, metadata, strict=True):
        md, loose = metadata.state_dict_metadata, getattr(_LOAD_SIZES, "loose", ())
        differ = {k for k in loose if k in state_dict and k in md and isinstance(md[k], dp.TensorStorageMetadata)
                  and getattr(state_dict[k], "size", None) is not None and md[k].size != state_dict[k].size()}
        plan = plan_from({k: v for k, v in state_dict.items() if k not in differ}, metadata, strict)
        extra = [item for k in sorted(differ) for item in dp._create_read_items(k, md[k], state_dict[k])]
        return dataclasses.replace(plan, items=[*plan.items, *extra]) if extra else plan

    def create_local_plan(self):
        validated = {t.key for t in self.shapes_validation_sharded_tensors}  # mcore checks these shapes itself
        _LOAD_SIZES.loose = {k for k in self.state_dict if k not in validated}
        try:
            return local_plan(self)
        finally:
            _LOAD_SIZES.loose = ()

    dp.create_default_local_load_plan = create_default_local_load_plan
    MCoreLoadPlanner.create_local_plan = create_local_plan


_LOAD_SIZES = __import__("threading").local()


def _torch_loads_weights_only(env):
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 6) and "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ


@_patch("torch-load-weights-only", "torch", "torch >= 2.6 loads with weights_only=True, which cannot read mcore's common.pt "
        "(a pickled DictConfig)", _torch_loads_weights_only, dists=("megatron_core",))
def _torch_load_weights_only():
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"


# ------------------------------------------------------------------------------------------- process lifetime
def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux ``PR_SET_PDEATHSIG``).

    Runs inside helper processes (it is pickled by name into spawned ones). The signal is tied to the thread that
    started the helper; mcore starts them from the training thread, which lives as long as the trainer.
    """
    import ctypes
    import signal

    if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:  # 1 = PR_SET_PDEATHSIG
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent died before prctl: no signal will come
        os._exit(1)


_PREEMPTION_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGTERM", "SIGINT")


def checkpoint_helper_init(parent_pid: int) -> None:
    """Start of an mcore checkpoint helper: die with the trainer, and leave pre-emption signals to it.

    SLURM delivers ``--signal`` / ``scancel --signal`` to every process of the job step; a helper killed by it
    mid-save fails the trainer's save (EOFError on the results queue) instead of letting it checkpoint and exit 75.
    """
    import signal

    die_with_parent(parent_pid)
    for name in _PREEMPTION_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_IGN)


@_patch("dist-ckpt-helpers-die-with-parent", "process", "mcore's checkpoint writer starts a spawn Manager server (and "
        "forked writers) that outlive a SIGKILLed trainer and die of SLURM's step signals; tie them to the trainer",
        lambda env: sys.platform.startswith("linux"), dists=("megatron_core",))
def _dist_ckpt_helpers_die_with_parent():
    import multiprocessing
    from multiprocessing.managers import SyncManager

    import megatron.core.dist_checkpointing.strategies.filesystem_async as mcore_fs

    Writer = mcore_fs.FileSystemWriterAsync
    if not all(hasattr(o, n) for o, n in ((mcore_fs, "_get_write_results_queue"), (mcore_fs, "_results_queue"),
                                          (Writer, "write_preloaded_data"), (Writer, "write_preloaded_data_multiproc"))):
        raise CompatError("patch 'dist-ckpt-helpers-die-with-parent': megatron-core's filesystem_async has moved")

    def get_write_results_queue():
        if mcore_fs._results_queue is None:  # as upstream (a spawn-context Manager queue), plus the parent link
            manager = SyncManager(ctx=torch.multiprocessing.get_context("spawn"))
            manager.start(initializer=checkpoint_helper_init, initargs=(os.getpid(),))
            mcore_fs._results_queue = manager.Queue()
        return mcore_fs._results_queue

    # The save runs in a process forked from the trainer (mcore's DistributedAsyncCaller) or inline in the trainer;
    # it forks one writer per file. Forked processes are linked to their parent; the trainer itself is left alone.
    write_all, write = Writer.write_preloaded_data_multiproc, Writer.write_preloaded_data

    def write_preloaded_data_multiproc(*args, **kwargs):
        if multiprocessing.parent_process() is not None:
            checkpoint_helper_init(multiprocessing.parent_process().pid)
        return write_all(*args, **kwargs)

    def write_preloaded_data(*args, **kwargs):
        checkpoint_helper_init(multiprocessing.parent_process().pid)
        return write(*args, **kwargs)

    mcore_fs._get_write_results_queue = get_write_results_queue
    Writer.write_preloaded_data_multiproc = staticmethod(write_preloaded_data_multiproc)
    Writer.write_preloaded_data = staticmethod(write_preloaded_data)


# --------------------------------------------------------------------------------------------------------- driver
def check_megatron_core() -> None:
    """NeMo sets HAVE_MEGATRON_CORE=False silently when tensorstore/zarr are wrong, and only fails much later."""
    import nemo.collections.nlp.models.language_modeling.megatron_gpt_model as gpt_model

    if not getattr(gpt_model, "HAVE_MEGATRON_CORE", False):
        raise CompatError(
            "NeMo did not find megatron-core (HAVE_MEGATRON_CORE=False). This usually means tensorstore or zarr "
            "is at the wrong version: install requirements/cpu.lock (tensorstore==0.1.45, zarr<3)."
        )


def planned(env: Environment | None = None) -> list[Patch]:
    env = env or Environment.detect()
    return [p for p in _PATCHES if p.needed(env)]


def apply(env: Environment | None = None) -> list[str]:
    """Apply the patches this machine needs; returns their names. Raises CompatError on an unknown stack."""
    env = env or Environment.detect()
    todo = [p for p in planned(env) if p.name not in _APPLIED]
    for p in todo:  # check every version first so a refusal leaves nothing half-patched
        for dist in p.dists:
            require_version(dist, p.name)
    for p in todo:
        p.apply()
        _APPLIED.append(p.name)
    check_megatron_core()
    return list(_APPLIED)


def seed_model_parallel_rng(seed: int) -> None:
    """NeMo only seeds megatron-core's model-parallel RNG tracker when a GPU is visible; dropout under TP needs it."""
    if torch.cuda.device_count() == 0:
        from megatron.core import tensor_parallel

        tensor_parallel.model_parallel_cuda_manual_seed(seed)


def applied() -> list[str]:
    return list(_APPLIED)
