"""The rules a training config must keep, one function per group, each reading the composed config and its layout
and returning what it finds: errors (training refuses the config), warnings, and run-readiness findings (a recipe's
``???`` checkpoint or tokenizer: notes for the planner, errors when strict, as training applies them).

Each message names the key to change and, where a library enforces the rule later, which library and why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

from omegaconf import OmegaConf

from nemo_hs2.plan.layout import Layout, Vocab, layout_of, tokenizer_vocab, vocab_of
from nemo_hs2.plan.read import get, is_set


class Finding(NamedTuple):
    level: str      # error | warning | readiness
    message: str


def error(message: str) -> Finding:
    return Finding("error", message)


def warning(message: str) -> Finding:
    return Finding("warning", message)


def readiness(message: str) -> Finding:
    return Finding("readiness", message)


# ------------------------------------------------------------------------------------------------ the rules


def parallel_sizes(cfg, L: Layout) -> list[Finding]:
    if not L.sizes_valid:
        return [error(f"tensor_model_parallel_size ({L.tp}), pipeline_model_parallel_size ({L.pp}) and "
                      f"context_parallel_size ({L.cp}) must be >= 1")]
    if L.world % (L.tp * L.pp * L.cp):
        what = "TP x PP" + (" x CP" if L.cp > 1 else "")
        sizes = f"{L.tp} x {L.pp}" + (f" x {L.cp}" if L.cp > 1 else "")
        return [error(f"world size trainer.devices x trainer.num_nodes = {L.world} is not divisible by {what} = "
                      f"{sizes}")]
    return []


def batch_sizes(cfg, L: Layout) -> list[Finding]:
    mbs, gbs = L.micro_batch_size, L.global_batch_size
    if mbs < 1 or gbs < 1:
        return [error(f"model.micro_batch_size ({mbs}) and model.global_batch_size ({gbs}) must be >= 1")]
    if L.dp and gbs % (mbs * L.dp):
        return [error(f"model.global_batch_size ({gbs}) must be divisible by micro_batch_size x DP = {mbs} x "
                      f"{L.dp}")]
    return []


def pipeline_layers(cfg, L: Layout) -> list[Finding]:
    """Layers by PP, and the interleaved (virtual PP) schedule's constraints."""
    layers, pp, vp, n_mb = L.num_layers, L.pp, L.vp, L.num_microbatches
    found = []
    if pp >= 1 and layers % pp:
        found.append(error(f"model.num_layers ({layers}) must be divisible by pipeline_model_parallel_size ({pp})"))
    if pp > 1 and get(get(cfg, "data"), "packing", False) and not get(cfg.model, "variable_micro_batch_widths", True):
        # A packed micro-batch has its own width, which the stages can only pass on with a shape exchange.
        found.append(error("data.packing=true under pipeline parallelism needs model.variable_micro_batch_widths=true"))
    if vp is None:
        return found
    if vp < 2 or pp < 2:
        found.append(error(f"model.virtual_pipeline_model_parallel_size ({vp}) needs pipeline_model_parallel_size > "
                           "1 and at least 2 model chunks per stage (or null)"))
    elif layers % (pp * vp):
        found.append(error(f"model.num_layers ({layers}) must be divisible by PP x virtual PP = {pp} x {vp}"))
    elif n_mb and n_mb % pp:
        found.append(error(f"the interleaved (virtual PP) schedule needs the number of micro-batches ({n_mb}) to be "
                           f"a multiple of pipeline_model_parallel_size ({pp}) in megatron-core 0.10"))
    return found


def tensor_parallel_heads(cfg, L: Layout) -> list[Finding]:
    """Attention heads, KV groups and FFN width by TP; the head size."""
    m, tp = cfg.model, L.tp
    heads, hidden = int(m.num_attention_heads), int(m.hidden_size)
    groups = get(m, "num_query_groups")
    ffn = int(get(m, "ffn_hidden_size", 4 * hidden))
    found = []
    if tp >= 1 and heads % tp:
        found.append(error(f"model.num_attention_heads ({heads}) must be divisible by tensor_model_parallel_size "
                           f"({tp})"))
    if groups:
        if tp >= 1 and int(groups) % tp:
            found.append(error(f"model.num_query_groups ({groups}) must be divisible by tensor_model_parallel_size "
                               f"({tp})"))
        if heads % int(groups):
            found.append(error(f"model.num_attention_heads ({heads}) must be divisible by num_query_groups "
                               f"({groups})"))
    if get(m, "kv_channels") is None and hidden % heads:
        found.append(error(f"model.hidden_size ({hidden}) must be divisible by num_attention_heads ({heads})"))
    if tp >= 1 and ffn % tp:
        found.append(error(f"model.ffn_hidden_size ({ffn}) must be divisible by tensor_model_parallel_size ({tp})"))
    return found


def sequence_splitting(cfg, L: Layout) -> list[Finding]:
    """Context and sequence parallelism split a sequence; the reward head needs it whole."""
    found = []
    if L.cp > 1:
        found.append(error(f"model.context_parallel_size ({L.cp}) > 1: the reward model never splits a sequence "
                           "across context-parallel ranks (NeMo-Aligner 0.7.0's reward model has no CP batch "
                           "slicing)"))
    if L.tp > 1 and L.sequence_parallel:
        if not L.on_gpu:
            found.append(error("model.sequence_parallel needs apex or Transformer Engine LayerNorm: not available "
                               "on CPU"))
        else:
            found.append(error("model.sequence_parallel=true: the reward head reads each response's last token "
                               "from the decoder output, which sequence parallelism leaves split across TP ranks "
                               "(NeMo-Aligner 0.7.0 does not gather it; its published recipes set "
                               "sequence_parallel=False)"))
    return found


def sequence_length(cfg, L: Layout) -> list[Finding]:
    enc = int(get(cfg.model, "encoder_seq_length", L.seq_length))
    if L.seq_length > enc:
        return [error(f"data.seq_length ({L.seq_length}) exceeds model.encoder_seq_length ({enc})")]
    return []


def loss_needs_pairs(cfg, L: Layout) -> list[Finding]:
    """Preference pairs train a Bradley-Terry loss, rated rows the regression: said before anything is read."""
    m = cfg.model
    loss = get(m.regression, "loss_func", "regression") if "regression" in m else "regression"
    if loss != "regression" and not L.preference:
        return [error(f"model.regression.loss_func={loss} needs preference pairs (data=helpsteer2_preference, "
                      "data=helpsteer3_preference or data=demo_preference; loss_func=regression for rated rows)")]
    if loss == "regression" and L.preference:
        return [error("preference pairs (data.source=preference) carry a strength, not attribute labels: train them "
                      "with a Bradley-Terry loss, e.g. model.regression.loss_func=scaled_bt "
                      "'data.attributes=[helpfulness]' model.regression.reward_weights=helpfulness_only")]
    return []


def epochs_need_shuffling(cfg, L: Layout) -> list[Finding]:
    """NeMo-Aligner refuses (after the model is built) more than one epoch over its sequential batch sampler."""
    rm = get(cfg.trainer, "rm")
    if rm is None or get(rm, "train_random_sampler", True):
        return []
    epochs = get(rm, "max_epochs")
    if isinstance(epochs, int) and epochs > 1:
        return [error(f"trainer.rm.train_random_sampler=false repeats the same order every epoch, which NeMo-Aligner "
                      f"refuses for trainer.rm.max_epochs={epochs}: set max_epochs=1 or train_random_sampler=true")]
    return []


def checkpoint_interval(cfg, L: Layout) -> list[Finding]:
    rm = get(cfg.trainer, "rm")
    save_every, val_every = (get(rm, "save_interval"), get(rm, "val_check_interval")) if rm is not None else (0, 0)
    if isinstance(save_every, int) and isinstance(val_every, int) and val_every > 0 and save_every % val_every:
        # NeMo-Aligner asserts this only once training starts (after the model load, on every rank).
        return [error(f"trainer.rm.save_interval ({save_every}) must be a multiple of trainer.rm.val_check_interval "
                      f"({val_every}): checkpoints are saved with a validation")]
    return []


def fusions(cfg, L: Layout) -> list[Finding]:
    m = cfg.model
    activation = str(get(m, "activation", "gelu"))
    if not get(m, "bias_activation_fusion", False):
        return []
    if activation not in ("gelu", "geglu", "fast-geglu", "swiglu", "fast-swiglu"):
        return [error(f"model.bias_activation_fusion=true with activation={activation}: megatron-core fuses only "
                      "gelu and swiglu ('Only support fusion of gelu and swiglu'); set it false")]
    if activation == "gelu" and not get(m, "bias", True):
        return [error("model.bias_activation_fusion=true with gelu needs model.bias=true (megatron-core asserts it)")]
    return []


def optimizer(cfg, L: Layout) -> list[Finding]:
    found = []
    if L.optimizer == "distributed_fused_adam" and not L.on_gpu:
        found.append(error("model.optim.name=distributed_fused_adam needs NVIDIA apex (the GPU image): use adamw "
                           "on CPU"))
    sched_steps = get(get(get(cfg.model, "optim"), "sched"), "max_steps")
    if is_set(sched_steps) and int(sched_steps) <= 0:
        found.append(error(f"model.optim.sched.max_steps = {sched_steps}: the LR schedule needs a length (with -1 "
                           "NeMo silently builds no scheduler: no warm-up); set trainer.rm.max_steps (the recipes "
                           "do) or model.optim.sched.max_steps"))
    return found


def recomputation(cfg, L: Layout) -> list[Finding]:
    method, ckpt_layers = L.recompute_method, L.recompute_num_layers
    if L.recompute not in ("none", "selective", "full"):
        return [error(f"model.activations_checkpoint_granularity={L.recompute}: must be selective, full or null")]
    if L.recompute == "full":
        if method not in ("uniform", "block") or ckpt_layers is None or int(ckpt_layers) < 1:
            return [error("model.activations_checkpoint_granularity=full needs activations_checkpoint_method "
                          f"uniform|block and activations_checkpoint_num_layers >= 1 (got {method}, {ckpt_layers})")]
    elif L.recompute == "selective" and ckpt_layers is not None:
        return [error("model.activations_checkpoint_granularity=selective takes no activations_checkpoint_num_layers "
                      "(megatron-core refuses it): set it null")]
    elif L.recompute == "none" and method is not None:
        return [warning(f"model.activations_checkpoint_method={method} does nothing without "
                        "activations_checkpoint_granularity=full")]
    return []


def vocabulary(cfg, L: Layout) -> list[Finding]:
    divisible_by = int(get(cfg.model, "make_vocab_size_divisible_by", 128))
    if divisible_by < 1:
        return [error(f"model.make_vocab_size_divisible_by ({divisible_by}) must be >= 1 (NeMo pads the vocabulary "
                      "to a multiple of it x TP)")]
    if tokenizer_vocab(cfg.model) is None:
        return [warning("vocabulary size unknown (set model.tokenizer.vocab_size): embedding and LM output layer are "
                        "left out of the counts")]
    return []


def run_readiness(cfg, L: Layout) -> list[Finding]:
    """What a recipe leaves to the checkpoint (``???``): fine for planning, not for a run."""
    m, init = cfg.model, get(cfg, "init")
    if is_set(get(init, "restore_from_path")):
        return []
    found = []
    if init is not None and get(init, "require_checkpoint", False):
        found.append(readiness("init.restore_from_path is not set: this recipe fine-tunes a base checkpoint (.nemo) "
                               "(init.require_checkpoint=true)"))
    missing = sorted(OmegaConf.missing_keys(m))
    if missing:
        found.append(readiness(f"{', '.join(missing)} ??? (taken from the checkpoint): set init.restore_from_path "
                               "or the key"))
    tok = get(m, "tokenizer")
    library = str(get(tok, "library", "")) if is_set(tok) else ""
    if library and library != "byte-level" and not any(is_set(get(tok, k)) for k in ("model", "type", "vocab_file")):
        found.append(readiness(f"model.tokenizer ({library}) names no model / type / vocab_file: it comes from the "
                               "checkpoint, so set init.restore_from_path (or +model.tokenizer.model / type)"))
    return found


RULES: tuple[Callable[..., list[Finding]], ...] = (
    parallel_sizes, batch_sizes, pipeline_layers, tensor_parallel_heads, sequence_splitting, sequence_length,
    loss_needs_pairs, epochs_need_shuffling, checkpoint_interval, fusions, optimizer, recomputation, vocabulary, run_readiness,
)


# ------------------------------------------------------------------------------------------------ running them


@dataclass
class Checks:
    """What ``check_rules`` read from a config: its layout, vocabulary, and the rules it breaks."""
    layout: Layout
    vocab: Vocab | None
    errors: list[str]
    warnings: list[str]
    notes: list[str]   # run readiness: errors instead when strict


def check_rules(cfg, *, strict: bool = False) -> Checks:
    """The layout of ``cfg`` and every rule it breaks, in RULES order. Never raises for a bad config."""
    layout = layout_of(cfg)
    found = [f for rule in RULES for f in rule(cfg, layout)]
    errors = [f.message for f in found if f.level == "error" or (strict and f.level == "readiness")]
    warnings = [f.message for f in found if f.level == "warning"]
    notes = [f.message for f in found if f.level == "readiness" and not strict]
    return Checks(layout, vocab_of(cfg, layout), errors, warnings, notes)
