"""One process of a parallel-equivalence check; run under torchrun by tests/test_parallel_equivalence.py.

``--save REF`` (TP=PP=DP=1): build the tiny model, run one fixed global batch forward and backward, save the full
weights, per-row predictions, loss and gradients. ``--compare REF``: build the model at the requested layout,
load the reference weights resharded for this rank, run the same batch and write the max differences. Under PP the
batch also runs with every micro-batch at the batch's width (``variable_seq_lengths`` off), and the differences
from per-micro-batch widths are written too. In every layout the batch also runs packed (``data.packing``: the default
bins, bins of ``PACK_CAPACITY`` tokens, one packed row per micro-batch), and the differences from unpacked are written;
``--packing-only`` stops there, ``--packing-mutation mask|ends`` breaks the packed path on purpose (the test that
the check can fail).
Everything is taken from the real stack (Hydra config, NeMo trainer, our model, collate and loss), nothing mocked.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from unittest import mock

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOSSES = ("regression", "regular_bt", "margin_bt", "scaled_bt", "regression+bt")
GRAD_PARAMS = ("rm_head.weight", "rm_head.bias", "decoder.layers.1.self_attention.linear_qkv.weight",
               "decoder.layers.1.mlp.linear_fc1.weight", "decoder.layers.0.self_attention.linear_proj.weight")


def batch_rows(num_rows: int, attributes):
    """Rows of different lengths with some labels missing: the cases micro-batching and masking get wrong."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(num_rows):
        length = int(rng.integers(9, 40))
        labels = rng.integers(0, 5, size=len(attributes)).astype(np.float32)
        labels[rng.random(len(attributes)) < 0.25] = np.nan
        if np.isnan(labels).all():
            labels[0] = 2.0
        rows.append({"tokens": rng.integers(1, 250, size=length).astype(np.int32), "labels": labels,
                     "pair_id": i // 2, "preference": float(rng.choice([-3, -2, -1, 1, 2, 3]))})
    for a, b in zip(rows[0::2], rows[1::2]):
        b["preference"] = a["preference"]
    return rows


def one_step(model, batch):
    """One validation forward and one training step on ``batch``: (val_loss, train_loss, predictions or None,
    {parameter name: gradient} of this rank)."""
    model.prepare_for_validation_step()
    model.start_validation_collection()
    val_loss, _ = model.get_loss_and_metrics(batch, forward_only=True)
    arrays = model.finish_validation_collection()
    model.finish_validation_step()
    model.prepare_for_training_step()
    for prm in model.model.parameters():
        prm.grad = None
    train_loss, _ = model.get_loss_and_metrics(batch, forward_only=False)
    model.finish_training_step()
    grads = {}
    for name, prm in model.model.named_parameters():
        g = getattr(prm, "main_grad", None)
        g = prm.grad if g is None else g
        if g is not None:
            grads[name] = g.detach().clone()
    return val_loss, train_loss, None if arrays is None else arrays["pred"], grads


def fixed_width_check(model, batch):
    """Per-micro-batch widths vs every micro-batch at the batch's width, under PP: predictions, loss, all gradients.

    Returns the max differences and the widths the micro-batches were cut to (or ``None`` without PP)."""
    from megatron.core import parallel_state as ps
    from megatron.core.num_microbatches_calculator import get_num_microbatches

    if ps.get_pipeline_model_parallel_world_size() == 1:
        return None
    model.loss_name = "regression"
    runs = {}
    for variable in (True, False):
        model.variable_widths = variable
        runs[variable] = one_step(model, batch)
    model.variable_widths = True
    (v_val, v_train, v_pred, v_grads), (f_val, f_train, f_pred, f_grads) = runs[True], runs[False]
    assert v_grads.keys() == f_grads.keys() and v_grads
    diffs = {"val_loss": abs(v_val - f_val), "train_loss": abs(v_train - f_train),
             "grads": max(float((v_grads[k] - f_grads[k]).abs().max()) for k in v_grads)}
    if v_pred is not None:
        diffs["pred"] = float(np.abs(v_pred - f_pred).max())
    micro_batches, _ = model._micro_batches(batch, get_num_microbatches(), trim=True)
    return {"diffs": diffs, "widths": [mb["inputs"].shape[1] for mb in micro_batches],
            "batch_width": batch["inputs"].shape[1], "grad_tensors": len(v_grads)}


PACK_CAPACITY = 48  # tokens: rows of 9..39 tokens give bins of one and of several rows


@contextlib.contextmanager
def packing_mutation(kind):
    """The packed path broken on purpose: ``mask``, rows see the rows before them (a plain causal mask); ``ends``,
    the head reads the token before each row's end-of-response token."""
    import torch

    from nemo_hs2.data import packing

    if kind is None:
        yield
        return
    if kind == "mask":
        def broken(segments):
            width = segments.shape[1]
            causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril_()
            return ~causal.expand(segments.shape[0], 1, width, width)
        target, name = packing, "block_causal_mask"
    elif kind == "ends":
        pack = packing.pack

        def broken(*args, **kwargs):
            out = pack(*args, **kwargs)
            out["ends"][:, 1] -= 1
            return out
        target, name = packing, "pack"
    else:
        raise ValueError(f"unknown packing mutation {kind}")
    with mock.patch.object(target, name, broken):
        yield


def packing_check(model, batch, losses, conversations, attributes, mutation=None):
    """Packed vs unpacked at this layout, on the same weights and batch: validation predictions, validation and
    training losses and every gradient, per loss; and the inference path (``predict``)."""
    from megatron.core.num_microbatches_calculator import get_num_microbatches

    from nemo_hs2.megatron.scorer import RewardScorer

    def run(packed, capacity):
        model.packing, model.pack_length = packed, capacity
        try:
            with packing_mutation(mutation if packed else None):
                steps = {name: one_step(model, batch) for name in losses}
                model.loss_name = "regression"
                scored = RewardScorer(model, batch_size=9).score(conversations)
        finally:
            model.packing, model.pack_length = False, None
        return steps, np.array([[r["attributes"][a] for a in attributes] for r in scored])

    saved_loss = model.loss_name
    unpacked, unpacked_scores = run(False, None)
    result = {}
    # default: bins no wider than the micro-batch's longest row; bins: of PACK_CAPACITY tokens; one_row: every row
    # of a micro-batch in one packed row (the dense stand-in for THD's one sequence).
    for label, capacity in (("default", None), ("bins", PACK_CAPACITY), ("one_row", 1 << 20)):
        packed, packed_scores = run(True, capacity)
        diffs = {"inference/pred": float(np.abs(packed_scores - unpacked_scores).max())}
        for name in losses:
            (u_val, u_train, u_pred, u_grads), (p_val, p_train, p_pred, p_grads) = unpacked[name], packed[name]
            assert u_grads.keys() == p_grads.keys() and u_grads
            diffs[f"{name}/val_loss"] = abs(u_val - p_val)
            diffs[f"{name}/train_loss"] = abs(u_train - p_train)
            diffs[f"{name}/grads"] = max(float((u_grads[k] - p_grads[k]).abs().max()) for k in u_grads)
            if u_pred is not None:
                diffs[f"{name}/pred"] = float(np.abs(u_pred - p_pred).max())
        model.packing, model.pack_length = True, capacity
        micro_batches, _ = model._micro_batches(batch, get_num_microbatches(), trim=True)
        model.packing, model.pack_length = False, None
        result[label] = {"diffs": diffs, "grad_tensors": len(unpacked[losses[0]][3]),
                         "packed_shapes": [list(mb["inputs"].shape) for mb in micro_batches],
                         "rows_per_micro_batch": int(micro_batches[0]["ends"].shape[0]),
                         # the most rows one packed row holds: 1 means the mask never separated two rows
                         "max_rows_sharing": max(int(mb["ends"][:, 0].bincount().max()) for mb in micro_batches)}
    model.loss_name = saved_loss
    return result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--save")
    p.add_argument("--compare")
    p.add_argument("--out")
    p.add_argument("--packing-only", action="store_true", help="only the packed-vs-unpacked check")
    p.add_argument("--packing-mutation", choices=("mask", "ends"), help="break the packed path on purpose")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    OmegaConf.register_new_resolver("multiply", lambda x, y: x * y, replace=True)
    OmegaConf.register_new_resolver("int_div", lambda x, y: x // y, replace=True)
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base=None):
        cfg = compose(config_name="train_reward_model", overrides=args.overrides)

    from nemo_hs2.megatron import compat
    from nemo_hs2.megatron.build import seed_model_parallel_rng
    from nemo_hs2.plan.checks import parallel_layout

    parallel_layout(cfg)
    compat.apply()
    from megatron.core import parallel_state as ps
    from nemo_aligner.utils.train_script_utils import init_distributed, resolve_and_create_trainer

    from nemo_hs2.data.dataset import Collator, tokenize_examples
    from nemo_hs2.data.demo import demo_examples
    from nemo_hs2.megatron.reward_model import AttributeRewardModel
    from nemo_hs2.megatron.scorer import RewardScorer, model_renderer
    from nemo_hs2.core.reward_weights import combine, resolve_weights

    with open_dict(cfg):
        cfg.exp_manager = None
    torch.manual_seed(cfg.model.seed)
    trainer = resolve_and_create_trainer(cfg, "rm")
    model = AttributeRewardModel(cfg.model, trainer)
    init_distributed(trainer, model, False)
    seed_model_parallel_rng(cfg.model.seed)
    module = model.model
    tp_rank, tp = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    pp_rank, pp = ps.get_pipeline_model_parallel_rank(), ps.get_pipeline_model_parallel_world_size()
    dp_rank, dp = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    layer_offset = pp_rank * (cfg.model.num_layers // pp)

    def global_name(name):
        return re.sub(r"decoder\.layers\.(\d+)\.", lambda m: f"decoder.layers.{int(m.group(1)) + layer_offset}.", name)

    def shard(name, full, local_shape):
        if tuple(full.shape) == tuple(local_shape):
            return full
        dim = next(i for i in range(full.dim()) if full.shape[i] != local_shape[i])
        return full.chunk(tp, dim=dim)[tp_rank]

    ref = torch.load(args.compare, weights_only=False) if args.compare else None
    if ref is not None:
        local = {k: v for k, v in module.state_dict().items() if "_extra_state" not in k}
        loaded = {k: shard(k, ref["weights"][global_name(k)], v.shape) for k, v in local.items()}
        module.load_state_dict(loaded, strict=False)

    attributes = list(cfg.model.regression.attributes)
    rows = batch_rows(int(cfg.model.global_batch_size), attributes)
    per_rank = len(rows) // dp  # contiguous slices keep each preference pair on one DP rank
    mine = rows[dp_rank * per_rank:(dp_rank + 1) * per_rank]
    batch = Collator(pad_id=0, pad_to_multiple=8)(mine)
    batch["preference"] = torch.tensor([r["preference"] for r in mine], dtype=torch.float32)

    outputs, absolute = {}, None
    rows_per_micro_batch = len(mine) // (int(cfg.model.global_batch_size) // (int(cfg.model.micro_batch_size) * dp))
    examples = demo_examples(5, seed=3, split="validation")[:9]
    conversations = [[{"role": "user", "content": e.prompt}, {"role": "assistant", "content": e.response}]
                     for e in examples]
    # Before the reference steps below change the weights: every layout compares packed with unpacked on the
    # reference weights (a BT loss too where a micro-batch holds whole pairs).
    packed = packing_check(model, batch, LOSSES[:2] if rows_per_micro_batch % 2 == 0 else LOSSES[:1],
                           conversations, attributes, args.packing_mutation)
    if args.packing_only:
        from torchrun_io import write_gathered

        write_gathered({"layout": {"tp": tp, "pp": pp, "dp": dp}, "packing": packed}, args.out)
        return 0
    # A Bradley-Terry micro-batch holds whole pairs; single-row micro-batches can only check the regression loss.
    for loss_name in LOSSES if rows_per_micro_batch % 2 == 0 else LOSSES[:1]:
        model.loss_name = loss_name
        val_loss, train_loss, pred, all_grads = one_step(model, batch)
        grads = {global_name(n): g for n, g in all_grads.items() if global_name(n) in GRAD_PARAMS}
        outputs[loss_name] = {"val_loss": val_loss, "train_loss": train_loss, "grads": grads, "pred": pred}
        if loss_name == "regression" and pred is not None:
            # The absolute check: the loss the model reports against a masked MSE computed here in numpy from the
            # model's own predictions and the rows' labels (every present label of the global batch, equally
            # weighted), so a normaliser wrong in every layout alike is still caught.
            labels = np.stack([r["labels"] for r in rows]).astype(np.float64)
            present = ~np.isnan(labels)
            err = np.where(present, pred.astype(np.float64) - np.nan_to_num(labels), 0.0)
            absolute = {"val_loss": val_loss, "train_loss": train_loss,
                        "numpy_mse": float((err ** 2).sum() / present.sum()), "rows": int(len(pred))}

    # Inference API: conversations through the same template/tokenizer as training, in odd-sized batches.
    scores = {bs: RewardScorer(model, batch_size=bs, max_length=int(cfg.data.seq_length))
              .score(conversations) for bs in (2, 9)}
    scored = {bs: np.array([[r["attributes"][a] for a in attributes] for r in res]) for bs, res in scores.items()}
    reward_gap = max(abs(r["reward"] - float(combine(np.array([r["attributes"][a] for a in attributes]),
                                                     resolve_weights("nemotron_340b", attributes))))
                     for r in scores[9])
    training_path_gap = None
    if args.save:  # the same rows through the training data path and the validation forward
        ds, _ = tokenize_examples(examples[:8], model_renderer(model), attributes,
                                  max_length=int(cfg.data.seq_length))
        vbatch = Collator(pad_id=model.tokenizer.eos_id)([ds[i] for i in range(8)])
        model.loss_name = "regression"
        model.start_validation_collection()
        model.get_loss_and_metrics(vbatch, forward_only=True)
        training_path_gap = float(np.abs(model.finish_validation_collection()["pred"] - scored[9][:8]).max())

    padding = None
    if args.save:  # dynamic padding vs NeMo-Aligner's stock layout (every row padded to seq_length)
        seq = int(cfg.data.seq_length)
        model.loss_name = "regression"
        got = {}
        for name, multiple in (("dynamic", 8), ("full", seq)):
            model.pad_to_multiple = multiple
            b = Collator(pad_id=0, pad_to_multiple=multiple)(mine)
            model.start_validation_collection()
            loss, _ = model.get_loss_and_metrics(b, forward_only=True)
            got[name] = (loss, model.finish_validation_collection()["pred"], b["inputs"].shape[1])
        model.pad_to_multiple = 8
        padding = {"loss_gap": abs(got["dynamic"][0] - got["full"][0]),
                   "pred_gap": float(np.abs(got["dynamic"][1] - got["full"][1]).max()),
                   "widths": [got["dynamic"][2], got["full"][2]]}

    fixed_width = fixed_width_check(model, batch)
    result = {"layout": {"tp": tp, "pp": pp, "dp": dp}, "padding": padding, "absolute": absolute,
              "fixed_width": fixed_width, "packing": packed,
              "inference": {"batch_size_gap": float(np.abs(scored[2] - scored[9]).max()), "reward_gap": reward_gap,
                            "training_path_gap": training_path_gap}}
    if args.save:
        torch.save({"weights": {k: v.detach().clone() for k, v in module.state_dict().items()
                                if "_extra_state" not in k}, "outputs": outputs, "scored": scored[9]}, args.save)
        result["losses"] = {k: v["train_loss"] for k, v in outputs.items()}
    else:
        diffs = {}
        for loss_name, out in outputs.items():
            want = ref["outputs"][loss_name]
            diffs[f"{loss_name}/val_loss"] = abs(out["val_loss"] - want["val_loss"])
            diffs[f"{loss_name}/train_loss"] = abs(out["train_loss"] - want["train_loss"])
            if out["pred"] is not None:
                diffs[f"{loss_name}/pred"] = float(np.abs(out["pred"] - want["pred"]).max())
            for name, g in out["grads"].items():
                diffs[f"{loss_name}/grad:{name}"] = float((g - shard(name, want["grads"][name], g.shape)).abs().max())
        diffs["inference/pred"] = float(np.abs(scored[9] - ref["scored"]).max())
        result["diffs"] = diffs
    from torchrun_io import write_gathered  # beside this script, which torchrun puts first on sys.path

    write_gathered(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
