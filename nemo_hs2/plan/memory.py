"""Per-GPU memory of the first and the last pipeline stage (the larger one decides the fit), in GiB.

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
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from nemo_hs2.plan.arch import Arch
from nemo_hs2.plan.layout import Layout
from nemo_hs2.plan.options import PlanOptions

GIB = 1024**3


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


class LayerActivations(NamedTuple):
    """Bytes one layer keeps for one micro-batch: without recomputation, with selective, and its input."""
    none: float
    selective: float
    input: float


def half_precision(layout: Layout) -> bool:
    return layout.precision in ("bf16", "bf16-mixed", "16", "16-mixed")


def bytes_per_param(layout: Layout) -> tuple[int, int]:
    """(weights, optimizer state) bytes per parameter; gradients are fp32 (4 B) either way."""
    weights = 2 if (half_precision(layout) and layout.megatron_amp_O2) else 4
    return weights, 8 + (4 if weights == 2 else 0)


def flash_attention(layout: Layout) -> bool:
    """Transformer Engine's fused / flash attention keeps no attention scores (GPU only)."""
    return layout.transformer_engine and layout.on_gpu


def layer_activations(arch: Arch, L: Layout) -> LayerActivations:
    seq = L.seq_length // L.cp if L.cp else L.seq_length
    kw = dict(seq=seq, seqs=L.sequences_per_micro_batch, tp=L.tp, sp=L.sequence_parallel and L.tp > 1,
              dtype_bytes=2 if half_precision(L) else 4)
    return LayerActivations(activation_bytes_per_layer(arch, keep_scores=not flash_attention(L), **kw),
                            activation_bytes_per_layer(arch, keep_scores=False, **kw),
                            layer_input_bytes(arch, **kw))


def stage_activations(L: Layout, inflight: float, layer: LayerActivations) -> dict[str, float]:
    """One stage's activation bytes with each recomputation setting, ``inflight`` micro-batches held."""
    per_stage = L.num_layers // L.pp
    full = L.recompute == "full"
    out = {"none": per_stage * inflight * layer.none, "selective": per_stage * inflight * layer.selective}
    n = int(L.recompute_num_layers) if (full and L.recompute_num_layers) else 1
    if L.recompute_method == "block" and full:
        stored = n * layer.input + max(per_stage - n, 0) * layer.none
        out["full"] = inflight * stored + layer.none
    else:
        out["full"] = inflight * math.ceil(per_stage / n) * layer.input + n * layer.none
    return out


def stage_memory(arch: Arch, L: Layout, opts: PlanOptions, *, first: bool, last: bool, inflight: float,
                 layer: LayerActivations) -> dict[str, Any]:
    """One pipeline stage's row of the memory table: parameter counts, and GiB for the rest."""
    w_bytes, opt_bytes = bytes_per_param(L)
    shard = max(L.dp * L.cp, 1)
    padded = arch.padded_vocab or 0
    n_params = L.num_layers // L.pp * arch.layer_params(L.tp)
    if first:
        n_params += padded * arch.hidden / L.tp + arch.learned_pos
    output_layer = padded * arch.hidden / L.tp if last else 0.0
    if last:
        n_params += arch.norm + output_layer + arch.head_params(L.tp)
    a = stage_activations(L, inflight, layer)
    row = {
        "params": n_params, "lm_output_layer_params": output_layer,
        "weights": n_params * w_bytes, "gradients": n_params * 4,
        "optimizer_plain": n_params * opt_bytes, "optimizer_distributed": n_params * opt_bytes / shard,
        "activations_none": a["none"], "activations_selective": a["selective"], "activations_full": a["full"],
    }
    row["optimizer"] = row["optimizer_distributed"] if L.distributed_optimizer else row["optimizer_plain"]
    row["activations"] = a[L.recompute]
    tensors = row["weights"] + row["gradients"] + row["optimizer"] + row["activations"]
    row["overhead"] = opts.overhead_gb * GIB + opts.fragmentation * tensors
    row["total"] = tensors + row["overhead"]
    return {k: (v / GIB if k not in ("params", "lm_output_layer_params") else round(v)) for k, v in row.items()}


def stages_known(L: Layout) -> bool:
    return bool(L.dp) and L.tp >= 1 and L.pp >= 1 and L.num_layers % L.pp == 0 and \
        L.recompute in ("none", "selective", "full")


def memory_estimate(arch: Arch, L: Layout, opts: PlanOptions) -> dict[str, Any] | None:
    """Per-GPU memory (GiB) of the first and the last pipeline stage; None when the layout has no valid stages."""
    if not stages_known(L):
        return None
    pp, n_mb = L.pp, L.num_microbatches
    layer = layer_activations(arch, L)
    interleave = (1 + (pp - 1) / (pp * L.vp)) if L.vp else 1.0
    inflight_first = (min(pp, n_mb) if n_mb else pp) * interleave
    first = stage_memory(arch, L, opts, first=True, last=pp == 1, inflight=inflight_first, layer=layer)
    last = stage_memory(arch, L, opts, first=False, last=True, inflight=1.0, layer=layer) if pp > 1 else first
    worst = max((first, last), key=lambda r: r["total"])
    w_bytes, opt_bytes = bytes_per_param(L)
    return {
        "unit": "GiB", "gpu_memory_gb": opts.gpu_memory_gb, "first_stage": first, "last_stage": last,
        "worst_stage": "first" if worst is first else "last", "peak": worst["total"],
        "fits": worst["total"] <= opts.gpu_memory_gb,
        "bytes_per_param": {"weights": w_bytes, "gradients": 4, "optimizer": opt_bytes,
                            "optimizer_sharded_over": max(L.dp * L.cp, 1) if L.distributed_optimizer else 1},
        "attention_scores_kept": not flash_attention(L),
    }


def does_not_fit(memory: dict[str, Any], L: Layout) -> str:
    """The error for a plan whose worst stage exceeds the GPU, with what would help."""
    worst = memory[f"{memory['worst_stage']}_stage"]
    recompute, distributed_opt = L.recompute, L.distributed_optimizer
    helps = ([] if distributed_opt else ["a distributed optimizer (distributed_fused_adam)"]) \
        + ([] if recompute == "full" else ["full recomputation"]) \
        + ["more pipeline stages (PP)",
           "more data-parallel ranks to shard the optimizer" if distributed_opt else "more TP",
           "a smaller micro-batch"]
    return (f"does not fit: {worst['total']:.1f} GiB per GPU on the {memory['worst_stage']} pipeline stage > "
            f"plan.gpu_memory_gb={memory['gpu_memory_gb']:g} (weights {worst['weights']:.1f} + gradients "
            f"{worst['gradients']:.1f} + optimizer {worst['optimizer']:.1f} + activations (recomputation: {recompute}"
            f") {worst['activations']:.1f} + overhead {worst['overhead']:.1f}); try " + ", ".join(helps))

