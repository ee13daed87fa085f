"""The plan as the table ``examples/plan.py`` prints (``plan.format=table``)."""

from __future__ import annotations

from nemo_hs2.plan.plan import Plan


def _b(n) -> str:
    return f"{n / 1e9:,.2f} B" if n >= 1e8 else f"{n / 1e6:,.2f} M" if n >= 1e5 else f"{n:,.0f}"


def _layout_lines(p: Plan) -> list[str]:
    L = p.layout
    cp = f" x CP {L.cp}" if L.cp > 1 else ""
    vp = f" (virtual PP {L.vp})" if L.vp else ""
    recompute = f" ({L.recompute_method}, {L.recompute_num_layers})" if L.recompute == "full" else ""
    lines = [
        f"  layout        {L.nodes} node(s) x {L.gpus_per_node} GPU(s) = {L.world} = TP {L.tp} x PP {L.pp}{vp}{cp} "
        f"x DP {L.dp}   [{L.accelerator}, {L.precision}{', O2' if L.megatron_amp_O2 else ''}]",
        f"  batch         global {L.global_batch_size} {L.samples_are} = micro {L.micro_batch_size} x DP {L.dp} x "
        f"{L.num_microbatches} micro-batches; {L.sequences_per_micro_batch} sequence(s) of <= {L.seq_length} tokens "
        "per micro-batch",
        f"  memory plan   recomputation {L.recompute}{recompute}; optimizer {L.optimizer} "
        f"({'distributed' if L.distributed_optimizer else 'not distributed'}); sequence parallel "
        f"{'on' if L.sequence_parallel else 'off'}",
    ]
    if p.vocab is not None:
        v = p.vocab
        lines.append(f"  vocabulary    {v.size:,} -> padded {v.padded:,} (multiple of {v.make_vocab_size_divisible_by}"
                     f" x TP = {v.multiple}; {v.dummy_rows} dummy rows)")
    return lines


def _parameter_lines(p: Plan) -> list[str]:
    c = p.params
    names = (("LM incl. output layer (compare published sizes)", "lm_with_output_layer"),
             (f"reward model (backbone + {p.layout.attributes}-attribute head)", "reward_model"),
             ("LM output layer (allocated, unused by the head)", "lm_output_layer"),
             ("allocated in training (padded vocab, both)", "allocated_padded"))
    return ["parameters"] + [f"  {name:<50} {_b(c[key]):>14}" for name, key in names]


def _memory_lines(p: Plan) -> list[str]:
    mem, f, l_ = p.memory, p.memory["first_stage"], p.memory["last_stage"]
    bpp, L, o = mem["bytes_per_param"], p.layout, p.options
    rows = [
        ("params on the GPU (B)", f["params"] / 1e9, l_["params"] / 1e9),
        ("  of which LM output layer (B)", f["lm_output_layer_params"] / 1e9, l_["lm_output_layer_params"] / 1e9),
        (f"weights ({bpp['weights']} B/param)", f["weights"], l_["weights"]),
        ("gradients (fp32)", f["gradients"], l_["gradients"]),
        (f"optimizer, not distributed ({bpp['optimizer']} B/param)", f["optimizer_plain"], l_["optimizer_plain"]),
        (f"optimizer, distributed (/ DP x CP = {max(L.dp * L.cp, 1)})", f["optimizer_distributed"],
         l_["optimizer_distributed"]),
        ("activations, no recomputation", f["activations_none"], l_["activations_none"]),
        ("activations, selective recomputation", f["activations_selective"], l_["activations_selective"]),
        ("activations, full recomputation", f["activations_full"], l_["activations_full"]),
        (f"overhead ({o.overhead_gb:g} GiB + {o.fragmentation:.0%})", f["overhead"], l_["overhead"]),
        ("total as configured", f["total"], l_["total"]),
    ]
    lines = ["per-GPU memory, GiB                              first stage   last stage"]
    lines += [f"  {name:<46} {a:>11.2f} {b:>12.2f}" for name, a, b in rows]
    verdict = "fits" if mem["fits"] else "DOES NOT FIT"
    checked = "" if mem["checked"] else " (not enforced: CPU run)"
    lines.append(f"  peak {mem['peak']:.1f} GiB ({mem['worst_stage']} stage) vs {mem['gpu_memory_gb']:g} GiB per GPU: "
                 f"{verdict}{checked}")
    if not mem["attention_scores_kept"]:
        lines.append("  (attention scores not kept: Transformer Engine fused / flash attention)")
    return lines


def _compute_lines(p: Plan) -> list[str]:
    c = p.compute
    lines = ["compute",
             f"  tokens per step (at seq_length)                 {c['tokens_per_step']:>14,}",
             f"  model FLOPs per step                            {c['model_flops_per_step'] / 1e15:>11,.1f} PFLOP",
             f"  with recomputation (hardware FLOPs)             {c['hardware_flops_per_step'] / 1e15:>11,.1f} PFLOP"]
    if c["pipeline_bubble"]:
        lines.append(f"  pipeline bubble (PP-1)/(VP x micro-batches)     {c['pipeline_bubble']:>13.1%}  "
                     "(inside the MFU)")
    if c["step_time_at_seq_length_s"] is not None:
        lines.append(f"  est. time per step at {c['mfu']:.0%} MFU of {c['peak_tflops']:g} TFLOP/s  "
                     f"{c['step_time_at_seq_length_s']:>10,.1f} s  (every row at seq_length {p.layout.seq_length:,})")
    padded = c["expected_padded_length"] is not None
    if padded and c["step_time_s"] is not None:
        lines.append(f"  ... at the data's expected padded length {c['expected_padded_length']:>8,.0f}  "
                     f"{c['step_time_s']:>10,.1f} s  (plan.data_report's length histogram)")
    if c["steps"] is not None and c["run_hours"] is not None:
        src = (f"{c['train_rows']:,} rows, {c['steps_per_epoch']} steps/epoch x {c['max_epochs']}"
               if c["steps_per_epoch"] is not None else "trainer.rm.max_steps")
        lines.append(f"  run: {c['steps']} steps ({src}) ~ {c['run_hours']:.1f} h, {c['gpu_hours']:,.0f} GPU-hours"
                     + ("" if padded else " (upper bound: batches are cut to their longest row; plan.data_report=PATH "
                                          "estimates the data's widths)"))
    return lines


def format_table(p: Plan) -> str:
    head = " ".join(f"{k}={v}" for k, v in p.choices.items() if not k.startswith("hydra"))
    lines = [f"nemo_hs2 plan   {head}".rstrip(), *_layout_lines(p)]
    if p.params:
        lines += _parameter_lines(p)
    if p.memory:
        lines += _memory_lines(p)
    if p.compute:
        lines += _compute_lines(p)
    for title, items in (("errors", p.errors), ("warnings", p.warnings), ("before training", p.notes)):
        if items:
            lines.append(f"{title}:")
            lines.extend(f"  - {x}" for x in items)
    lines.append("checks: OK" if p.ok else f"checks: FAILED ({len(p.errors)} rule(s) broken)")
    return "\n".join(lines)
