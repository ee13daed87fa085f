"""FLOPs and time per step, and the run's length.

Model FLOPs per sequence = 3 x forward (forward + backward), forward = 2 x tokens x (matmul weights of the
transformer layers) + 4 x s² x a x d per layer (QKᵀ and attention x V) + the head; the unused LM output layer is
not run. Estimated step time = model FLOPs / (GPUs x ``plan.peak_tflops`` x ``plan.mfu``), at ``data.seq_length``
(an upper bound: batches are cut to their longest row) and, given ``plan.data_report`` (the ``data_report.json``
of ``examples/prepare_data.py``), at the expected width of a micro-batch of the configured data."""

from __future__ import annotations

import json
from typing import Any

from nemo_hs2.plan.arch import Arch
from nemo_hs2.plan.layout import Layout
from nemo_hs2.plan.options import PlanOptions
from nemo_hs2.plan.read import get

HELPSTEER2_TRAIN_ROWS = 20324


def forward_flops(arch: Arch, width: float) -> float:
    """One sequence's forward FLOPs at ``width`` tokens: matmuls, QKᵀ and attention x V, the head (no LM layer)."""
    return 2 * width * arch.matmul_weights_per_layer() * arch.layers \
        + 4 * width * width * arch.heads * arch.head_dim * arch.layers + 2 * arch.hidden * arch.attributes


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


def compute_estimate(arch: Arch, L: Layout, opts: PlanOptions, *, train_rows: int | None = None,
                     max_steps: int = -1, epochs: int = 1, widths: dict[int, float] | None = None) -> dict[str, Any]:
    """FLOPs and time per step (at seq_length, and at the expected padded width when ``widths`` is given), and the
    run's length in steps and hours."""
    seq, world, gbs, n_mb = L.seq_length, L.world, L.global_batch_size, L.num_microbatches
    seqs_step = gbs * (2 if L.preference else 1)
    fwd = forward_flops(arch, seq)
    model_flops = 3 * fwd * seqs_step
    extra = {"none": 0.0, "selective": 4 * seq * seq * arch.heads * arch.head_dim * arch.layers,
             "full": fwd}[L.recompute]
    hw_flops = model_flops + extra * seqs_step
    rate = world * opts.peak_tflops * 1e12 * opts.mfu
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
    bubble = (L.pp - 1) / ((L.vp or 1) * n_mb) if n_mb else None  # 1F1B idle fraction (Narayanan et al. 2021)
    return {
        "tokens_per_step": seqs_step * seq, "sequences_per_step": seqs_step, "pipeline_bubble": bubble,
        "model_flops_per_step": model_flops, "hardware_flops_per_step": hw_flops,
        "peak_tflops": opts.peak_tflops, "mfu": opts.mfu,
        "expected_padded_length": padded_length, "model_flops_per_step_padded": padded_flops,
        "step_time_at_seq_length_s": step_at_seq, "step_time_s": step_s,
        "train_rows": train_rows, "steps_per_epoch": steps_per_epoch, "max_epochs": epochs, "max_steps": max_steps,
        "steps": steps, "run_hours": steps * step_s / 3600 if steps and step_s else None,
        "gpu_hours": steps * step_s / 3600 * world if steps and step_s else None,
    }


def data_widths(path: str, L: Layout, length_grouped: bool) -> tuple[dict[int, float], int, list[str]]:
    """Micro-batch width distribution from ``plan.data_report`` (examples/prepare_data.py's data_report.json), the
    rows it counts, and warnings. ValueError naming the file when it is not such a report."""
    try:
        with open(path) as f:
            report = json.load(f)
        train = report["splits"]["train"]
        widths = padded_width_distribution(train["length_histogram"], L.sequences_per_micro_batch, L.seq_length,
                                           length_grouped)
        used = int(train["used"])
        reported = (report.get("settings") or {}).get("seq_length")
        reported = int(reported) if reported is not None else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"plan.data_report={path}: not a data report with a train length histogram "
                         f"(examples/prepare_data.py writes one): {type(e).__name__}: {e}") from None
    if reported is None or reported == L.seq_length:
        return widths, used, []
    return widths, used, [f"plan.data_report was prepared at seq_length {reported}, this plan uses {L.seq_length}: "
                          "rows longer than the smaller one are counted at its width"]


def run_compute(cfg, arch: Arch, L: Layout, opts: PlanOptions) -> tuple[dict[str, Any], list[str], list[str]]:
    """The compute estimate of a config (rows per epoch: ``plan.train_rows``, else the data report's, else
    HelpSteer2's for its regression data), with the data report's warnings and errors."""
    warnings, errors = [], []
    rows = opts.train_rows
    if rows is None and not L.preference and get(cfg.data, "source") in ("files", "hub"):
        rows = HELPSTEER2_TRAIN_ROWS
    widths = None
    if opts.data_report:
        try:
            widths, used, warnings = data_widths(opts.data_report, L, bool(get(cfg.data, "length_grouped", False)))
            rows = rows if opts.train_rows is not None else used
        except ValueError as e:
            errors.append(str(e))
    rm = get(cfg.trainer, "rm")
    compute = compute_estimate(arch, L, opts, train_rows=rows, max_steps=int(get(rm, "max_steps", -1)),
                               epochs=int(get(rm, "max_epochs", 1)), widths=widths)
    return compute, warnings, errors
