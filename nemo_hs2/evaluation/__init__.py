"""Evaluating a trained reward model: RewardBench, a HelpSteer2 validation report, dataset annotation.

The scoring itself is ``nemo_hs2.megatron.scorer.RewardScorer``'s, so rows are formatted with the template and system
prompt the checkpoint was trained with. Modules here import neither NeMo nor Megatron: they take a scorer (or
plain arrays) and test in seconds; ``nemo_hs2.megatron.loading`` builds the model.
"""
