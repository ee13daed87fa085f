"""Config checks that must fail on the login node, before any process group or model exists."""

from __future__ import annotations


class ConfigError(ValueError):
    pass


def parallel_layout(cfg) -> dict[str, int]:
    """World size and TP/PP/DP of a training config; raises ConfigError naming the rule a config breaks."""
    m, t = cfg.model, cfg.trainer
    world = int(t.devices) * int(t.num_nodes)
    tp, pp = int(m.tensor_model_parallel_size), int(m.pipeline_model_parallel_size)
    errors = []
    if tp < 1 or pp < 1:
        errors.append(f"tensor_model_parallel_size ({tp}) and pipeline_model_parallel_size ({pp}) must be >= 1")
    elif world % (tp * pp):
        errors.append(f"world size trainer.devices x trainer.num_nodes = {world} is not divisible by "
                      f"TP x PP = {tp} x {pp}")
    dp = world // (tp * pp) if tp >= 1 and pp >= 1 and world % (tp * pp) == 0 else 0
    mbs, gbs = int(m.micro_batch_size), int(m.global_batch_size)
    if dp and gbs % (mbs * dp):
        errors.append(f"model.global_batch_size ({gbs}) must be divisible by micro_batch_size x DP = {mbs} x {dp}")
    if pp >= 1 and int(m.num_layers) % pp:
        errors.append(f"model.num_layers ({m.num_layers}) must be divisible by pipeline_model_parallel_size ({pp})")
    heads = int(m.num_attention_heads)
    if tp >= 1 and heads % tp:
        errors.append(f"model.num_attention_heads ({heads}) must be divisible by tensor_model_parallel_size ({tp})")
    groups = m.get("num_query_groups")
    if groups and tp >= 1 and int(groups) % tp:
        errors.append(f"model.num_query_groups ({groups}) must be divisible by tensor_model_parallel_size ({tp})")
    if int(m.hidden_size) % heads:
        errors.append(f"model.hidden_size ({m.hidden_size}) must be divisible by num_attention_heads ({heads})")
    if tp > 1 and m.get("sequence_parallel", False) and t.accelerator == "cpu":
        errors.append("model.sequence_parallel needs apex or Transformer Engine LayerNorm: not available on CPU")
    seq = int(cfg.data.seq_length)
    if seq > int(m.encoder_seq_length):
        errors.append(f"data.seq_length ({seq}) exceeds model.encoder_seq_length ({m.encoder_seq_length})")
    loss = m.regression.get("loss_func", "regression")
    if loss != "regression" and cfg.data.get("source") != "preference":
        errors.append(f"model.regression.loss_func={loss} needs preference pairs (data=helpsteer2_preference)")
    if errors:
        raise ConfigError("invalid training config:\n  - " + "\n  - ".join(errors))
    return {"world": world, "tp": tp, "pp": pp, "dp": dp, "num_microbatches": gbs // (mbs * dp)}
