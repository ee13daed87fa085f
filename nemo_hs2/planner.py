"""Fail-fast planner: layout, divisibility, parameter count, per-GPU memory and step time of a training config.

Pure Python on the composed Hydra config (omegaconf only: no torch, NeMo or Megatron import), so it runs on a
login node in well under a second. ``examples/plan.py`` prints it; ``nemo_hs2.config_checks.parallel_layout``
runs the same rules at the start of training, before any process group exists.

Memory model (per GPU, for the first and the last pipeline stage; the larger one decides the fit):

* weights / gradients / optimizer: Megatron-LM's mixed-precision accounting (its distributed-optimizer guide,
  docs/source/api-guide/dist_optimizer.md): 16-bit weights 2 B + fp32 gradients 4 B + fp32 main weights and Adam
  m, v 12 B per parameter; the last 12 B are sharded over the data-parallel ranks by a distributed optimizer.
  Without ``megatron_amp_O2`` the weights are fp32 (4 B) and there is no separate main copy (8 B Adam state).
  apex's ``distributed_fused_adam`` can keep only a 16-bit remainder of the main weights: the estimate is an
  upper bound there.
* the reward model still allocates the LM output layer (NeMo-Aligner's ``GPTRewardModel`` builds it, never calls
  it, and its parameters sit in the optimizer): it is counted on the last stage, labelled.
* activations: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models"
  (arXiv 2205.05198), section 4 and table 2, generalised from their 4h MLP / multi-head attention to this
  model's FFN width, gated MLPs and grouped-query attention. Per layer and micro-batch (s tokens, b sequences,
  hidden h, a heads of size d, g KV groups, FFN f, k = 2 for gated MLPs, t = TP), in bytes of 16-bit tensors:
  replicated over TP (sharded too with sequence parallelism) 10sbh (layer-norm inputs, QKV and FC1 inputs,
  dropout masks); sharded over TP (4sbad + 4sbgd + 2sbfk + 2sbf) (Q, K, V, attention context, FC1 output and
  activation output); attention scores 5as²b / t (softmax output, its dropout mask and output), which selective
  recomputation (and TE's fused / flash attention) does not keep. Full recomputation keeps each checkpointed
  layer input (2sbh) and re-materialises one recompute unit during the backward pass. With 1F1B pipelining the
  first stage holds min(PP, micro-batches) micro-batches in flight, times (1 + (PP-1)/(PP x VP)) when
  interleaved (same paper, section 4.2.3); the last stage holds one. Embedding and head activations are ignored
  (below one layer's worth).
* a stated overhead: ``plan.overhead_gb`` (CUDA context, NCCL buffers, cuBLAS / TE workspaces) plus
  ``plan.fragmentation`` of everything above (caching-allocator slack).

Compute: model FLOPs per sequence = 3 x forward (forward + backward), forward = 2 x tokens x (matmul weights of
the transformer layers) + 4 x s² x a x d per layer (QKᵀ and attention x V) + the head; the unused LM output layer
is not run. Estimated step time = model FLOPs / (GPUs x ``plan.peak_tflops`` x ``plan.mfu``), at ``data.seq_length``
(an upper bound: batches are cut to their longest row) and, given ``plan.data_report`` (the ``data_report.json``
of ``examples/prepare_data.py``), at the expected width of a micro-batch of the configured data.

The parts are plain functions: ``check_rules`` (layout and rules), ``parameter_counts`` (whatever the layout),
``memory_estimate``, ``compute_estimate``; ``make_plan`` runs them in order.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

GIB = 1024**3

# Planner options: `plan.*` keys (from a `plan:` node in the composed config, or `plan.KEY=VALUE` overrides that
# examples/plan.py takes itself; training takes `++plan.KEY=VALUE`).
PLAN_DEFAULTS: dict[str, Any] = {
    "format": "table",        # table | json
    "gpu_memory_gb": 80.0,    # GiB per GPU (H100 / A100 80GB); 141 for H200
    "peak_tflops": 989.0,     # dense BF16 TFLOP/s per GPU (H100 SXM)
    "mfu": 0.30,              # assumed model-FLOPs utilisation for the time estimate
    "overhead_gb": 5.0,       # fixed per-GPU overhead, GiB
    "fragmentation": 0.10,    # allocator slack, fraction of weights + grads + optimizer + activations
    "train_rows": None,       # training samples per epoch; null: 20,324 for HelpSteer2 regression data
    "strict": False,          # also fail on run-readiness rules (checkpoint / tokenizer still ???)
    "json_out": None,         # also write the JSON plan to this path
    "data_report": None,      # examples/prepare_data.py's data_report.json: time per step at the data's widths
}
HELPSTEER2_TRAIN_ROWS = 20324
BYTE_LEVEL_VOCAB = 259        # NeMo's ByteLevelTokenizer: 256 bytes + 3 special tokens
DISTRIBUTED_OPTIMIZERS = ("distributed_fused_adam", "mcore_distributed_optim")


def _ensure_resolvers() -> None:
    """The resolvers examples/train_reward_model.py registers (the configs use them)."""
    if not OmegaConf.has_resolver("multiply"):
        OmegaConf.register_new_resolver("multiply", lambda x, y: x * y)
    if not OmegaConf.has_resolver("int_div"):
        OmegaConf.register_new_resolver("int_div", lambda x, y: x // y)


class _Missing:
    def __repr__(self):
        return "???"


MISSING = _Missing()


def _get(node, key: str, default=None):
    """node[key] resolved; ``default`` when absent or null; MISSING when '???'."""
    if node is None:
        return default
    if OmegaConf.is_config(node):
        if key in node.keys() and OmegaConf.is_missing(node, key):  # `key in node` is False for ???
            return MISSING
        if key not in node:
            return default
        value = node[key]
    else:
        value = node.get(key, default)
    return default if value is None else value


def plan_options(cfg=None, overrides: dict | None = None) -> dict[str, Any]:
    opts = dict(PLAN_DEFAULTS)
    node = _get(cfg, "plan") if cfg is not None else None
    if node is not None and node is not MISSING:
        opts.update(OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node))
    opts.update(overrides or {})
    unknown = sorted(set(opts) - set(PLAN_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown planner option(s) {['plan.' + k for k in unknown]}; known: "
                         f"{['plan.' + k for k in PLAN_DEFAULTS]}")
    for key in ("gpu_memory_gb", "peak_tflops", "mfu", "overhead_gb", "fragmentation"):
        opts[key] = float(opts[key])
    if opts["format"] not in ("table", "json"):
        raise ValueError(f"plan.format must be table or json, got {opts['format']!r}")
    return opts


@dataclass
class Plan:
    layout: dict[str, Any] = field(default_factory=dict)
    vocab: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    compute: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)      # rules a config breaks (training refuses it)
    warnings: list[str] = field(default_factory=list)    # worth knowing, not fatal
    notes: list[str] = field(default_factory=list)       # run-readiness rules, errors only when strict
    options: dict[str, Any] = field(default_factory=dict)
    choices: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# ------------------------------------------------------------------------------------------------ model maths


@dataclass
class Arch:
    layers: int
    hidden: int
    ffn: int
    heads: int
    groups: int
    head_dim: int
    vocab: int | None
    padded_vocab: int | None
    gated: bool
    norm: int          # parameters of one norm (2h LayerNorm / LayerNorm1p, h RMSNorm)
    bias: bool
    learned_pos: int   # learned absolute position-embedding parameters (0 for RoPE)
    attributes: int

    def layer_params(self, tp: int = 1) -> float:
        """Parameters of one transformer layer on one TP rank (tp=1: the whole layer)."""
        h, a, g, d, f = self.hidden, self.heads, self.groups, self.head_dim, self.ffn
        k = 2 if self.gated else 1
        qkv = h * (a + 2 * g) * d + ((a + 2 * g) * d if self.bias else 0)
        proj = a * d * h
        fc1 = h * f * k + (f * k if self.bias else 0)
        fc2 = f * h
        replicated = 2 * self.norm + ((2 * h) if self.bias else 0)  # norms, proj and fc2 biases
        return (qkv + proj + fc1 + fc2) / tp + replicated

    def matmul_weights_per_layer(self) -> int:
        h, a, g, d, f = self.hidden, self.heads, self.groups, self.head_dim, self.ffn
        return h * (a + 2 * g) * d + a * d * h + h * f * (2 if self.gated else 1) + f * h

    def head_params(self, tp: int = 1) -> float:
        return self.hidden * self.attributes / tp + self.attributes  # RowParallelLinear: weight split, bias not

    def counts(self) -> dict[str, float]:
        """Parameter counts; 'lm_with_output_layer' uses the tokenizer's vocabulary (published sizes do)."""
        v, pv, h = self.vocab or 0, self.padded_vocab or 0, self.hidden
        layers = self.layers * self.layer_params()
        backbone = v * h + self.learned_pos + layers + self.norm
        return {
            "per_layer": self.layer_params(),
            "transformer_layers": layers,
            "embedding": v * h,
            "lm_output_layer": v * h,
            "reward_head": self.head_params(),
            "lm_with_output_layer": backbone + v * h,
            "reward_model": backbone + self.head_params(),
            "allocated_padded": pv * h + self.learned_pos + layers + self.norm + pv * h + self.head_params(),
        }


def _arch(m, n_attr: int, vocab: int | None, padded: int | None) -> Arch:
    hidden, heads = int(m.hidden_size), int(m.num_attention_heads)
    groups = int(_get(m, "num_query_groups", heads))
    head_dim = int(_get(m, "kv_channels", hidden // heads if heads else 0))
    norm = str(_get(m, "normalization", "layernorm")).lower()
    learned = str(_get(m, "position_embedding_type", "learned_absolute")) == "learned_absolute"
    max_pos = int(_get(m, "max_position_embeddings", _get(m, "encoder_seq_length", 0)))
    return Arch(
        layers=int(m.num_layers), hidden=hidden, ffn=int(_get(m, "ffn_hidden_size", 4 * hidden)), heads=heads,
        groups=groups, head_dim=head_dim, vocab=vocab, padded_vocab=padded,
        gated=str(_get(m, "activation", "gelu")).endswith("glu"),
        norm=hidden if norm == "rmsnorm" else 2 * hidden, bias=bool(_get(m, "bias", True)),
        learned_pos=max_pos * hidden if learned else 0, attributes=n_attr,
    )


def activation_bytes_per_layer(arch: Arch, *, seq: int, seqs: int, tp: int, sp: bool, keep_scores: bool,
                               dtype_bytes: int = 2) -> float:
    """Korthikanti et al. 2022 (table 2), generalised: one layer, one micro-batch, no recomputation."""
    s, b, h, a, g, d, f = seq, seqs, arch.hidden, arch.heads, arch.groups, arch.head_dim, arch.ffn
    k = 2 if arch.gated else 1
    replicated = 10 * s * b * h / (tp if sp else 1)
    sharded = (4 * s * b * a * d + 4 * s * b * g * d + 2 * s * b * f * k + 2 * s * b * f) / tp
    scores = 5 * a * s * s * b / tp if keep_scores else 0.0
    return (replicated + sharded + scores) * dtype_bytes / 2


def layer_input_bytes(arch: Arch, *, seq: int, seqs: int, tp: int, sp: bool, dtype_bytes: int = 2) -> float:
    return seq * seqs * arch.hidden / (tp if sp else 1) * dtype_bytes


def vocab_padding(vocab: int, divisible_by: int, tp: int) -> int:
    """NeMo's MegatronBaseModel._vocab_size_with_padding."""
    multiple = divisible_by * tp
    return ((vocab + multiple - 1) // multiple) * multiple


# ------------------------------------------------------------------------------------------------ the plan


def _is_preference(cfg) -> bool:
    return _get(cfg.data, "source") == "preference"


def _tokenizer_vocab(m) -> int | None:
    tok = _get(m, "tokenizer")
    if tok is None or tok is MISSING:
        return None
    size = _get(tok, "vocab_size")
    if size is not None and size is not MISSING:
        return int(size)
    if _get(tok, "library") == "byte-level":
        return BYTE_LEVEL_VOCAB
    return None


@dataclass
class Checks:
    """What ``check_rules`` read from a config: its layout, vocabulary, and the rules it breaks."""
    layout: dict[str, Any]
    vocab: dict[str, Any]
    errors: list[str]
    warnings: list[str]
    notes: list[str]   # run readiness: errors instead when strict


def check_rules(cfg: DictConfig, *, strict: bool = False) -> Checks:
    """The layout of ``cfg`` and every rule it breaks (divisibility, kernels, optimizer, recomputation, vocabulary,
    run readiness). Never raises for a bad config."""
    m, t = cfg.model, cfg.trainer
    accelerator = str(_get(t, "accelerator", "cpu"))
    on_gpu = accelerator in ("gpu", "cuda")
    errors: list[str] = []
    warnings: list[str] = []
    notes: list[str] = []
    vocab_info: dict[str, Any] = {}
    err = errors.append

    # ---- layout ---------------------------------------------------------------------------------------------
    nodes, gpus = int(_get(t, "num_nodes", 1)), int(_get(t, "devices", 1))
    world = nodes * gpus
    tp, pp = int(m.tensor_model_parallel_size), int(m.pipeline_model_parallel_size)
    cp = int(_get(m, "context_parallel_size", 1))
    vp = _get(m, "virtual_pipeline_model_parallel_size")
    vp = int(vp) if vp is not None else None
    mbs, gbs = int(m.micro_batch_size), int(m.global_batch_size)
    layers, heads, hidden = int(m.num_layers), int(m.num_attention_heads), int(m.hidden_size)
    groups = _get(m, "num_query_groups")
    ffn = int(_get(m, "ffn_hidden_size", 4 * hidden))
    sp = bool(_get(m, "sequence_parallel", False))

    sizes_ok = tp >= 1 and pp >= 1 and cp >= 1
    if not sizes_ok:
        err(f"tensor_model_parallel_size ({tp}), pipeline_model_parallel_size ({pp}) and context_parallel_size "
            f"({cp}) must be >= 1")
    elif world % (tp * pp * cp):
        what = "TP x PP" + (" x CP" if cp > 1 else "")
        sizes = f"{tp} x {pp}" + (f" x {cp}" if cp > 1 else "")
        err(f"world size trainer.devices x trainer.num_nodes = {world} is not divisible by {what} = {sizes}")
    dp = world // (tp * pp * cp) if sizes_ok and world % (tp * pp * cp) == 0 else 0
    if mbs < 1 or gbs < 1:
        err(f"model.micro_batch_size ({mbs}) and model.global_batch_size ({gbs}) must be >= 1")
    elif dp and gbs % (mbs * dp):
        err(f"model.global_batch_size ({gbs}) must be divisible by micro_batch_size x DP = {mbs} x {dp}")
    n_mb = gbs // (mbs * dp) if dp and mbs >= 1 and gbs % (mbs * dp) == 0 else 0
    if pp >= 1 and layers % pp:
        err(f"model.num_layers ({layers}) must be divisible by pipeline_model_parallel_size ({pp})")
    if vp is not None:
        if vp < 2 or pp < 2:
            err(f"model.virtual_pipeline_model_parallel_size ({vp}) needs pipeline_model_parallel_size > 1 "
                "and at least 2 model chunks per stage (or null)")
        elif layers % (pp * vp):
            err(f"model.num_layers ({layers}) must be divisible by PP x virtual PP = {pp} x {vp}")
        elif n_mb and n_mb % pp:
            err(f"the interleaved (virtual PP) schedule needs the number of micro-batches ({n_mb}) to be a multiple "
                f"of pipeline_model_parallel_size ({pp}) in megatron-core 0.10")
    if tp >= 1 and heads % tp:
        err(f"model.num_attention_heads ({heads}) must be divisible by tensor_model_parallel_size ({tp})")
    if groups:
        if tp >= 1 and int(groups) % tp:
            err(f"model.num_query_groups ({groups}) must be divisible by tensor_model_parallel_size ({tp})")
        if heads % int(groups):
            err(f"model.num_attention_heads ({heads}) must be divisible by num_query_groups ({groups})")
    if _get(m, "kv_channels") is None and hidden % heads:
        err(f"model.hidden_size ({hidden}) must be divisible by num_attention_heads ({heads})")
    if tp >= 1 and ffn % tp:
        err(f"model.ffn_hidden_size ({ffn}) must be divisible by tensor_model_parallel_size ({tp})")
    if cp > 1:
        err(f"model.context_parallel_size ({cp}) > 1: the reward model never splits a sequence across "
            "context-parallel ranks (NeMo-Aligner 0.7.0's reward model has no CP batch slicing)")
    if tp > 1 and sp:
        if not on_gpu:
            err("model.sequence_parallel needs apex or Transformer Engine LayerNorm: not available on CPU")
        else:
            err("model.sequence_parallel=true: the reward head reads each response's last token from the "
                "decoder output, which sequence parallelism leaves split across TP ranks (NeMo-Aligner 0.7.0 "
                "does not gather it; its published recipes set sequence_parallel=False)")

    # ---- sequence, data, loss ---------------------------------------------------------------------------------
    seq = int(_get(cfg.data, "seq_length", _get(m, "encoder_seq_length", 0)))
    enc = int(_get(m, "encoder_seq_length", seq))
    if seq > enc:
        err(f"data.seq_length ({seq}) exceeds model.encoder_seq_length ({enc})")
    loss = _get(m.regression, "loss_func", "regression") if "regression" in m else "regression"
    preference = _is_preference(cfg)
    if loss != "regression" and not preference:
        err(f"model.regression.loss_func={loss} needs preference pairs (data=helpsteer2_preference)")
    seqs_per_sample = 2 if preference else 1
    rm = _get(t, "rm")
    save_every, val_every = (_get(rm, "save_interval"), _get(rm, "val_check_interval")) if rm is not None else (0, 0)
    if isinstance(save_every, int) and isinstance(val_every, int) and val_every > 0 and save_every % val_every:
        # NeMo-Aligner asserts this only once training starts (after the model load, on every rank).
        err(f"trainer.rm.save_interval ({save_every}) must be a multiple of trainer.rm.val_check_interval "
            f"({val_every}): checkpoints are saved with a validation")

    # ---- fused kernels, optimizer, recomputation ---------------------------------------------------------------
    activation = str(_get(m, "activation", "gelu"))
    if _get(m, "bias_activation_fusion", False):
        gelu_family = activation in ("gelu", "geglu", "fast-geglu")
        swiglu = activation in ("swiglu", "fast-swiglu")
        if not (gelu_family or swiglu):
            err(f"model.bias_activation_fusion=true with activation={activation}: megatron-core fuses only gelu "
                "and swiglu ('Only support fusion of gelu and swiglu'); set it false")
        elif activation == "gelu" and not _get(m, "bias", True):
            err("model.bias_activation_fusion=true with gelu needs model.bias=true (megatron-core asserts it)")
    optim = _get(m, "optim")
    optim_name = str(_get(optim, "name", "adamw")) if optim is not None else "adamw"
    distributed_opt = optim_name in DISTRIBUTED_OPTIMIZERS
    if optim_name == "distributed_fused_adam" and not on_gpu:
        err("model.optim.name=distributed_fused_adam needs NVIDIA apex (the GPU image): use adamw on CPU")
    sched = _get(optim, "sched") if optim is not None else None
    sched_steps = _get(sched, "max_steps") if sched is not None else None
    if sched_steps is not None and sched_steps is not MISSING and int(sched_steps) <= 0:
        err(f"model.optim.sched.max_steps = {sched_steps}: the LR schedule needs a length (with -1 NeMo silently "
            "builds no scheduler: no warm-up); set trainer.rm.max_steps (the recipes do) or model.optim.sched.max_steps")
    granularity = _get(m, "activations_checkpoint_granularity")
    method = _get(m, "activations_checkpoint_method")
    ckpt_layers = _get(m, "activations_checkpoint_num_layers")
    recompute = "none" if granularity is None else str(granularity)
    if recompute not in ("none", "selective", "full"):
        err(f"model.activations_checkpoint_granularity={granularity}: must be selective, full or null")
    elif recompute == "full":
        if method not in ("uniform", "block") or ckpt_layers is None or int(ckpt_layers) < 1:
            err("model.activations_checkpoint_granularity=full needs activations_checkpoint_method uniform|block "
                f"and activations_checkpoint_num_layers >= 1 (got {method}, {ckpt_layers})")
    elif recompute == "selective" and ckpt_layers is not None:
        err("model.activations_checkpoint_granularity=selective takes no activations_checkpoint_num_layers "
            "(megatron-core refuses it): set it null")
    elif recompute == "none" and method is not None:
        warnings.append(f"model.activations_checkpoint_method={method} does nothing without "
                          "activations_checkpoint_granularity=full")

    # ---- vocabulary -------------------------------------------------------------------------------------------
    divisible_by = int(_get(m, "make_vocab_size_divisible_by", 128))
    vocab = _tokenizer_vocab(m)
    padded = None
    if divisible_by < 1:
        err(f"model.make_vocab_size_divisible_by ({divisible_by}) must be >= 1 (NeMo pads the vocabulary to a "
            "multiple of it x TP)")
    elif vocab is None:
        warnings.append("vocabulary size unknown (set model.tokenizer.vocab_size): embedding and LM output "
                        "layer are left out of the counts")
    elif tp >= 1:
        padded = vocab_padding(vocab, divisible_by, tp)
        vocab_info = {"size": vocab, "make_vocab_size_divisible_by": divisible_by, "multiple": divisible_by * tp,
                      "padded": padded, "dummy_rows": padded - vocab}

    # ---- run readiness ------------------------------------------------------------------------------------------
    init = _get(cfg, "init")
    restore = _get(init, "restore_from_path") if init is not None else None
    readiness = errors if strict else notes
    if restore is None or restore is MISSING:
        if init is not None and _get(init, "require_checkpoint", False):
            readiness.append("init.restore_from_path is not set: this recipe fine-tunes a base checkpoint (.nemo) "
                             "(init.require_checkpoint=true)")
        missing = sorted(OmegaConf.missing_keys(m))
        if missing:
            readiness.append(f"{', '.join(missing)} ??? (taken from the checkpoint): set init.restore_from_path "
                             "or the key")
        tok = _get(m, "tokenizer")
        library = str(_get(tok, "library", "")) if tok is not None and tok is not MISSING else ""
        if library and library != "byte-level" and not any(
                _get(tok, k) not in (None, MISSING) for k in ("model", "type", "vocab_file")):
            readiness.append(f"model.tokenizer ({library}) names no model / type / vocab_file: it comes from the "
                             "checkpoint, so set init.restore_from_path (or +model.tokenizer.model / type)")

    n_attr = len(list(_get(m.regression, "attributes", []) or [])) if "regression" in m else 1
    layout = {
        "nodes": nodes, "gpus_per_node": gpus, "world": world, "tp": tp, "pp": pp, "vp": vp, "cp": cp, "dp": dp,
        "micro_batch_size": mbs, "global_batch_size": gbs, "num_microbatches": n_mb,
        "samples_are": "pairs" if preference else "rows", "sequences_per_micro_batch": mbs * seqs_per_sample,
        "seq_length": seq, "sequence_parallel": sp, "recompute": recompute,
        "recompute_method": method, "recompute_num_layers": ckpt_layers,
        "optimizer": optim_name, "distributed_optimizer": distributed_opt, "accelerator": accelerator,
        "precision": str(_get(t, "precision", "32")), "megatron_amp_O2": bool(_get(m, "megatron_amp_O2", False)),
        "attributes": n_attr, "num_layers": layers, "transformer_engine": bool(_get(m, "transformer_engine", False)),
    }
    return Checks(layout, vocab_info, errors, warnings, notes)


def model_arch(m, layout: dict[str, Any], vocab: dict[str, Any]) -> Arch | None:
    """The architecture to count; None when the head size is undefined (hidden not divisible by the heads and no
    kv_channels). Independent of the layout's errors: a model's size does not depend on how it is split."""
    hidden, heads = int(m.hidden_size), int(m.num_attention_heads)
    if _get(m, "kv_channels") is None and (heads < 1 or hidden % heads):
        return None
    return _arch(m, layout["attributes"], _tokenizer_vocab(m), vocab.get("padded"))


def parameter_counts(arch: Arch) -> dict[str, int]:
    return {k: round(v) for k, v in arch.counts().items()}


def _stages_known(layout: dict[str, Any]) -> bool:
    tp, pp = layout["tp"], layout["pp"]
    return bool(layout["dp"]) and tp >= 1 and pp >= 1 and layout["num_layers"] % pp == 0 and \
        layout["recompute"] in ("none", "selective", "full")


def memory_estimate(arch: Arch, layout: dict[str, Any], opts: dict[str, Any]) -> dict[str, Any] | None:
    """Per-GPU memory (GiB) of the first and the last pipeline stage; None when the layout has no valid stages."""
    if not _stages_known(layout):
        return None
    L = layout
    tp, pp, vp, cp, dp, n_mb = L["tp"], L["pp"], L["vp"], L["cp"], L["dp"], L["num_microbatches"]
    recompute, method, ckpt_layers = L["recompute"], L["recompute_method"], L["recompute_num_layers"]
    distributed_opt, padded = L["distributed_optimizer"], arch.padded_vocab
    half = L["precision"] in ("bf16", "bf16-mixed", "16", "16-mixed")
    w_bytes = 2 if (half and L["megatron_amp_O2"]) else 4
    opt_bytes = 8 + (4 if w_bytes == 2 else 0)
    act_dtype = 2 if half else 4
    flash = L["transformer_engine"] and L["accelerator"] in ("gpu", "cuda")
    shard = max(dp * cp, 1)
    per_stage = L["num_layers"] // pp
    seq = L["seq_length"]
    s_local = seq // cp if cp else seq
    kw = dict(seq=s_local, seqs=L["sequences_per_micro_batch"], tp=tp, sp=L["sequence_parallel"] and tp > 1,
              dtype_bytes=act_dtype)
    layer_none = activation_bytes_per_layer(arch, keep_scores=not flash, **kw)
    layer_sel = activation_bytes_per_layer(arch, keep_scores=False, **kw)
    layer_in = layer_input_bytes(arch, **kw)
    n_inflight_first = min(pp, n_mb) if n_mb else pp
    interleave = (1 + (pp - 1) / (pp * vp)) if vp else 1.0

    def acts(inflight: float) -> dict[str, float]:
        out = {"none": per_stage * inflight * layer_none, "selective": per_stage * inflight * layer_sel}
        n = int(ckpt_layers) if (recompute == "full" and ckpt_layers) else 1
        if method == "block" and recompute == "full":
            stored = n * layer_in + max(per_stage - n, 0) * layer_none
            out["full"] = inflight * stored + layer_none
        else:
            out["full"] = inflight * math.ceil(per_stage / n) * layer_in + n * layer_none
        return out

    def stage(first: bool, last: bool, inflight: float) -> dict[str, Any]:
        n_params = per_stage * arch.layer_params(tp)
        if first:
            n_params += (padded or 0) * arch.hidden / tp + arch.learned_pos
        output_layer = (padded or 0) * arch.hidden / tp if last else 0.0
        if last:
            n_params += arch.norm + output_layer + arch.head_params(tp)
        a = acts(inflight)
        row = {
            "params": n_params, "lm_output_layer_params": output_layer,
            "weights": n_params * w_bytes, "gradients": n_params * 4,
            "optimizer_plain": n_params * opt_bytes, "optimizer_distributed": n_params * opt_bytes / shard,
            "activations_none": a["none"], "activations_selective": a["selective"], "activations_full": a["full"],
        }
        row["optimizer"] = row["optimizer_distributed"] if distributed_opt else row["optimizer_plain"]
        row["activations"] = a[recompute]
        tensors = row["weights"] + row["gradients"] + row["optimizer"] + row["activations"]
        row["overhead"] = opts["overhead_gb"] * GIB + opts["fragmentation"] * tensors
        row["total"] = tensors + row["overhead"]
        return {k: (v / GIB if k not in ("params", "lm_output_layer_params") else round(v)) for k, v in row.items()}

    first = stage(True, pp == 1, n_inflight_first * interleave)
    last = stage(pp == 1, True, 1.0) if pp > 1 else first
    worst = max((first, last), key=lambda r: r["total"])
    return {
        "unit": "GiB", "gpu_memory_gb": opts["gpu_memory_gb"], "first_stage": first, "last_stage": last,
        "worst_stage": "first" if worst is first else "last", "peak": worst["total"],
        "fits": worst["total"] <= opts["gpu_memory_gb"],
        "bytes_per_param": {"weights": w_bytes, "gradients": 4, "optimizer": opt_bytes,
                            "optimizer_sharded_over": shard if distributed_opt else 1},
        "attention_scores_kept": not flash,
    }


def does_not_fit(memory: dict[str, Any], layout: dict[str, Any]) -> str:
    """The error for a plan whose worst stage exceeds the GPU, with what would help."""
    worst = memory[f"{memory['worst_stage']}_stage"]
    recompute, distributed_opt = layout["recompute"], layout["distributed_optimizer"]
    return (f"does not fit: {worst['total']:.1f} GiB per GPU on the {memory['worst_stage']} pipeline stage > "
            f"plan.gpu_memory_gb={memory['gpu_memory_gb']:g} (weights {worst['weights']:.1f} + gradients "
            f"{worst['gradients']:.1f} + optimizer {worst['optimizer']:.1f} + activations (recomputation: {recompute}"
            f") {worst['activations']:.1f} + overhead {worst['overhead']:.1f}); try "
            + ", ".join(([] if distributed_opt else ["a distributed optimizer (distributed_fused_adam)"])
                        + ([] if recompute == "full" else ["full recomputation"])
                        + ["more pipeline stages (PP)", "more data-parallel ranks to shard the optimizer"
                           if distributed_opt else "more TP", "a smaller micro-batch"]))


def padded_width_distribution(histogram: dict[str, Any], sequences: int, seq_length: int,
                              length_grouped: bool = False) -> dict[int, float]:
    """Probability of each micro-batch width, from a data report's ``length_histogram`` (rows per padded length).

    A micro-batch of ``sequences`` rows in random order is as wide as its longest row: P(W <= w) = F(w)^sequences,
    F the rows' length distribution (rows drawn independently; a preference pair's two responses count as two).
    Length-grouped batches hold rows of similar length: taken as one row's width (a lower bound)."""
    counts = {min(int(k), seq_length): int(v) for k, v in histogram["counts"].items() if int(v) > 0}
    total = sum(counts.values())
    if not total:
        return {}
    k = 1 if length_grouped else max(int(sequences), 1)
    out, below, prev = {}, 0, 0.0
    for width in sorted(counts):
        below += counts[width]
        cdf = (below / total) ** k
        out[width] = cdf - prev
        prev = cdf
    return out


def forward_flops(arch: Arch, width: float) -> float:
    """One sequence's forward FLOPs at ``width`` tokens: matmuls, QKᵀ and attention x V, the head (no LM layer)."""
    return 2 * width * arch.matmul_weights_per_layer() * arch.layers \
        + 4 * width * width * arch.heads * arch.head_dim * arch.layers + 2 * arch.hidden * arch.attributes


def compute_estimate(arch: Arch, layout: dict[str, Any], opts: dict[str, Any], *, train_rows: int | None = None,
                     max_steps: int = -1, epochs: int = 1, widths: dict[int, float] | None = None) -> dict[str, Any]:
    """FLOPs and time per step (at seq_length, and at the expected padded width when ``widths`` is given), and the
    run's length in steps and hours."""
    L = layout
    seq, world, gbs, n_mb, pp, vp = L["seq_length"], L["world"], L["global_batch_size"], L["num_microbatches"], \
        L["pp"], L["vp"]
    seqs_step = gbs * (2 if L["samples_are"] == "pairs" else 1)
    fwd = forward_flops(arch, seq)
    model_flops = 3 * fwd * seqs_step
    extra = {"none": 0.0, "selective": 4 * seq * seq * arch.heads * arch.head_dim * arch.layers,
             "full": fwd}[L["recompute"]]
    hw_flops = model_flops + extra * seqs_step
    rate = world * opts["peak_tflops"] * 1e12 * opts["mfu"]
    step_at_seq = model_flops / rate if rate else None
    padded_length = padded_flops = None
    step_s = step_at_seq
    if widths:
        padded_length = sum(w * p for w, p in widths.items())
        padded_flops = 3 * seqs_step * sum(forward_flops(arch, w) * p for w, p in widths.items())
        step_s = padded_flops / rate if rate else None
    steps_per_epoch = int(train_rows) // gbs if train_rows else None
    candidates = [x for x in (steps_per_epoch * epochs if steps_per_epoch is not None else None,
                              max_steps if max_steps >= 0 else None) if x is not None]
    steps = min(candidates) if candidates else None
    bubble = (pp - 1) / ((vp or 1) * n_mb) if n_mb else None  # 1F1B idle fraction (Narayanan et al. 2021)
    return {
        "tokens_per_step": seqs_step * seq, "sequences_per_step": seqs_step, "pipeline_bubble": bubble,
        "model_flops_per_step": model_flops, "hardware_flops_per_step": hw_flops,
        "peak_tflops": opts["peak_tflops"], "mfu": opts["mfu"],
        "expected_padded_length": padded_length, "model_flops_per_step_padded": padded_flops,
        "step_time_at_seq_length_s": step_at_seq, "step_time_s": step_s,
        "train_rows": train_rows, "steps_per_epoch": steps_per_epoch, "max_epochs": epochs, "max_steps": max_steps,
        "steps": steps, "run_hours": steps * step_s / 3600 if steps and step_s else None,
        "gpu_hours": steps * step_s / 3600 * world if steps and step_s else None,
    }


def _data_widths(path: str, layout: dict[str, Any], length_grouped: bool, warnings: list[str],
                 errors: list[str]):
    """Micro-batch width distribution from ``plan.data_report`` (examples/prepare_data.py's data_report.json)."""
    import json

    try:
        report = json.loads(open(path).read())
        train = report["splits"]["train"]
        histogram = train["length_histogram"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        errors.append(f"plan.data_report={path}: not a data report with a train length histogram "
                      f"(examples/prepare_data.py writes one): {type(e).__name__}: {e}")
        return None, None
    reported = (report.get("settings") or {}).get("seq_length")
    if reported is not None and int(reported) != layout["seq_length"]:
        warnings.append(f"plan.data_report was prepared at seq_length {reported}, this plan uses "
                        f"{layout['seq_length']}: rows longer than the smaller one are counted at its width")
    return padded_width_distribution(histogram, layout["sequences_per_micro_batch"], layout["seq_length"],
                                     length_grouped), int(train["used"])


def make_plan(cfg: DictConfig, options: dict | None = None, *, strict: bool | None = None,
              check_memory: bool | None = None, choices: dict | None = None) -> Plan:
    """Everything the planner knows about ``cfg``. Never raises for a bad config: rules broken are in .errors."""
    _ensure_resolvers()
    opts = dict(options) if options is not None else plan_options(cfg)
    strict = bool(opts.get("strict")) if strict is None else strict
    p = Plan(options=opts, choices=dict(choices or {}))
    em = _get(cfg, "exp_manager")
    p.run = {"name": _get(cfg, "name"), "explicit_log_dir": _get(em, "explicit_log_dir") if em is not None else None,
             "max_time_per_run": _get(em, "max_time_per_run") if em is not None else None}
    checks = check_rules(cfg, strict=strict)
    p.layout, p.vocab = checks.layout, checks.vocab
    p.errors, p.warnings, p.notes = checks.errors, checks.warnings, checks.notes
    arch = model_arch(cfg.model, p.layout, p.vocab)
    if arch is None:
        return p
    p.params = parameter_counts(arch)
    memory = memory_estimate(arch, p.layout, opts)
    if memory is None:
        return p
    on_gpu = p.layout["accelerator"] in ("gpu", "cuda")
    p.memory = {**memory, "checked": on_gpu if check_memory is None else check_memory}
    if p.memory["checked"] and not memory["fits"]:
        p.errors.append(does_not_fit(memory, p.layout))
    rm = _get(cfg.trainer, "rm")
    rows = opts["train_rows"]
    preference = p.layout["samples_are"] == "pairs"
    if rows is None and not preference and _get(cfg.data, "source") in ("files", "hub"):
        rows = HELPSTEER2_TRAIN_ROWS
    widths = None
    if opts["data_report"]:
        widths, used = _data_widths(str(opts["data_report"]), p.layout, bool(_get(cfg.data, "length_grouped", False)),
                                    p.warnings, p.errors)
        rows = rows if opts["train_rows"] is not None or used is None else used
    p.compute = compute_estimate(arch, p.layout, opts, train_rows=rows,
                                 max_steps=int(_get(rm, "max_steps", -1)) if rm is not None else -1,
                                 epochs=int(_get(rm, "max_epochs", 1)) if rm is not None else 1, widths=widths)
    return p


# ------------------------------------------------------------------------------------------------ formatting


def _b(n) -> str:
    return f"{n / 1e9:,.2f} B" if n >= 1e8 else f"{n / 1e6:,.2f} M" if n >= 1e5 else f"{n:,.0f}"


def format_table(p: Plan) -> str:
    L, lines = p.layout, []
    add = lines.append
    head = " ".join(f"{k}={v}" for k, v in p.choices.items() if not k.startswith("hydra"))
    add(f"nemo_hs2 plan   {head}".rstrip())
    if L:
        cp = f" x CP {L['cp']}" if L["cp"] > 1 else ""
        vp = f" (virtual PP {L['vp']})" if L["vp"] else ""
        add(f"  layout        {L['nodes']} node(s) x {L['gpus_per_node']} GPU(s) = {L['world']} = TP {L['tp']} x "
            f"PP {L['pp']}{vp}{cp} x DP {L['dp']}   [{L['accelerator']}, {L['precision']}"
            f"{', O2' if L['megatron_amp_O2'] else ''}]")
        add(f"  batch         global {L['global_batch_size']} {L['samples_are']} = micro {L['micro_batch_size']} x "
            f"DP {L['dp']} x {L['num_microbatches']} micro-batches; {L['sequences_per_micro_batch']} sequence(s) of "
            f"<= {L['seq_length']} tokens per micro-batch")
        add(f"  memory plan   recomputation {L['recompute']}"
            + (f" ({L['recompute_method']}, {L['recompute_num_layers']})" if L["recompute"] == "full" else "")
            + f"; optimizer {L['optimizer']} ({'distributed' if L['distributed_optimizer'] else 'not distributed'})"
            + f"; sequence parallel {'on' if L['sequence_parallel'] else 'off'}")
    if p.vocab:
        v = p.vocab
        add(f"  vocabulary    {v['size']:,} -> padded {v['padded']:,} (multiple of {v['make_vocab_size_divisible_by']}"
            f" x TP = {v['multiple']}; {v['dummy_rows']} dummy rows)")
    if p.params:
        c = p.params
        add("parameters")
        for name, key in (("LM incl. output layer (compare published sizes)", "lm_with_output_layer"),
                          (f"reward model (backbone + {L['attributes']}-attribute head)", "reward_model"),
                          ("LM output layer (allocated, unused by the head)", "lm_output_layer"),
                          ("allocated in training (padded vocab, both)", "allocated_padded")):
            add(f"  {name:<50} {_b(c[key]):>14}")
    if p.memory:
        mem, f, l_ = p.memory, p.memory["first_stage"], p.memory["last_stage"]
        bpp = mem["bytes_per_param"]
        add(f"per-GPU memory, GiB                              first stage   last stage")
        rows = [
            (f"params on the GPU (B)", f["params"] / 1e9, l_["params"] / 1e9),
            (f"  of which LM output layer (B)", f["lm_output_layer_params"] / 1e9, l_["lm_output_layer_params"] / 1e9),
            (f"weights ({bpp['weights']} B/param)", f["weights"], l_["weights"]),
            (f"gradients (fp32)", f["gradients"], l_["gradients"]),
            (f"optimizer, not distributed ({bpp['optimizer']} B/param)", f["optimizer_plain"], l_["optimizer_plain"]),
            (f"optimizer, distributed (/ DP x CP = {max(L['dp'] * L['cp'], 1)})", f["optimizer_distributed"],
             l_["optimizer_distributed"]),
            (f"activations, no recomputation", f["activations_none"], l_["activations_none"]),
            (f"activations, selective recomputation", f["activations_selective"], l_["activations_selective"]),
            (f"activations, full recomputation", f["activations_full"], l_["activations_full"]),
            (f"overhead ({p.options['overhead_gb']:g} GiB + {p.options['fragmentation']:.0%})", f["overhead"],
             l_["overhead"]),
            (f"total as configured", f["total"], l_["total"]),
        ]
        for name, a, b in rows:
            add(f"  {name:<46} {a:>11.2f} {b:>12.2f}")
        verdict = "fits" if mem["fits"] else "DOES NOT FIT"
        checked = "" if mem["checked"] else " (not enforced: CPU run)"
        add(f"  peak {mem['peak']:.1f} GiB ({mem['worst_stage']} stage) vs {mem['gpu_memory_gb']:g} GiB per GPU: "
            f"{verdict}{checked}")
        if not mem["attention_scores_kept"]:
            add("  (attention scores not kept: Transformer Engine fused / flash attention)")
    if p.compute:
        c = p.compute
        add("compute")
        add(f"  tokens per step (at seq_length)                 {c['tokens_per_step']:>14,}")
        add(f"  model FLOPs per step                            {c['model_flops_per_step'] / 1e15:>11,.1f} PFLOP")
        add(f"  with recomputation (hardware FLOPs)             {c['hardware_flops_per_step'] / 1e15:>11,.1f} PFLOP")
        if c["pipeline_bubble"]:
            add(f"  pipeline bubble (PP-1)/(VP x micro-batches)     {c['pipeline_bubble']:>13.1%}  (inside the MFU)")
        if c["step_time_at_seq_length_s"] is not None:
            add(f"  est. time per step at {c['mfu']:.0%} MFU of {c['peak_tflops']:g} TFLOP/s  "
                f"{c['step_time_at_seq_length_s']:>10,.1f} s  (every row at seq_length {L['seq_length']:,})")
        padded = c["expected_padded_length"] is not None
        if padded and c["step_time_s"] is not None:
            add(f"  ... at the data's expected padded length {c['expected_padded_length']:>8,.0f}  "
                f"{c['step_time_s']:>10,.1f} s  (plan.data_report's length histogram)")
        if c["steps"] is not None and c["run_hours"] is not None:
            src = (f"{c['train_rows']:,} rows, {c['steps_per_epoch']} steps/epoch x {c['max_epochs']}"
                   if c["steps_per_epoch"] is not None else "trainer.rm.max_steps")
            add(f"  run: {c['steps']} steps ({src}) ~ {c['run_hours']:.1f} h, {c['gpu_hours']:,.0f} GPU-hours"
                + ("" if padded else " (upper bound: batches are cut to their longest row; plan.data_report=PATH "
                                     "estimates the data's widths)"))
    for title, items in (("errors", p.errors), ("warnings", p.warnings), ("before training", p.notes)):
        if items:
            add(f"{title}:")
            lines.extend(f"  - {x}" for x in items)
    add("checks: OK" if p.ok else f"checks: FAILED ({len(p.errors)} rule(s) broken)")
    return "\n".join(lines)


def split_plan_overrides(args: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Split CLI overrides into planner options (``plan.KEY=V``, ``+plan.KEY=V``, ``++plan.KEY=V``) and the rest."""
    opts, rest = {}, []
    for arg in args:
        bare = arg.lstrip("+")
        if bare.startswith("plan.") and "=" in bare:
            key, value = bare[len("plan."):].split("=", 1)
            opts[key] = _parse_value(value)
        else:
            rest.append(arg)
    return opts, rest


def _parse_value(value: str):
    low = value.lower()
    if low in ("null", "none", "~"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value
