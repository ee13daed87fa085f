"""The attribute-regression reward model: NeMo-Aligner's regression RM with named attributes and exact losses.

Why a subclass of ``MegatronGPTRegressionRewardModel`` rather than a fresh ``SupervisedInterface``: the parent
already builds the Megatron GPT backbone and NeMo-Aligner's ``RewardModelHead`` (a ``RowParallelLinear`` from the
end-of-response hidden state, created only on the last pipeline stage, in ``force_head_dtype`` = fp32), and owns
dist-ckpt / ``.nemo`` save and restore, PTL integration and ``infer``. What it gets wrong in 0.7.0 is the training
step itself, so that is what we replace:

* the loss key: 0.7.0 reads ``cfg.loss_func`` while its config sets ``regression.loss_func`` (BT unreachable);
* the loss is a mean per micro-batch averaged over micro-batches; ours is the mean over every valid
  (row, attribute) entry of the global batch, identical for any micro-batch / data-parallel split;
* every micro-batch is padded to ``encoder_seq_length``; ours are cut to their longest row, also under pipeline
  parallelism (megatron-core's ``variable_seq_lengths``: each p2p send is preceded by its shape), or packed
  (``packing``: a micro-batch's rows end to end, each attending only to itself; ``nemo_hs2.data.packing``);
* validation returns per-batch means only (and breaks with ``validation_drop_last=False``); ours returns the
  predictions, so metrics are computed once over the whole validation set.
"""

from __future__ import annotations

import numpy as np
import torch
from megatron.core.num_microbatches_calculator import get_num_microbatches
from megatron.core.pipeline_parallel.schedules import get_forward_backward_func
from megatron.core.utils import get_model_config
from nemo.collections.nlp.parts.utils_funcs import get_last_rank
from nemo_aligner.models.nlp.gpt.megatron_gpt_regression_reward_model import MegatronGPTRegressionRewardModel
from nemo_aligner.utils import parallel_state
from nemo_aligner.utils.train_utils import set_sync_funcs
from omegaconf import DictConfig, open_dict

from nemo_hs2.core import losses
from nemo_hs2.core.config import RegressionConfig
from nemo_hs2.data import packing
from nemo_hs2.data.dataset import pad_length
from nemo_hs2.megatron.packed_gpt import check_packable, make_packable
from nemo_hs2.megatron.rotary import apply_rope_scaling
from nemo_hs2.core.reward_weights import resolve_weights, weights_for

_STEP_KEYS = ("inputs", "lengths", "position_ids", "labels", "label_mask", "pair_ids", "preference")
_COLLECTED = ("labels", "label_mask", "pair_ids", "preference")


def bt_weight_spec(bt_reward, attributes):
    """``model.regression.bt_reward`` as a weight spec: one attribute's name is that attribute alone."""
    bt_reward = bt_reward if isinstance(bt_reward, str) else dict(bt_reward)
    return {bt_reward: 1.0} if isinstance(bt_reward, str) and bt_reward in attributes else bt_reward


def prepare_model_config(cfg: DictConfig) -> DictConfig:
    """Derive the parent's positional settings from our named ones (call before constructing the model)."""
    reg = cfg.regression
    typed = RegressionConfig.from_cfg(reg)
    attributes = typed.attributes
    loss_name = typed.loss_func
    top_level = cfg.get("loss_func")
    if top_level is not None and top_level != loss_name:
        raise ValueError(
            f"model.loss_func='{top_level}' disagrees with model.regression.loss_func='{loss_name}'; "
            "nemo_hs2 reads model.regression.loss_func only: remove model.loss_func"
        )
    # Resolved here, before training, into the mapping the checkpoint then carries: validation, scoring, evaluation
    # and serving all read this one, and a preset over attributes the model lacks is restricted (with a warning).
    weights = weights_for(typed.reward_weights, attributes)
    bt_reward = weights_for(bt_weight_spec(typed.bt_reward, attributes), attributes)
    with open_dict(cfg):
        reg.reward_weights = weights
        reg.bt_reward = bt_reward
        reg.loss_func = loss_name  # a NeMo-Aligner checkpoint's config may not have it
        reg.bt_loss_weight = typed.bt_loss_weight
        reg.bt_ties = typed.bt_ties
        reg.num_attributes = len(attributes)
        reg.merge_attributes = False  # the head must output every attribute; rewards are combined by name
        reg.attribute_weights = None
        cfg.reward_model_type = "regression"
        cfg.force_head_dtype = cfg.get("force_head_dtype", "float32") or "float32"
    return cfg


class AttributeRewardModel(MegatronGPTRegressionRewardModel):
    def __init__(self, cfg: DictConfig, trainer):
        cfg = prepare_model_config(cfg)
        super().__init__(cfg, trainer=trainer)
        reg = self.cfg.regression
        self.set_attributes(reg.attributes)
        self.loss_name = reg.loss_func
        self.pad_to_multiple = int(self.cfg.get("pad_to_multiple", 8))
        # false: under PP every micro-batch of a step takes the batch's width (no shape exchange before each send).
        # Not named variable_seq_lengths: NeMo copies model-config keys with megatron's field names into its configs.
        self.variable_widths = bool(self.cfg.get("variable_micro_batch_widths", True))
        self.packing = bool(self.cfg.get("packing", False))
        pack_length = self.cfg.get("pack_length")
        self.pack_length = None if pack_length is None else int(pack_length)
        # Transformer Engine attention takes the THD layout: one sequence per micro-batch, no dense mask.
        self.thd = bool(self.cfg.get("transformer_engine", False))
        self.reward_weights = dict(reg.reward_weights)
        self.bt_loss_weight = float(reg.bt_loss_weight)
        self.bt_ties = str(reg.bt_ties)
        self._validation_outputs: list[dict[str, torch.Tensor]] | None = None
        self.last_loss = 0.0  # of the latest get_loss_and_metrics, on every rank (for the non-finite guard)
        self.skip_step = False  # the latest training batch had nothing to learn: its optimizer step is skipped
        self.skipped_steps = 0

    def set_attributes(self, attributes) -> None:
        """Name the head's outputs, in order (nemo_hs2.megatron.head_layout renames a loaded positional head)."""
        with open_dict(self.cfg):
            self.cfg.regression.attributes = list(attributes)
            self.cfg.regression.num_attributes = len(attributes)
        self.attributes = tuple(attributes)
        bt_reward = bt_weight_spec(self.cfg.regression.bt_reward, self.attributes)
        self.bt_weights = torch.tensor(resolve_weights(bt_reward, self.attributes), dtype=torch.float32)

    def model_provider_func(self, pre_process, post_process):
        # NeMo-Aligner's RM skips NeMo's post-build RoPE scaling (Llama 3.1); see nemo_hs2.megatron.rotary.
        model = apply_rope_scaling(self.cfg, super().model_provider_func(pre_process, post_process))
        if self.cfg.get("packing", False):
            check_packable(model)
        return make_packable(model)  # the forward is the parent's unless a micro-batch is packed

    # ------------------------------------------------------------------------------------------ batches
    def _micro_batches(self, batch, num_microbatches: int, trim: bool):
        rows = batch["inputs"].shape[0]
        if rows % num_microbatches:
            raise ValueError(f"{rows} rows cannot be split into {num_microbatches} micro-batches")
        size = rows // num_microbatches
        if self.loss_name != "regression" and size % 2:
            raise ValueError(f"a Bradley-Terry micro-batch needs whole pairs, got {size} rows: train on "
                             "data=*_preference, where micro_batch_size counts pairs")
        out = []
        for start in range(0, rows, size):
            mb = {k: v[start : start + size] for k, v in batch.items() if k in _STEP_KEYS}
            out.append(self._layout(mb, trim))
        return out, size

    def _trim(self, mb):
        """Cut a micro-batch to its longest row (rounded up to ``pad_to_multiple``)."""
        width = min(pad_length(int(mb["lengths"].max()), self.pad_to_multiple), mb["inputs"].shape[1])
        return {**mb, "inputs": mb["inputs"][:, :width], "position_ids": mb["position_ids"][:, :width]}

    def _layout(self, mb, trim: bool):
        """A micro-batch as the model runs it: packed, cut to its longest row, or as collated."""
        if not self.packing:
            return self._trim(mb) if trim else mb
        if not trim:  # a packed micro-batch has its own shape, which the pipeline stages must exchange
            raise ValueError("data.packing=true under pipeline parallelism needs "
                             "model.variable_micro_batch_widths=true")
        # THD: one sequence (attention costs each row's own length); dense: bins no wider than trimming's row
        # unless data.pack_length asks for wider ones.
        lengths = mb["lengths"].tolist()
        capacity = None if self.thd else packing.dense_capacity(lengths, self.pack_length, self.pad_to_multiple)
        return packing.pack(mb, capacity, self.pad_to_multiple)

    def _normalizers(self, batch):
        """Valid label entries and preference pairs in the global batch (all DP ranks): the losses' denominators."""
        counts = torch.zeros(2, dtype=torch.float64)
        counts[0] = batch["label_mask"].sum()
        if "preference" in batch:
            counts[1] = losses.bt_pair_included(batch["preference"][0::2], self.bt_ties).sum()
        counts = counts.to(torch.cuda.current_device())
        torch.distributed.all_reduce(counts, group=parallel_state.get_data_parallel_group())
        return counts

    # ------------------------------------------------------------------------------------------ losses
    @property
    def bt_kind(self) -> str:
        return "regular_bt" if self.loss_name == "regression+bt" else self.loss_name

    def combine_losses(self, regression=None, bt=None):
        """The training objective from its terms (tensors in the step, floats on validation metrics)."""
        if self.loss_name == "regression":
            return regression
        if self.loss_name == "regression+bt":
            return regression + self.bt_loss_weight * bt
        return bt

    def combine_validation_loss(self, metrics) -> float:
        return self.combine_losses(metrics.get("mse"), metrics.get("bt_loss"))

    def _loss(self, pred, mb, counts):
        """The objective's terms, each normalised by its global count; a term with nothing in the global batch (no
        present label, or only tie pairs) is a graph-connected zero, so the step has nothing to learn from it."""
        terms = {}
        if self.loss_name in ("regression", "regression+bt"):
            mse = losses.masked_mse_sum(pred, mb["labels"], mb["label_mask"])
            terms["regression_loss"] = mse / counts[0] if counts[0] > 0 else mse * 0.0
        if self.loss_name != "regression":
            if "preference" not in mb:
                raise ValueError(f"loss_func='{self.loss_name}' needs preference pairs: use data=helpsteer2_preference")
            bt_sum, _ = losses.bradley_terry_sum(pred, mb["preference"], self.bt_weights.to(pred.device),
                                                 self.bt_kind, self.bt_ties)
            terms["bt_loss"] = bt_sum / counts[1] if counts[1] > 0 else bt_sum * 0.0
        return self.combine_losses(terms.get("regression_loss"), terms.get("bt_loss")), terms

    def _nothing_to_learn(self, counts) -> bool:
        """A global batch whose every loss term is empty (e.g. all pairs ties): its step is skipped, and counted."""
        regression = self.loss_name in ("regression", "regression+bt") and counts[0] > 0
        bt = self.loss_name != "regression" and counts[1] > 0
        return not (regression or bt)

    def _forward(self, model, mb):
        """One micro-batch through one pipeline stage; the causal mask is built per micro-batch width."""
        if "ends" in mb:
            return self._forward_packed(model, mb)
        width = mb["inputs"].shape[1]
        causal = torch.ones(1, 1, width, width, dtype=torch.bool, device=mb["inputs"].device).tril_()
        output = model(input_ids=mb["inputs"], lengths=mb["lengths"], position_ids=mb["position_ids"],
                       attention_mask=~causal, labels=None)
        if not parallel_state.is_pipeline_last_stage():
            output = output.to(dtype=self.autocast_dtype)  # p2p buffers are in the autocast dtype
        return output

    def _forward_packed(self, model, mb):
        """A packed micro-batch: each row attends only to itself, the head reads each row's own last token."""
        if self.thd:
            from megatron.core.packed_seq_params import PackedSeqParams

            cu_seqlens, longest = packing.thd_cu_seqlens(mb["segments"])
            params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens,
                                     max_seqlen_q=longest, max_seqlen_kv=longest)
            mask = None
        else:
            params, mask = None, packing.block_causal_mask(mb["segments"])
        output = model(input_ids=mb["inputs"], lengths=mb["lengths"], position_ids=mb["position_ids"],
                       attention_mask=mask, labels=None, row_ends=mb["ends"], packed_seq_params=params)
        if not parallel_state.is_pipeline_last_stage():
            output = output.to(dtype=self.autocast_dtype)
        return output

    def get_forward_output_and_loss_func(self, validation_step=False, counts=None):
        num_microbatches = get_num_microbatches()
        dp_size = parallel_state.get_data_parallel_world_size()

        def fwd_output_and_loss_func(dataloader_iter, model):
            mb = {k: v.cuda(non_blocking=True) for k, v in next(dataloader_iter).items()}
            output = self._forward(model, mb)

            def loss_func(output_tensor):
                pred = output_tensor.float()
                loss, terms = self._loss(pred, mb, counts)
                reduced = {k: v.detach().reshape(1) for k, v in terms.items()}
                reduced["loss"] = loss.detach().reshape(1)
                if validation_step and self._validation_outputs is not None:
                    self._validation_outputs.append({"pred": pred.detach(), **{k: mb[k] for k in _COLLECTED if k in mb}})
                # The schedule divides by the micro-batch count and DDP averages over DP ranks; undo both so the
                # gradient is that of the global-batch mean, whatever the split.
                return loss * (num_microbatches * dp_size), reduced

            return output, loss_func

        return fwd_output_and_loss_func

    def _widths_may_vary(self) -> bool:
        """Set megatron's ``variable_seq_lengths`` for this step (PP only: p2p sends shapes first) and return whether
        micro-batches may have their own widths."""
        pp = parallel_state.get_pipeline_model_parallel_world_size() > 1
        for module in self.model if isinstance(self.model, list) else [self.model]:
            get_model_config(module).variable_seq_lengths = pp and self.variable_widths
        return self.variable_widths or not pp

    def get_loss_and_metrics(self, batch, forward_only):
        num_microbatches = get_num_microbatches()
        micro_batches, mbs = self._micro_batches(batch, num_microbatches, trim=self._widths_may_vary())
        counts = self._normalizers(batch)
        # Every rank sees the global counts (all-reduced over DP), so they all agree to skip (FiniteStepGuard).
        self.skip_step = not forward_only and self._nothing_to_learn(counts)
        set_sync_funcs(self, forward_only)
        reduced = get_forward_backward_func()(
            forward_step_func=self.get_forward_output_and_loss_func(forward_only, counts),
            data_iterator=self._make_data_iterator_list(iter(micro_batches)),
            model=self.model,
            num_microbatches=num_microbatches,
            forward_only=forward_only,
            seq_length=batch["inputs"].shape[1],  # PP p2p shapes when widths are fixed; ignored otherwise
            micro_batch_size=mbs,
        )
        names = ["loss", *(k for k in ("regression_loss", "bt_loss") if reduced and k in reduced[0])]
        values = torch.zeros(len(names), dtype=torch.float32, device=torch.cuda.current_device())
        if reduced:  # last pipeline stage: sum micro-batch contributions, then over DP ranks
            for i, name in enumerate(names):
                values[i] = torch.cat([r[name] for r in reduced]).sum()
            torch.distributed.all_reduce(values, group=parallel_state.get_data_parallel_group())
        # Only the last stage knows the loss; every rank logs, so broadcast the values (and their count).
        size = torch.tensor([len(names)], device=values.device)
        torch.distributed.broadcast(size, get_last_rank())
        values = values if reduced else torch.zeros(int(size), dtype=torch.float32, device=values.device)
        torch.distributed.broadcast(values, get_last_rank())
        metrics = {"loss": float(values[0])}
        self.last_loss = metrics["loss"]
        if len(names) == int(size):
            metrics.update({n: float(v) for n, v in zip(names[1:], values[1:].tolist())})
        return metrics["loss"], metrics

    # ------------------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, batch) -> torch.Tensor:
        """Per-attribute predictions ``[rows, attributes]`` (fp32) for a collated batch, on every rank.

        Every rank of the model-parallel group must pass the same batch. Rows are run in micro-batches of
        ``forward_micro_batch_size``; the last one is filled up with copies of the last row, whose outputs are dropped.
        """
        rows = batch["inputs"].shape[0]
        mbs = min(int(self.forward_micro_batch_size), rows)
        count = -(-rows // mbs)
        fill = count * mbs - rows
        fields = {k: torch.cat([batch[k], batch[k][-1:].expand(fill, *batch[k].shape[1:])]) if fill else batch[k]
                  for k in ("inputs", "lengths", "position_ids")}
        micro_batches = [{k: v[i * mbs:(i + 1) * mbs] for k, v in fields.items()} for i in range(count)]
        trim = self._widths_may_vary()
        micro_batches = [self._layout(mb, trim) for mb in micro_batches]

        def forward_step(data_iter, model):
            mb = {k: v.cuda(non_blocking=True) for k, v in next(data_iter).items()}
            return self._forward(model, mb), lambda output, non_loss_data=True: output.float()

        self.prepare_for_inference()
        try:
            set_sync_funcs(self, forward_only=True)
            outputs = get_forward_backward_func()(
                forward_step_func=forward_step, data_iterator=self._make_data_iterator_list(iter(micro_batches)),
                model=self.model, num_microbatches=count, forward_only=True, seq_length=fields["inputs"].shape[1],
                micro_batch_size=mbs, collect_non_loss_data=True)
        finally:
            self.finish_inference()
        if parallel_state.is_pipeline_last_stage():
            pred = torch.cat(outputs)[:rows].float().contiguous()
        else:  # the shape is known everywhere, so one broadcast from the last stage suffices
            pred = torch.empty(rows, len(self.attributes), dtype=torch.float32, device=torch.cuda.current_device())
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:
            torch.distributed.broadcast(pred, parallel_state.get_pipeline_model_parallel_last_rank(),
                                        group=parallel_state.get_pipeline_model_parallel_group())
        return pred

    # ------------------------------------------------------------------------------------------ validation
    def start_validation_collection(self):
        self._validation_outputs = []

    def finish_validation_collection(self) -> dict[str, np.ndarray] | None:
        """Predictions, labels (NaN = missing), pair ids and preferences of the whole validation set.

        Gathered over data-parallel ranks; returned on last-pipeline-stage ranks, ``None`` elsewhere. The
        sampler's padding rows (no label, pair id -1) are dropped here, so each real row appears exactly once.
        """
        outputs, self._validation_outputs = self._validation_outputs, None
        if not parallel_state.is_pipeline_last_stage():
            return None
        keys = ("pred", *(k for k in _COLLECTED if outputs and k in outputs[0]))
        local = {k: torch.cat([o[k] for o in outputs]).cpu() for k in keys} if outputs else None
        gathered = [None] * parallel_state.get_data_parallel_world_size()
        torch.distributed.all_gather_object(gathered, local, group=parallel_state.get_data_parallel_group())
        arrays = {k: torch.cat([g[k] for g in gathered if g is not None]).numpy() for k in keys}
        target = arrays["labels"].astype(np.float64)
        target[~arrays["label_mask"]] = np.nan
        keep = arrays["label_mask"].any(axis=1) | (arrays["pair_ids"] >= 0)
        out = {"pred": arrays["pred"][keep].astype(np.float64), "target": target[keep],
               "pair_ids": arrays["pair_ids"][keep]}
        if "preference" in arrays:
            out["preference"] = arrays["preference"][keep].astype(np.float64)
        return out
